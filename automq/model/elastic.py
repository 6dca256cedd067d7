"""Elastic ("max weight + slice") quantization-aware layers and blocks of the weight-sharing supernet.

Every layer allocates its largest shape once. The active sub-layer is described by an
:class:`automq.model.arch.LayerSpec` (the one place that knows candidate shapes): its leading output and input
channels, and the centre
``k x k`` window of the largest kernel, as in Once-for-All. Switching candidates only stores a new spec on each
layer; no tensor is (re)allocated, and ``forward`` never mutates a module.

Each quantized layer owns a weight :class:`~automq.numerics.quant.Quantizer` over its weight-format menu (per-channel at
the maximum channel count, sliced to the leading channels in use) and an activation quantizer over its
activation menu, so every candidate that uses a layer in a given format shares that format's learned scale.
Batch norms slice their affine parameters and running statistics the same way; the slices are views, so
train-mode statistics update the shared buffers in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from automq.model.arch import LayerSpec
from automq.numerics.quant import Quantizer

__all__ = [
    "ElasticBatchNormAct2d",
    "ElasticDepthwiseSeparable",
    "ElasticInvertedResidual",
    "ElasticQuantConv2d",
    "ElasticQuantLinear",
    "ElasticQuantLayer",
]


class ElasticQuantLayer:
    """What the conv and the linear share: a name, two quantizers, the active spec and the format hooks.

    Gradient strategies that mix several formats of one layer (differentiable search) call
    :meth:`forward_formats` once per ``(w_fmt, a_fmt)`` branch, or quantize (and mix) the operands themselves and
    call :meth:`forward_quantized`; the plain ``forward`` uses the active formats.
    """

    name: str
    active: LayerSpec
    w_quant: Quantizer
    a_quant: Quantizer

    def _init_quant(self, spec: LayerSpec, w_formats: Sequence[str], a_formats: Sequence[str]) -> None:
        self.name = spec.name
        self.w_quant = Quantizer(w_formats, channels=spec.out_ch, signed=True)
        self.a_quant = Quantizer(a_formats, channels=None, signed=spec.a_signed, input_max=spec.a_max)
        self.active = spec

    def set_active(self, spec: LayerSpec) -> None:
        """Compute the sub-layer ``spec`` (shapes and formats) from the next call on; allocates nothing."""
        self.active = spec

    @property
    def w_fmt(self) -> str:
        return self.active.w_fmt

    @property
    def a_fmt(self) -> str:
        return self.active.a_fmt

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_formats(x, self.active.w_fmt, self.active.a_fmt)

    def forward_formats(self, x: Tensor, w_fmt: str, a_fmt: str) -> Tensor:
        """The active sub-layer's output with the weight in ``w_fmt`` and the input in ``a_fmt``."""
        spec = self.active
        weight = self.w_quant(self.weight_of(spec), w_fmt)
        return self.forward_quantized(self.a_quant(x, a_fmt), weight, spec)

    def forward_quantized(self, inputs: Tensor, weight: Tensor, spec: LayerSpec) -> Tensor:
        """The sub-layer ``spec``'s operation on operands that are already quantized (``weight`` has its shape)."""
        raise NotImplementedError

    def weight_of(self, spec: LayerSpec) -> Tensor:
        """The slice of the shared weight that the sub-layer ``spec`` uses (a view)."""
        raise NotImplementedError


