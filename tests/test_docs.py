"""The README tour and docs/external-images.md run as written and print what
they say they print.

Each expected line below is checked twice: it must appear in the document
(so the test and the text cannot drift apart unnoticed) and in what the
document's code printed when it ran."""
from __future__ import annotations

import ast
import contextlib
import io
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def python_blocks(doc: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)


def run_blocks(blocks: list[str], cwd: pathlib.Path) -> tuple[str, dict]:
    """Run the blocks in order in one namespace, in cwd; return stdout."""
    ns: dict = {"__name__": "__doc_example__"}
    out = io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out):
            for block in blocks:
                exec(compile(block, "<doc>", "exec"), ns)
    finally:
        os.chdir(old)
    return out.getvalue(), ns


def check_claims(doc_text: str, printed: str, claims: list[str]) -> None:
    for claim in claims:
        assert claim in doc_text, f"the document no longer says {claim!r}"
        assert claim in printed, f"the document says {claim!r}, its code printed:\n{printed}"


def test_external_images_doc_runs_and_prints_what_it_says(tmp_path):
    doc = ROOT / "docs" / "external-images.md"
    text = doc.read_text()
    (tmp_path / "tests").symlink_to(ROOT / "tests")     # the doc imports tests/support/elfcore.py
    printed, ns = run_blocks(python_blocks(doc), tmp_path)
    check_claims(text, printed, [
        "PhysMem(1 segment, 24 KiB: [0x400000000000-0x400000006000))",
        "IPA 0x40001234 -> PA 0x10000001234 (level 1, 0x40000000 bytes, RW X:none)",
        "True 0x10000001234 1",
        "PERMISSION 0xf 3",
        "TRANSLATION 0x7",
        "{'0x6': 523264, '0x7': 512}",
        "L1 block pa=0x10000000000 size=1G R W XN Normal-WB AF SH=inner SW=0x0",
    ])
    # The listing shown after print(pt.dump()) is the listing printed.
    listing = re.search(r"```\n(stage-2 dump:.*?)```", text, re.S).group(1)
    assert listing in printed
    assert ns["pt"].read_only and ns["same"].read_only


def run_statements(block: str, ns: dict) -> dict:
    """Run a block statement by statement; return the value of each bare
    expression statement, keyed by its first source line."""
    values = {}
    lines = block.splitlines()
    for stmt in ast.parse(block).body:
        code = compile(ast.Module([stmt], []), "<README>", "exec")
        if isinstance(stmt, ast.Expr):
            code = compile(ast.Expression(stmt.value), "<README>", "eval")
            values[lines[stmt.lineno - 1]] = eval(code, ns)
        else:
            exec(code, ns)
    return values


# (the start of a README tour line, what its comment says, the value it must return)
README_CLAIMS = [
    ("pt.get_leaf(4 * GiB)", "# (0, 0x400200000007ff, 3)", (0, 0x400200000007FF, 3)),
    ("pt.wrprotect(0, 8 * GiB)", "# 0", 0),
    ("pt.map(1 << 40, 4096, 0, Prot.R)", "# -34 == s2fast.ERANGE", -34),
    ("pt.map(8 * GiB, 4096, 0, Prot.R)", "# -12 == s2fast.ENOMEM", -12),
]


def test_readme_tour_runs_and_returns_what_it_says():
    text = (ROOT / "README.md").read_text()
    tour, visitors = python_blocks(ROOT / "README.md")[:2]
    ns: dict = {"__name__": "__doc_example__"}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        values = run_statements(tour, ns)
        exec(compile(visitors, "<README>", "exec"), ns)
    assert "visits" in out.getvalue()                       # print(pt.stats)
    for start, comment, want in README_CLAIMS:
        line = next(ln for ln in values if ln.startswith(start))
        assert comment in line, f"README line {line!r} no longer says {comment!r}"
        assert values[line] == want, f"{start} returned {values[line]!r}, the README says {comment!r}"
    s2fast = ns["s2fast"]
    assert (s2fast.ERANGE, s2fast.ENOMEM) == (-34, -12)
    # The visitor block collects young leaves: all pages after the split.
    assert ns["found"] and {level for _, level in ns["found"]} == {3}


if __name__ == "__main__":
    pytest.main([__file__])
