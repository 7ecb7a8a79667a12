"""Builds the optional C accelerators: ``tensorcodec._native`` (kernels), ``tensorcodec._fastwire`` (wire loops)
and ``tensorcodec._fasttree`` (the tree decoder).

All metadata lives in pyproject.toml.

``optional=True``: without a C compiler the install still succeeds; kernels.py, wire.py, tree.py and core.py
then do the same work in numpy and Python.
The flags keep the float32 arithmetic bit-identical to the numpy kernels: no FMA contraction
(``-ffp-contract=off``), no ``-ffast-math``; ``-fno-trapping-math`` only lets the compiler
vectorize the clamps (it changes no result).
"""

import sys

from setuptools import Extension, setup

FLAGS = ["/O2", "/fp:precise"] if sys.platform == "win32" else ["-O3", "-ffp-contract=off", "-fno-trapping-math"]

NATIVE = Extension("tensorcodec._native", ["tensorcodec/_native.c"], extra_compile_args=FLAGS, optional=True)

FASTWIRE = Extension("tensorcodec._fastwire", ["tensorcodec/_fastwire.c"], extra_compile_args=FLAGS[:1], optional=True)

FASTTREE = Extension("tensorcodec._fasttree", ["tensorcodec/_fasttree.c"], extra_compile_args=FLAGS[:1], optional=True)

setup(ext_modules=[NATIVE, FASTWIRE, FASTTREE])
