"""s2fast without drgn: the drgn extra stays optional."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import s2fast


def test_without_drgn_import_works_and_vms_says_how_to_install():
    code = textwrap.dedent("""
        import sys
        sys.modules["drgn"] = None          # as if drgn were not installed
        import s2fast, s2fast.drgn
        from s2fast.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    for argv in (["vms", "--live"], ["dump", "--vmcore", "vmcore", "--vm", "0"]):
        r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                           # where the s2fast under test lives, so that -c imports that one (an
                           # installed package, or a checkout built in place), never a bare checkout
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(s2fast.__file__))))
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("s2fast: error:") and "pip install 's2fast[drgn]'" in r.stderr
        assert "Traceback" not in r.stderr
