"""The weight-sharing, quantization-aware elastic MobileNetV2 supernet and its export to plain timm models.

:class:`Supernet` holds one network at the space's maxima, named as timm names MobileNetV2 (``conv_stem``/``bn1``,
``blocks.{i}.{j}``, ``conv_head``/``bn2``, ``classifier``). A candidate selects, in place and without allocating,
the first ``depth`` blocks of every stage, the centre of each largest depthwise kernel, the leading expanded and
stage channels, and one numeric format per layer and operand (see :mod:`automq.model.elastic`). All shapes come from
:func:`automq.model.arch.layer_specs`, the single source of truth that the cost model and the timm export also use.

:meth:`Supernet.extract` copies a candidate out as a ``timm.models.efficientnet.EfficientNet`` whose convs and
classifier are :class:`~automq.numerics.QuantConv2d`/:class:`~automq.numerics.QuantLinear` with single-format
quantizers: the deployed artifact holds no elastic code and computes exactly what the supernet computes.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from automq.model.arch import LayerSpec, build_timm_model, layer_specs
from automq.space.candidate import Candidate
from automq.model.elastic import (
    ElasticBatchNormAct2d,
    ElasticDepthwiseSeparable,
    ElasticInvertedResidual,
    ElasticQuantConv2d,
    ElasticQuantLayer,
    ElasticQuantLinear,
)
from automq.errors import AutomqError, CheckpointError, DataError
from automq.io import atomic_torch_save, safe_torch_load
from automq.numerics.quant import QuantConv2d, QuantLinear
from automq.space.space import BLOCK_LAYERS, SearchSpace

if TYPE_CHECKING:
    from timm.models.efficientnet import EfficientNet

__all__ = [
    "MODEL_FORMAT_VERSION",
    "Supernet",
    "build_quant_model",
    "load_model",
    "recalibrate_bn",
    "save_model",
    "sort_channels_by_importance",
]

MODEL_FORMAT_VERSION = 1
_MODEL_KIND = "automq-model"
# Constructor argument order of each block type is the layer order of space.BLOCK_LAYERS.
_BLOCKS = {"ds": ElasticDepthwiseSeparable, "ir": ElasticInvertedResidual}
# Validated specs of recent candidates: training re-activates the largest (and maybe the smallest) every step.
_SPEC_CACHE_SIZE = 16


class Supernet(nn.Module):
    """Elastic MobileNetV2 of ``space`` at its maxima; :meth:`set_active` chooses the candidate it computes.

    Weights are initialised as timm initialises EfficientNets (at the maximal shapes). Quantizer scales are
    initialised from the data the first time each format of each layer is used, and live in ``state_dict``.
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        largest = space.largest()
        specs = {spec.name: spec for spec in layer_specs(space, largest)}

        def conv(name: str) -> ElasticQuantConv2d:
            w_menu, a_menu = space.layer_menu(name)
            return ElasticQuantConv2d(specs[name], w_formats=w_menu, a_formats=a_menu)

        self.conv_stem = conv("conv_stem")
        self.bn1 = ElasticBatchNormAct2d(self.conv_stem.out_channels)
        self.blocks = nn.Sequential(*(
            nn.Sequential(*(
                _BLOCKS[stage.type](*(conv(f"blocks.{i}.{j}.{layer}") for layer in BLOCK_LAYERS[stage.type]))
                for j in range(stage.max_depth)
            ))
            for i, stage in enumerate(space.network.stages)
        ))
        self.conv_head = conv("conv_head")
        self.bn2 = ElasticBatchNormAct2d(self.conv_head.out_channels)
        w_menu, a_menu = space.layer_menu("classifier")
        self.classifier = ElasticQuantLinear(specs["classifier"], w_formats=w_menu, a_formats=a_menu)
        self._layers: dict[str, ElasticQuantLayer] = {name: self.get_submodule(name) for name in specs}
        _init_weights(self)
        self._spec_cache: OrderedDict[Candidate, list[LayerSpec]] = OrderedDict()
        self._candidate = largest
        self._depths = largest.depths

    # ------------------------------------------------------------------------------------------ candidates
    def set_active(self, candidate: Candidate) -> None:
        """Compute ``candidate`` from the next forward on (in place, nothing is allocated).

        Raises :class:`~automq.errors.CandidateError` when ``candidate`` is not in the space.
        """
        if candidate != self._candidate:
            for spec in self._specs(candidate):
                self._layers[spec.name].set_active(spec)
            self._depths = candidate.depths
        self._candidate = candidate

    def active(self) -> Candidate:
        """The candidate given to the last :meth:`set_active` (the largest one after construction)."""
        return self._candidate

    def quant_layers(self) -> dict[str, ElasticQuantLayer]:
        """Every quantized layer of the maximal network by name, in network order (inactive ones included).

        Each exposes ``name``, ``w_fmt``/``a_fmt`` (active formats) and ``forward_formats(x, w_fmt, a_fmt)``,
        the hook a differentiable strategy uses to mix format branches.
        """
        return dict(self._layers)

    def _specs(self, candidate: Candidate) -> list[LayerSpec]:
        """``layer_specs`` of a validated candidate, memoised for the few most recent candidates."""
        specs = self._spec_cache.get(candidate)
        if specs is not None:
            self._spec_cache.move_to_end(candidate)
            return specs
        self.space.validate_candidate(candidate)
        specs = self._spec_cache[candidate] = layer_specs(self.space, candidate)
        if len(self._spec_cache) > _SPEC_CACHE_SIZE:
            self._spec_cache.popitem(last=False)
        return specs

    # ------------------------------------------------------------------------------------------ compute
    def forward(self, x: Tensor) -> Tensor:
        x = self.bn1(self.conv_stem(x))
        for stage, depth in zip(self.blocks, self._depths):
            for block in islice(stage, depth):
                x = block(x)
        x = self.bn2(self.conv_head(x))
        # timm's SelectAdaptivePool2d('avg', flatten=True), op for op, so extracted models match bit-wise
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))

    # ------------------------------------------------------------------------------------------ export
    @torch.no_grad()
    def extract(self, candidate: Candidate | None = None) -> EfficientNet:
        """A stand-alone timm ``EfficientNet`` computing ``candidate`` (default: the active one).

        Weights, BN affine parameters and running statistics are copied (sliced), and every conv/linear is a
        ``QuantConv2d``/``QuantLinear`` with a single-format copy of this layer's quantizers. The copy is on
        this supernet's device and in its train/eval mode; the supernet is not changed.
        """
        candidate = self._candidate if candidate is None else candidate
        specs = self._specs(candidate)
        model = build_quant_model(self.space, candidate)
        for spec in specs:
            layer, quant = self._layers[spec.name], model.get_submodule(spec.name)
            quant.weight.copy_(layer.weight_of(spec))
            if quant.bias is not None:
                quant.bias.copy_(layer.bias[: spec.out_ch])
            quant.w_quant = layer.w_quant.extract(spec.w_fmt, spec.out_ch)
            quant.a_quant = layer.a_quant.extract(spec.a_fmt)
        for name, bn in model.named_modules():
            if isinstance(bn, nn.BatchNorm2d):
                _copy_batchnorm(self.get_submodule(name), bn)
        return model.to(self.conv_stem.weight.device).train(self.training)


