"""Builds the optional C kernels of the exact codec (compression._exactc); metadata is in pyproject.toml.

The extension is optional: without a C compiler the install still succeeds and compression.exact_rans
runs the same format in numpy (slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "compression._exactc",
            sources=["compression/_exactc.c"],
            extra_compile_args=["-O3", "-std=c99"],
            optional=True,
        )
    ]
)
