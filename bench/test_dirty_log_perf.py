"""s2fast dirty-log-perf on the issue's two reference runs (benchmarks, not
timed tests; targets from issue 13):

* ``-b 16G -s anonymous_hugetlb_1gb --eager-split-chunk 2M``, 1 vCPU,
  under every strategy (target: under 30 s on the 2-core machine);
* 256 GiB over 8 vCPUs (``-b 32G -v 8 -s anonymous_hugetlb_1gb``) under
  KERNEL (target: under 60 s).

Each stores the run's wall time per phase and its fault and entries-read
totals in extra_info, so a saved run is also a count record, and fails when
the run misses the issue's target (both have several times that margin:
every guest access runs in the engine's fault path, s2fast/_mmu.pyx)."""
import pytest

from s2fast.dirty_log_perf import Options, run_all

GiB = 1 << 30


def record(benchmark, res, target_s):
    benchmark.extra_info["target_s"] = target_s
    for name, r in res.runs.items():
        benchmark.extra_info[name] = {
            "wall_s": round(r.wall_s, 3),
            "phase_wall_s": {p.name: round(p.wall_s, 3) for p in r.phases},
            "faults": sum(p.faults for p in r.phases),
            "entries_read": sum(p.counts["entries_read"] for p in r.phases),
            "final_table": res.diffs[name].describe(),
        }


@pytest.mark.parametrize("strategies", ["all"])
def test_16g_hugetlb_1gb_eager_split_every_strategy(benchmark, strategies):
    opts = Options(vcpu_bytes=16 * GiB, backing_src="anonymous_hugetlb_1gb", eager_split_chunk="2M")
    res = benchmark.pedantic(run_all, args=(opts, strategies), rounds=1, iterations=1)
    record(benchmark, res, 30)
    assert len(res.runs) == 6 and all(d.identical for d in res.diffs.values())
    assert benchmark.stats.stats.max < 30


def test_256g_8_vcpus_kernel(benchmark):
    opts = Options(vcpu_bytes=32 * GiB, vcpus=8, backing_src="anonymous_hugetlb_1gb")
    res = benchmark.pedantic(run_all, args=(opts, ["KERNEL"]), rounds=1, iterations=1)
    record(benchmark, res, 60)
    assert res.runs["KERNEL"].phase("dirty 2").faults == 256 * GiB // 4096
    assert benchmark.stats.stats.max < 60
