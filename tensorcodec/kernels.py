"""Blockwise 8-bit and 4-bit (NF4 / FP4) quantization, bit-compatible with bitsandbytes 0.50 on CPU.

The bitsandbytes-like functional API, gathered from where each kernel lives: the shared block
machinery, thread scheduler and C/numpy dispatch in :mod:`tensorcodec.codecs.blocks`; the 8-bit
kernel (dynamic map, lookup, ``*_blockwise8*``) in :mod:`tensorcodec.codecs.blockwise8`; the 4-bit
kernel (NF4/FP4 tables, ``*_4bit*``, ``error_bound``) in :mod:`tensorcodec.codecs.quant4`; the
double-quantized statistics (``absmax_mean``, ``*_absmax*``) in :mod:`tensorcodec.codecs.absmax`.
Each module's docstring states what bitsandbytes does and so what its kernel does.
"""

from __future__ import annotations

from .codecs.absmax import (
    absmax_mean,
    dequantize_absmax,
    dequantize_absmax_batch,
    dequantize_absmax_torch,
    quantize_absmax,
    quantize_absmax_batch,
    quantize_absmax_torch,
)
from .codecs.blocks import get_num_threads, set_num_threads
from .codecs.blockwise8 import (
    dequantize_blockwise8,
    dequantize_blockwise8_batch,
    dequantize_blockwise8_torch,
    dynamic_map,
    quantize_blockwise8,
    quantize_blockwise8_batch,
    quantize_blockwise8_torch,
)
from .codecs.quant4 import (
    BLOCKSIZES_4BIT,
    FP4_TABLE,
    NF4_TABLE,
    dequantize_4bit,
    dequantize_4bit_batch,
    dequantize_4bit_torch,
    error_bound,
    quantize_4bit,
    quantize_4bit_batch,
    quantize_4bit_torch,
)

__all__ = [
    "dequantize_4bit_batch",
    "dequantize_absmax_batch",
    "dequantize_blockwise8_batch",
    "quantize_4bit_batch",
    "quantize_blockwise8_batch",
    "BLOCKSIZES_4BIT",
    "FP4_TABLE",
    "NF4_TABLE",
    "absmax_mean",
    "dequantize_4bit",
    "dequantize_4bit_torch",
    "dequantize_absmax",
    "dequantize_absmax_torch",
    "dequantize_blockwise8",
    "dequantize_blockwise8_torch",
    "dynamic_map",
    "error_bound",
    "get_num_threads",
    "quantize_4bit",
    "quantize_4bit_torch",
    "quantize_absmax",
    "quantize_absmax_batch",
    "quantize_absmax_torch",
    "quantize_blockwise8",
    "quantize_blockwise8_torch",
    "set_num_threads",
]
