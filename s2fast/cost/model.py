"""Profiles (per-event costs of one machine) and predicted time.

Predicted seconds of a phase = sum over ``EVENTS`` of count x cost. A
profile is a small TOML or JSON file::

    name = "generic"
    description = "..."
    [costs.entry_visit]
    ns = 3.0
    source = "where the number comes from"

Every event of the registry needs a cost (ns, >= 0) and a source. Profiles
shipped with s2fast live in ``s2fast/cost/profiles`` and are loaded by name.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from .events import EVENT_NAMES, events

PROFILE_DIR = os.path.join(os.path.dirname(__file__), "profiles")
DEFAULT_PROFILE = "generic"


class ProfileError(ValueError):
    """A profile file or value that cannot be used; the message names the
    file and the field."""


@dataclass(frozen=True)
class Profile:
    """Per-event costs in nanoseconds, with where each value comes from."""

    name: str
    costs: Mapping[str, float]
    sources: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    path: Optional[str] = None

    def __post_init__(self) -> None:
        where = self.path or f"profile {self.name!r}"
        for k, v in self.costs.items():
            if k not in EVENT_NAMES:
                raise ProfileError(f"{where}: costs.{k}: unknown event (known: {', '.join(EVENT_NAMES)})")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v):
                raise ProfileError(f"{where}: costs.{k}.ns: {v!r} is not a finite number")
            if v < 0:
                raise ProfileError(f"{where}: costs.{k}.ns: {v!r} is negative")
        missing = [k for k in EVENT_NAMES if k not in self.costs]
        if missing:
            raise ProfileError(f"{where}: costs: no cost for {', '.join(missing)}")
        object.__setattr__(self, "costs", {k: float(self.costs[k]) for k in EVENT_NAMES})

    def seconds(self, counts: Mapping[str, int]) -> float:
        """Predicted seconds for one count dict (a phase or a run's totals)."""
        ev = events(counts)
        return sum(ev[k] * self.costs[k] for k in EVENT_NAMES) * 1e-9

    def breakdown(self, counts: Mapping[str, int]) -> dict[str, float]:
        """Predicted seconds per event."""
        ev = events(counts)
        return {k: ev[k] * self.costs[k] * 1e-9 for k in EVENT_NAMES}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "costs": {k: {"ns": self.costs[k], "source": self.sources.get(k, "")} for k in EVENT_NAMES}}

    def to_toml(self) -> str:
        out = [f"name = {_toml_str(self.name)}", f"description = {_toml_str(self.description)}"]
        for k in EVENT_NAMES:
            out += ["", f"[costs.{k}]", f"ns = {self.costs[k]!r}", f"source = {_toml_str(self.sources.get(k, ''))}"]
        return "\n".join(out) + "\n"

    def save(self, path: str) -> None:
        """Write as TOML (``.toml``) or JSON (``.json``)."""
        ext = os.path.splitext(path)[1].lower()
        if ext not in (".toml", ".json"):
            raise ProfileError(f"{path}: a profile is written as .toml or .json, not {ext or 'no extension'!r}")
        text = self.to_toml() if ext == ".toml" else json.dumps(self.to_dict(), indent=2) + "\n"
        with open(path, "w") as f:
            f.write(text)


def _toml_str(s: str) -> str:
    return json.dumps(s)     # a JSON string is a valid TOML basic string


def _parse(path: str) -> dict:
    ext = os.path.splitext(path)[1].lower()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ProfileError(f"{path}: cannot read the profile: {e.strerror}") from None
    if ext == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:     # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            return tomllib.loads(data.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ProfileError(f"{path}: not a TOML file: {e}") from None
    if ext == ".json":
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProfileError(f"{path}: not a JSON file: {e}") from None
    raise ProfileError(f"{path}: a profile is a .toml or .json file, not {ext or 'a file without extension'}")


def profile_from_dict(d: Any, path: str) -> Profile:
    if not isinstance(d, dict):
        raise ProfileError(f"{path}: a profile is a table with name and costs")
    extra = set(d) - {"name", "description", "costs"}
    if extra:
        raise ProfileError(f"{path}: {sorted(extra)[0]}: unknown field (a profile has name, description, costs)")
    costs_in = d.get("costs")
    if not isinstance(costs_in, dict):
        raise ProfileError(f"{path}: costs: missing, or not a table of events")
    costs, sources = {}, {}
    for k, v in costs_in.items():
        if k not in EVENT_NAMES:
            raise ProfileError(f"{path}: costs.{k}: unknown event (known: {', '.join(EVENT_NAMES)})")
        if not isinstance(v, dict) or "ns" not in v:
            raise ProfileError(f"{path}: costs.{k}: needs ns = <cost in nanoseconds> and source = \"...\"")
        bad = set(v) - {"ns", "source"}
        if bad:
            raise ProfileError(f"{path}: costs.{k}.{sorted(bad)[0]}: unknown field (ns, source)")
        costs[k] = v["ns"]
        src = v.get("source", "")
        if not isinstance(src, str):
            raise ProfileError(f"{path}: costs.{k}.source: not a string")
        sources[k] = src
    name = d.get("name", os.path.splitext(os.path.basename(path))[0])
    if not isinstance(name, str):
        raise ProfileError(f"{path}: name: not a string")
    desc = d.get("description", "")
    if not isinstance(desc, str):
        raise ProfileError(f"{path}: description: not a string")
    return Profile(name, costs, sources, desc, path)


def shipped_profiles() -> list[str]:
    """Names of the profiles shipped with s2fast."""
    return sorted(os.path.splitext(f)[0] for f in os.listdir(PROFILE_DIR) if f.endswith(".toml"))


def load_profile(spec: Union[str, os.PathLike, Profile, None] = None) -> Profile:
    """A profile by shipped name (``s2fast.cost.shipped_profiles()``), by
    path to a .toml/.json file, or a Profile (returned as is). None: the
    generic profile."""
    if isinstance(spec, Profile):
        return spec
    if spec is None:
        spec = DEFAULT_PROFILE
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"profile must be a name, a path or an s2fast Profile, not {type(spec).__name__} {spec!r}")
    spec = os.fspath(spec)
    shipped = os.path.join(PROFILE_DIR, spec + ".toml")
    if os.sep not in spec and "." not in spec:
        if not os.path.exists(shipped):
            raise ProfileError(f"profile {spec!r} is not one of {', '.join(shipped_profiles())} "
                               "(or a path to a .toml/.json file)")
        spec = shipped
    elif not os.path.exists(spec):
        raise ProfileError(f"{spec}: no such profile file")
    return profile_from_dict(_parse(spec), spec)


def pct_change(t: float, t_kernel: float) -> float:
    """100 x (t / t_kernel - 1): negative is faster than KERNEL."""
    return 100.0 * (t / t_kernel - 1.0) if t_kernel else 0.0


def predict_comparison(cmp: Any) -> dict[str, dict[str, Any]]:
    """Predicted seconds of every phase of every strategy of a
    ``Comparison`` (build excluded), their total, and the total's % change
    against KERNEL, under ``cmp.profile`` (None: the generic profile)."""
    prof = load_profile(cmp.profile)
    out: dict[str, dict[str, Any]] = {}
    for s, r in cmp.results.items():
        phases = {p.name: prof.seconds(p.counts) for p in r.phases}
        out[s.name] = {"build_s": prof.seconds(r.build.counts), "phases": phases,
                       "seconds": sum(phases.values())}
    k = out.get("KERNEL", {}).get("seconds", 0.0)
    for d in out.values():
        d["pct_change"] = pct_change(d["seconds"], k)
    return out
