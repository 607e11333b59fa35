"""Lists the Cython extensions of flowdb._core; everything else is in pyproject.toml.

FLOWDB_DEBUG=1 builds with bounds checks, assertions and line tracing into
build/debug, so a debug .so never leaks into a release wheel (build/release).
"""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FLOWDB_DEBUG") == "1"
VARIANT = "debug" if DEBUG else "release"
HEADERS = sorted(glob.glob("include/*.h"))

directives = {"language_level": 3, "embedsignature": True}
if DEBUG:
    directives.update(boundscheck=True, wraparound=True, initializedcheck=True,
                      linetrace=True, profile=True)
    macros = [("CYTHON_TRACE_NOGIL", "1")]
    cflags = ["-O0", "-g", "-UNDEBUG"]
else:
    directives.update(boundscheck=False, wraparound=False, initializedcheck=False,
                      cdivision=True)
    macros = [("NDEBUG", "1")]
    cflags = ["-O3", "-fno-strict-aliasing"]

extensions = [
    Extension(
        f"flowdb._core.{os.path.splitext(os.path.basename(path))[0]}",
        [path],
        include_dirs=["include"],
        depends=HEADERS,
        define_macros=macros,
        extra_compile_args=cflags,
    )
    for path in sorted(glob.glob("flowdb/_core/*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        build_dir=f"build/{VARIANT}/cython",
    ),
    options={"build": {"build_base": f"build/{VARIANT}"}},
)
