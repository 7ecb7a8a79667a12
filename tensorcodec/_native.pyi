"""Types of the C accelerator (tensorcodec/_native.c); kernels.py is its only caller.

Sources and outputs are C-contiguous buffers read and written as raw bytes; ``kind`` says what
their elements are: 0 float32, 1 float16, 2 bfloat16. Block ranges are ``[start, stop)``. Every
size is checked (ValueError), outputs must be writable (TypeError).
"""

from collections.abc import Sequence
from typing import Any, TypeAlias

from numpy.typing import NDArray
from typing_extensions import Buffer

_Buf: TypeAlias = Buffer | NDArray[Any]  # numpy declares its buffer protocol to type checkers from Python 3.12 on

def quantize8(
    src: _Buf, kind: int, blocksize: int, lut: _Buf, codes: _Buf, absmax: _Buf, start: int, stop: int
) -> None: ...
def dequantize8(
    codes: _Buf, absmax: _Buf, blocksize: int, table: _Buf, out: _Buf, kind: int, start: int, stop: int
) -> None: ...
def quantize4(
    src: _Buf,
    kind: int,
    blocksize: int,
    grid: _Buf,
    bounds: _Buf,
    order: _Buf,
    packed: _Buf,
    absmax: _Buf,
    start: int,
    stop: int,
) -> None: ...
def dequantize4(
    packed: _Buf, absmax: _Buf, blocksize: int, values: _Buf, out: _Buf, kind: int, start: int, stop: int
) -> None: ...
def quantize8_batch(
    srcs: Sequence[_Buf], kinds: _Buf, blocksize: int, lut: _Buf, codes: _Buf, absmax: _Buf
) -> None: ...
def quantize4_batch(
    srcs: Sequence[_Buf],
    kinds: _Buf,
    blocksize: int,
    grid: _Buf,
    bounds: _Buf,
    order: _Buf,
    packed: _Buf,
    absmax: _Buf,
) -> None: ...
def dequantize8_batch(
    codes: Sequence[_Buf], absmaxes: Sequence[_Buf], blocksize: int, table: _Buf, out: _Buf, kind: int
) -> None: ...
def dequantize4_batch(
    packed: Sequence[_Buf],
    absmaxes: Sequence[_Buf],
    counts: Sequence[int],
    blocksize: int,
    values: _Buf,
    out: _Buf,
    kind: int,
) -> None: ...
