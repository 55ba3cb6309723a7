"""From counts to time: cost events, machine profiles, predicted seconds and
calibration against measurements (``s2fast calibrate``)."""
from .events import EVENT_NAMES, EVENTS, Event, describe_events, events
from .model import DEFAULT_PROFILE, Profile, ProfileError, load_profile, pct_change, shipped_profiles

DATA_DIR = __import__("os").path.join(__import__("os").path.dirname(__file__), "data")


def __getattr__(name: str):
    # calibrate needs scipy (the [fit] extra); import it only when asked for
    if name in ("calibrate", "read_measurements", "Calibration", "Measurement", "MeasurementError"):
        from . import calibrate as _c
        return getattr(_c, name)
    raise AttributeError(name)


__all__ = ["EVENTS", "EVENT_NAMES", "Event", "events", "describe_events", "Profile", "ProfileError",
           "load_profile", "shipped_profiles", "pct_change", "DEFAULT_PROFILE", "DATA_DIR"]
