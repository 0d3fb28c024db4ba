"""Builds the C extension ``edgert_neon_kernels._kernels`` (metadata lives in pyproject.toml).

Flags are the same on every machine: no ``-march=native``. SIMD paths are compiled with function
target attributes and chosen at run time, so one wheel runs on any CPU of its architecture.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup

SOURCES = [
    "csrc/module.c",
    "csrc/dispatch.c",
    "csrc/ops.c",
    "csrc/kernels_portable.c",
    "csrc/kernels_neon.c",
    "csrc/kernels_avx2.c",
    "csrc/kernels_avx512.c",
]

extra_compile_args: list[str] = []
extra_link_args: list[str] = []
if sys.platform != "win32":
    extra_compile_args = ["-O3", "-std=c11", "-pthread", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    extra_link_args = ["-pthread"]
    # EDGERT_CFLAGS lets CI add e.g. -Werror without editing this file.
    extra_compile_args += os.environ.get("EDGERT_CFLAGS", "").split()

setup(
    ext_modules=[
        Extension(
            "edgert_neon_kernels._kernels",
            sources=SOURCES,
            depends=["csrc/kernels.h"],
            include_dirs=["csrc"],
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]
)
