"""Types of the C accelerator (tensorcodec/_native.c); kernels.py is its only caller.

One function per kernel, each the C copy of its numpy body in kernels.py (``quantize8_blocks``, ...).
Each takes a layout (tensors laid end to end, each starting its own blocks; for 4-bit an odd tensor
takes one more position, its pad), the family's table, the outputs laid out as kernels.BlockLayout
says, and a span ``(start, stop)`` of the blocks counted across all tensors: one call does a single
tensor, a batch, or one thread's share of either. Sources and outputs are C-contiguous buffers read
and written as raw bytes; ``kind`` says what their elements are: 0 float32, 1 float16, 2 bfloat16.
Every size is checked (ValueError), outputs must be writable (TypeError). The GIL is released.
"""

from collections.abc import Sequence
from typing import Any, TypeAlias

from numpy.typing import NDArray
from typing_extensions import Buffer

_Buf: TypeAlias = Buffer | NDArray[Any]  # numpy declares its buffer protocol to type checkers from Python 3.12 on
_Span: TypeAlias = tuple[int, int]

def quantize8(src: tuple[Sequence[_Buf], _Buf], blocksize: int, lut: _Buf, out: tuple[_Buf, _Buf], span: _Span) -> None:
    """``src``: (sources, kinds: one byte each); ``out``: (codes, absmax)."""

def quantize4(
    src: tuple[Sequence[_Buf], _Buf],
    blocksize: int,
    table: tuple[_Buf, _Buf, _Buf],
    out: tuple[_Buf, _Buf],
    span: _Span,
) -> None:
    """``table``: (grid, bounds, order) of a kernels.Table4; ``out``: (packed, absmax)."""

def dequantize8(
    src: tuple[Sequence[_Buf], Sequence[_Buf]], blocksize: int, table: _Buf, out: tuple[_Buf, int], span: _Span
) -> None:
    """``src``: (codes, absmaxes); ``table``: the 256 map values; ``out``: (values, kind)."""

def dequantize4(
    src: tuple[Sequence[_Buf], Sequence[_Buf], Sequence[int]],
    blocksize: int,
    values: _Buf,
    out: tuple[_Buf, int],
    span: _Span,
) -> None:
    """``src``: (packed, absmaxes, counts); ``values``: the 16 table values; ``out``: (values, kind)."""

def hadamard(src: _Buf, kind: int, out: _Buf, p: int, d: _Buf, inverse: bool) -> None:
    """codecs/hadamard.py's rotation of pieces of ``p`` elements (kind 0 float32, 2 bfloat16) into float32 ``out``."""
