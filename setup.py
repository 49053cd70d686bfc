"""Only the Cython extension lives here; everything else is in pyproject.toml."""
import platform

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

compile_args = ["-O3"]
if platform.machine().lower() in ("x86_64", "amd64"):
    # Every x86-64 CPU since 2008 has POPCNT; without the flag gcc calls a slow table routine.
    compile_args.append("-mpopcnt")

extension = Extension(
    "mdiff._metrics",
    ["mdiff/_metrics.pyx"],
    include_dirs=[np.get_include()],
    extra_compile_args=compile_args,
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(ext_modules=cythonize([extension], language_level=3))
