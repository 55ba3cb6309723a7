"""Test drivers and fixtures: ``kernel_driver`` (replays the kernel's
conformance scenarios in tests/data/kernel against an implementation) and
``elfcore`` (writes small ELF cores for the image tests), ``sweep_faults``
(worker initializers for the sweep tests). pytest finds them
through ``pythonpath = ["tests"]``."""
