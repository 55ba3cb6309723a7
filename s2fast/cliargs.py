"""What the CLI's modules (cli.py, cli_sweep.py) share: the usage error and
argument types. Its own module, so that neither imports the other."""
from __future__ import annotations

import argparse
from typing import Callable


class UsageError(Exception):
    """A bad command line: reported on one line, exit code 2."""


def count_arg(name: str, lo: int = 0) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``lo``, named ``name`` in errors."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} is less than {lo}")
        return v
    parse.__name__ = name
    return parse