def _init_weights(model: nn.Module) -> None:
    """timm's ``_init_weight_goog`` (TensorFlow's EfficientNet init), applied at the maximal shapes.

    Restated rather than imported so that building a supernet does not import timm (about 3 s).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            nn.init.normal_(module.weight, 0.0, (2.0 / fan_out) ** 0.5)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            bound = 1.0 / module.weight.shape[0] ** 0.5
            nn.init.uniform_(module.weight, -bound, bound)
            nn.init.zeros_(module.bias)


def _copy_batchnorm(source: nn.BatchNorm2d, target: nn.BatchNorm2d) -> None:
    n = target.num_features
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(target, name).copy_(getattr(source, name)[:n])
    target.num_batches_tracked.copy_(source.num_batches_tracked)
    target.momentum, target.eps = source.momentum, source.eps


def build_quant_model(space: SearchSpace, candidate: Candidate) -> EfficientNet:
    """The timm ``EfficientNet`` of ``candidate`` with each conv/linear swapped for a ``QuantConv2d`` /
    ``QuantLinear`` restricted to that layer's chosen formats (fresh weights and uncalibrated scales)."""
    model = build_timm_model(space, candidate)
    for spec in layer_specs(space, candidate):
        cls = QuantConv2d if spec.kind == "conv" else QuantLinear
        plain = model.get_submodule(spec.name)
        model.set_submodule(spec.name, cls.from_float(plain, w_formats=[spec.w_fmt], a_formats=[spec.a_fmt],
                                                      a_signed=spec.a_signed))
    return model


# ---------------------------------------------------------------------------------------------- channel sorting
@torch.no_grad()
def sort_channels_by_importance(supernet: Supernet) -> None:
    """Permute every inverted residual's expanded channels so the most important come first (Once-for-All).

    Importance is the L1 norm of the ``conv_pwl`` weights reading a channel. The permutation is applied
    consistently to ``conv_pw`` (rows and per-channel weight scales), ``bn1``, ``conv_dw`` (rows and scales),
    ``bn2`` and the columns of ``conv_pwl``, so the full-width network computes the same function (exactly
    so for per-tensor and per-channel formats; MX formats group 32 consecutive channels, and the groups
    change). Narrower expansions then keep the most important channels. Optimizer momentum is not permuted:
    sort between training phases, before building the optimizer.
    """
    for block in supernet.modules():
        if isinstance(block, ElasticInvertedResidual):
            importance = block.conv_pwl.weight.abs().sum(dim=(0, 2, 3))
            order = torch.argsort(importance, descending=True, stable=True)
            _permute_(block.conv_pwl.weight, order, dim=1)
            for tensor in _expanded_channel_tensors(block):
                _permute_(tensor, order, dim=0)


