"""Progress bars (tqdm, an optional dependency: ``pip install 's2fast[sweep]'``)."""
from __future__ import annotations

from typing import Any, Optional, TextIO


def tqdm_class() -> Any:
    """tqdm's bar class, or None when tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class FractionBar:
    """A bar driven by ``bar(fraction, label)`` callbacks (the workload
    layer's ``progress=``), erased when closed."""

    STEPS = 1000

    def __init__(self, stream: TextIO, title: str = "") -> None:
        tqdm = tqdm_class()
        if tqdm is None:
            raise ImportError("a progress bar needs tqdm: pip install 's2fast[sweep]'")
        self.title = title
        self._bar = tqdm(total=self.STEPS, file=stream, leave=False, ascii="-#", mininterval=0.1, miniters=1,
                         bar_format="[{bar:28}] {percentage:3.0f}%  {desc}")

    def __call__(self, fraction: float, label: str) -> None:
        n = int(min(max(fraction, 0.0), 1.0) * self.STEPS)
        self._bar.set_description_str(f"{self.title}{label}", refresh=False)
        self._bar.update(n - self._bar.n)

    def close(self) -> None:
        self._bar.close()


def fraction_bar(stream: TextIO, on: Optional[bool]) -> Optional[FractionBar]:
    """A FractionBar when ``on`` (None: when ``stream`` is a terminal and
    tqdm is installed); None otherwise."""
    if on is None:
        on = hasattr(stream, "isatty") and stream.isatty() and tqdm_class() is not None
    return FractionBar(stream) if on else None