class ElasticQuantConv2d(ElasticQuantLayer, nn.Conv2d):
    """A bias-free conv (regular or depthwise) at its largest shape, built from that shape's :class:`LayerSpec`.

    Padding is timm's symmetric ``k // 2`` for the active kernel size.
    """

    def __init__(self, spec: LayerSpec, *, w_formats: Sequence[str], a_formats: Sequence[str]) -> None:
        super().__init__(spec.in_ch, spec.out_ch, spec.kernel_size, stride=spec.stride,
                         padding=spec.kernel_size // 2, groups=spec.groups, bias=False)
        self._init_quant(spec, w_formats, a_formats)

    def weight_of(self, spec: LayerSpec) -> Tensor:
        start = (self.kernel_size[0] - spec.kernel_size) // 2
        window = slice(start, start + spec.kernel_size)
        return self.weight[: spec.out_ch, : spec.in_ch // spec.groups, window, window]

    def forward_quantized(self, inputs: Tensor, weight: Tensor, spec: LayerSpec) -> Tensor:
        return F.conv2d(inputs, weight, None, spec.stride, spec.kernel_size // 2, 1, spec.groups)

    def extra_repr(self) -> str:
        return f"{self.name!r}, {super().extra_repr()}"


class ElasticQuantLinear(ElasticQuantLayer, nn.Linear):
    """The classifier at its largest input width; the active one reads the leading input features."""

    def __init__(self, spec: LayerSpec, *, w_formats: Sequence[str], a_formats: Sequence[str]) -> None:
        super().__init__(spec.in_ch, spec.out_ch)
        self._init_quant(spec, w_formats, a_formats)

    def weight_of(self, spec: LayerSpec) -> Tensor:
        return self.weight[: spec.out_ch, : spec.in_ch]

    def forward_quantized(self, inputs: Tensor, weight: Tensor, spec: LayerSpec) -> Tensor:
        return F.linear(inputs, weight, self.bias[: spec.out_ch])

    def extra_repr(self) -> str:
        return f"{self.name!r}, {super().extra_repr()}"


class ElasticBatchNormAct2d(nn.BatchNorm2d):
    """Batch norm (+ ReLU6, as timm's ``BatchNormAct2d``) over the leading ``x.shape[1]`` channels.

    ``momentum=None`` means a cumulative average, as in ``nn.BatchNorm2d``; BN recalibration relies on it.
    """

    def __init__(self, num_features: int, *, apply_act: bool = True) -> None:
        super().__init__(num_features)
        self.apply_act = apply_act

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        factor = 0.0
        if self.training:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        weight, bias = self.gain_and_bias()
        x = F.batch_norm(x, self.running_mean[:c], self.running_var[:c], weight[:c], bias[:c], self.training, factor,
                         self.eps)
        return F.relu6(x) if self.apply_act else x

    def gain_and_bias(self) -> tuple[Tensor, Tensor]:
        """The gain and bias in use (at the maximal width); a hook for conditional-BN experiments."""
        return self.weight, self.bias

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, apply_act={self.apply_act}"


class _ElasticBlock(nn.Module):
    """Residual rule shared by both block types: timm adds the input when the stride is 1 and the ACTIVE input
    and output widths agree (so a stage's first block gains or loses its skip with the width multiplier)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def _residual(self, x: Tensor, out: Tensor) -> Tensor:
        return out + x if self.stride == 1 and out.shape[1] == x.shape[1] else out


class ElasticDepthwiseSeparable(_ElasticBlock):
    """timm's ``DepthwiseSeparableConv``: depthwise ``conv_dw``/``bn1`` (ReLU6), pointwise ``conv_pw``/``bn2``."""

    def __init__(self, conv_dw: ElasticQuantConv2d, conv_pw: ElasticQuantConv2d) -> None:
        super().__init__(conv_dw.stride[0])
        self.conv_dw, self.bn1 = conv_dw, ElasticBatchNormAct2d(conv_dw.out_channels)
        self.conv_pw, self.bn2 = conv_pw, ElasticBatchNormAct2d(conv_pw.out_channels, apply_act=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv_dw(x))
        return self._residual(x, self.bn2(self.conv_pw(out)))


class ElasticInvertedResidual(_ElasticBlock):
    """timm's ``InvertedResidual``: expansion ``conv_pw``/``bn1``, depthwise ``conv_dw``/``bn2`` (both ReLU6)
    and the linear projection ``conv_pwl``/``bn3``."""

    def __init__(self, conv_pw: ElasticQuantConv2d, conv_dw: ElasticQuantConv2d, conv_pwl: ElasticQuantConv2d) -> None:
        super().__init__(conv_dw.stride[0])
        self.conv_pw, self.bn1 = conv_pw, ElasticBatchNormAct2d(conv_pw.out_channels)
        self.conv_dw, self.bn2 = conv_dw, ElasticBatchNormAct2d(conv_dw.out_channels)
        self.conv_pwl, self.bn3 = conv_pwl, ElasticBatchNormAct2d(conv_pwl.out_channels, apply_act=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv_pw(x))
        out = self.bn2(self.conv_dw(out))
        return self._residual(x, self.bn3(self.conv_pwl(out)))