def _expanded_channel_tensors(block: ElasticInvertedResidual) -> Iterator[Tensor]:
    """Every tensor indexed by the expanded channel along dim 0 (per-channel quantizer state included)."""
    for conv in (block.conv_pw, block.conv_dw):
        yield conv.weight
        yield from conv.w_quant.parameters()
        yield from conv.w_quant.buffers()
    for bn in (block.bn1, block.bn2):
        yield from (bn.weight, bn.bias, bn.running_mean, bn.running_var)


def _permute_(tensor: Tensor, order: Tensor, dim: int) -> None:
    tensor.copy_(tensor.index_select(dim, order.to(tensor.device)))


# ---------------------------------------------------------------------------------------------- BN recalibration
@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Tensor | tuple | list]) -> None:
    """Replace the running statistics of every batch norm of ``model`` with the exact statistics of ``batches``.

    Works on a supernet (for its active candidate; sliced BNs reset all channels) and on extracted models.
    Each BN is reset and run with ``momentum=None`` (a cumulative average over the batches) in train mode
    without gradients; momenta and the train/eval mode of every module are restored afterwards. A batch is
    an image tensor or a sequence whose first item is one (``(images, labels)`` from a loader).
    """
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    modes = [(module, module.training) for module in model.modules()]
    momenta = [bn.momentum for bn in norms]
    device = next(model.parameters()).device
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    seen = 0
    try:
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(images.to(device))
            seen += 1
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        for module, training in modes:
            module.training = training
    if seen == 0:
        raise DataError("recalibrate_bn got no batches, so the BN statistics are now reset to mean 0 / var 1; "
                        "pass at least one batch of calibration images (check the calibration subset size)")


# ---------------------------------------------------------------------------------------------- model files
def save_model(path: str | Path, model: nn.Module, candidate: Candidate, space: SearchSpace) -> None:
    """Write an extracted model atomically: its ``state_dict``, the candidate and the model-shaping part of the
    space as JSON, and a format version. Only tensors and strings are stored, so :func:`load_model` can
    read it with ``weights_only=True``."""
    space.validate_candidate(candidate)
    atomic_torch_save({
        "kind": _MODEL_KIND,
        "format_version": MODEL_FORMAT_VERSION,
        "candidate": candidate.to_json(),
        "space": json.dumps(_space_record(space), sort_keys=True),
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
    }, path)


def load_model(path: str | Path) -> tuple[EfficientNet, Candidate]:
    """Rebuild a model written by :func:`save_model` (in eval mode, on the CPU) and return it with its candidate.

    Raises :class:`~automq.errors.CheckpointError` for a missing, corrupt, foreign or incompatible file.
    """
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("kind") != _MODEL_KIND:
        raise CheckpointError(f"{path}: not an automq model file (expected one written by save_model / "
                              "`automq export`); check the path")
    if state.get("format_version") != MODEL_FORMAT_VERSION:
        raise CheckpointError(f"{path}: model format version {state.get('format_version')!r}, but this automq "
                              f"reads version {MODEL_FORMAT_VERSION}; re-export the model with this version")
    try:
        space = SearchSpace.from_dict(json.loads(state["space"]), source=str(path))
        candidate = Candidate.from_json(state["candidate"])
        space.validate_candidate(candidate)
        model = build_quant_model(space, candidate)
        model.load_state_dict(state["state_dict"])
    except (AutomqError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the model file is inconsistent ({type(exc).__name__}: {exc}); it is "
                              "corrupt or was edited; export the model again") from exc
    return model.eval(), candidate


def _space_record(space: SearchSpace) -> dict[str, Any]:
    """The parts of a space file that shape the model (data shape, network, format menus), in its schema."""
    ds, net = space.dataset, space.network
    overrides = [{"layers": rule.pattern,
                  **({"weights": list(rule.weights)} if rule.weights else {}),
                  **({"activations": list(rule.activations)} if rule.activations else {})}
                 for rule in space.overrides]
    return {
        "name": space.name,
        "dataset": {"name": ds.name, "input_size": ds.input_size, "in_chans": ds.in_chans,
                    "num_classes": ds.num_classes},
        "network": {
            "stem": {"channels": net.stem_channels},
            "stages": [{"type": s.type, "channels": s.channels, "stride": s.stride, "depth": list(s.depth),
                        "kernel_size": list(s.kernel_size), "expand_ratio": list(s.expand_ratio)}
                       for s in net.stages],
            "head": {"channels": net.head_channels},
            "width_mult": list(net.width_mult),
        },
        "formats": {"weights": list(space.weight_formats), "activations": list(space.activation_formats),
                    "overrides": overrides},
        # Required by the schema; objectives do not shape the model, so the saved space names only accuracy.
        "objectives": [{"metric": "accuracy", "mode": "max"}],
    }
