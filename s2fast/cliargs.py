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


def on_off(parser: argparse._ActionsContainer, name: str, on_help: str,
           off_help: str | None = None, dest: str | None = None) -> None:
    """The pair --NAME / --no-NAME, mutually exclusive, setting ``dest``
    (default: NAME with underscores) to True / False, or None when neither
    is given (so the caller can tell "not said" from "off")."""
    dest = dest or name.replace("-", "_")
    g = parser.add_mutually_exclusive_group()
    g.add_argument(f"--{name}", dest=dest, action="store_true", default=None, help=on_help)
    g.add_argument(f"--no-{name}", dest=dest, action="store_false", help=off_help)
