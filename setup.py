"""Builds the optional C accelerator ``tensorcodec._native``; all metadata lives in pyproject.toml.

``optional=True``: without a C compiler the install still succeeds and kernels.py uses numpy.
The flags keep the float32 arithmetic bit-identical to the numpy kernels: no FMA contraction
(``-ffp-contract=off``), no ``-ffast-math``; ``-fno-trapping-math`` only lets the compiler
vectorize the clamps (it changes no result).
"""

import sys

from setuptools import Extension, setup

FLAGS = ["/O2", "/fp:precise"] if sys.platform == "win32" else ["-O3", "-ffp-contract=off", "-fno-trapping-math"]

NATIVE = Extension("tensorcodec._native", ["tensorcodec/_native.c"], extra_compile_args=FLAGS, optional=True)

setup(ext_modules=[NATIVE])
