"""Builds the Cython engine: one extension per s2fast/_*.pyx (see ARCHITECTURE.md)."""
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        f"s2fast.{pyx.stem}",
        [str(pyx)],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # Loops aligned to 32 bytes: the hot last-level loops are a few dozen
        # bytes, and where one happened to straddle a fetch boundary the
        # repeated-wrprotect loop ran at half speed (same instructions).
        extra_compile_args=["-O3", "-falign-loops=32"],
    )
    for pyx in sorted(Path("s2fast").glob("_*.pyx"))
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": 3}))
