"""Builds the Cython engine: one extension per s2fast/_*.pyx (see ARCHITECTURE.md).

``pip install .`` / ``pip install -e .`` fetch the build requirements
(pyproject.toml) themselves; ``python setup.py build_ext --inplace`` needs
them installed first."""
import sys
from pathlib import Path

try:
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension, setup
except ImportError as e:
    sys.exit(f"setup.py: {e.name} is needed to build s2fast's engine: pip install 'Cython>=3.1' numpy "
             "setuptools (or use pip install -e ., which installs them for the build)")

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
