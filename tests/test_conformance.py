"""The kernel's own results (tests/data/kernel) reproduced through s2fast's
public API: return codes, descriptors, walk traces and every event count."""
from types import SimpleNamespace

import pytest

import s2fast
from support import kernel_driver

ENGINE = SimpleNamespace(Stage2PageTable=s2fast.Stage2PageTable, MemCache=s2fast.MemCache,
                         WalkFlags=s2fast.WalkFlags, Prot=s2fast.Prot, pte_prot=s2fast.pte_prot)

CASES = [(g, n) for g in (4096, 16384, 65536) for n in kernel_driver.scenario_names(g)]


def test_catalogue_is_complete():
    assert len(kernel_driver.scenario_names(4096)) == 47
    assert len(kernel_driver.scenario_names(16384)) == 59
    assert len(kernel_driver.scenario_names(65536)) == 59


@pytest.mark.parametrize("granule,name", CASES, ids=[f"{g // 1024}k-{n}" for g, n in CASES])
def test_kernel_scenario(granule, name):
    problems = kernel_driver.compare(ENGINE, granule, name)
    assert problems == [], "\n".join(problems)
