"""Numeric formats and the quantized layers that apply them.

:mod:`~automq.numerics.formats` is the registry of element formats (int2-int8, FP8/FP6/FP4, OCP MX, fp16/bf16/fp32)
as pure tensor rounding with straight-through gradients; :mod:`~automq.numerics.quant` holds the learned-scale
quantizers and the ``QuantConv2d``/``QuantLinear`` layers built on them. Nothing here knows about spaces or models.
"""

from automq.numerics.formats import (
    NumericFormat, IntFormat, FloatFormat, MXFormat, CastFormat, format_names, format_table, get_format,
    register_format,
)
from automq.numerics.quant import QuantConv2d, QuantLinear, Quantizer, quantize_modules_, scales_restored

__all__ = [
    "CastFormat", "FloatFormat", "IntFormat", "MXFormat", "NumericFormat", "QuantConv2d", "QuantLinear",
    "Quantizer", "format_names", "format_table", "get_format", "quantize_modules_", "register_format",
    "scales_restored",
]
