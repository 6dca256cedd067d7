"""The elastic, quantization-aware supernet and what it exports: the second stage of the pipeline.

:mod:`~automq.model.arch` turns a (space, candidate) pair into layer shapes and timm block strings,
:mod:`~automq.model.elastic` holds the max-weight-and-slice layers, and :mod:`~automq.model.supernet` the
:class:`Supernet` (``set_active`` / ``active`` / ``extract``) with model save/load and BN recalibration.
"""

from automq.model.arch import LayerSpec, arch_def, build_timm_model, layer_specs
from automq.model.supernet import Supernet, build_quant_model, load_model, recalibrate_bn, save_model

__all__ = [
    "LayerSpec", "Supernet", "arch_def", "build_quant_model", "build_timm_model", "layer_specs", "load_model",
    "recalibrate_bn", "save_model",
]
