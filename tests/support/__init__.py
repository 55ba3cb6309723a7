"""Test drivers and fixtures: ``kernel_driver`` (replays the kernel's
conformance scenarios in tests/data/kernel against an implementation) and
``elfcore`` (writes small ELF cores for the image tests). pytest finds them
through ``pythonpath = ["tests"]``."""
