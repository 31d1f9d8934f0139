"""Builds the optional C kernels of the exact codec (compression._exactc, compression._exact4,
compression._exact5, compression._exact6); metadata is in pyproject.toml.

The extensions are optional: without a C compiler the install still succeeds and compression.exact_rans
(format 3), compression.exact_v4 (format 4) and compression.exact_v5 (format 5) run the same formats in
numpy (slower).
"""

import platform

from setuptools import Extension, setup

# x86-64-v2 (SSE4.2, POPCNT; every x86-64 CPU since 2009) and never -march=native: the wheel must run
# on other machines than the one that built it.
FLAGS = ["-O3", "-std=c99"] + (["-march=x86-64-v2"] if platform.machine() in ("x86_64", "AMD64") else [])

setup(
    ext_modules=[
        Extension("compression._exactc", sources=["compression/_exactc.c"], extra_compile_args=FLAGS,
                  optional=True),
        Extension("compression._exact4", sources=["compression/_exact4.c"], extra_compile_args=FLAGS,
                  optional=True),
        Extension("compression._exact5", sources=["compression/_exact5.c"], extra_compile_args=FLAGS,
                  optional=True),
        Extension("compression._plain5", sources=["compression/_plain5.c"], extra_compile_args=FLAGS,
                  optional=True),
        Extension("compression._exact6", sources=["compression/_exact6.c"], extra_compile_args=FLAGS,
                  optional=True),
        Extension("compression._narrow", sources=["compression/_narrow.c"], extra_compile_args=FLAGS,
                  optional=True),
    ]
)
