"""Build the compiled core.

``SELPROXY_DEBUG=1 pip install -e .`` builds with Cython's bounds and
wraparound checks on, line tracing, annotated HTML next to each module, C
assertions and ``-O0 -g``; the default is an optimised release build.
"""
import os
import sys

from setuptools import Extension, setup

DEBUG = os.environ.get("SELPROXY_DEBUG", "") not in ("", "0")
# In dependency order: each cimports only modules before it.
MODULES = ["_routes", "_http", "_writer", "_worker", "_upstream", "_client", "_core"]
# Test entry points into the C functions: a debug build only, never released.
if DEBUG:
    MODULES.append("_probes")


def extensions():
    from Cython.Build import cythonize

    macros = [("SELPROXY_DEBUG", "1" if DEBUG else "0")]
    if DEBUG:
        macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
        cflags = ["-O0", "-g3", "-UNDEBUG"]
    else:
        cflags = ["-O2"]
    exts = [
        Extension(f"selproxy.{name}", [f"selproxy/{name}.pyx"], include_dirs=["selproxy"],
                  define_macros=macros, extra_compile_args=cflags)
        for name in MODULES
    ]
    directives = {
        "language_level": 3,
        "boundscheck": DEBUG,
        # Negative indexing stays on: code here reads like Python and uses it.
        "wraparound": True,
        "linetrace": DEBUG,
        "profile": DEBUG,
        "embedsignature": True,
        # Connections and heads are not picklable things.
        "auto_pickle": False,
    }
    return cythonize(exts, compiler_directives=directives, annotate=DEBUG,
                     force=DEBUG or "--force" in sys.argv)


setup(ext_modules=extensions())
