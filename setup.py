"""Builds the Cython engine (s2fast._walk).

``pip install .`` / ``pip install -e .`` fetch the build requirements
(pyproject.toml) themselves; ``python setup.py build_ext --inplace`` needs
them installed first."""
import sys

try:
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension, setup
except ImportError as e:
    sys.exit(f"setup.py: {e.name} is needed to build s2fast's engine: pip install 'Cython>=3.1' numpy "
             "setuptools (or use pip install -e ., which installs them for the build)")

extensions = [
    Extension(
        "s2fast._walk",
        ["s2fast/_walk.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": 3}))
