"""Quantization-aware layers: learned per-format scales and drop-in quantized Conv2d / Linear.

A :class:`Quantizer` owns one learned LSQ scale per format of its menu, so a layer can switch formats between
calls (as the one-shot supernet does every step) without one format's scale disturbing another's. Scales are
initialised from the first tensor seen in that format, and an ``initialised_<fmt>`` buffer records it so the
state survives ``state_dict`` save/load. Per-channel scales are allocated for the largest layer and sliced to
the leading channels in use, which is how an elastic (max weight + slice) supernet shares them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Self

import torch
from torch import Tensor, nn

from automq.numerics.formats import NumericFormat, get_format

__all__ = ["QuantConv2d", "QuantLinear", "Quantizer", "dequantize_", "quantize_modules_", "scales_restored"]


class Quantizer(nn.Module):
    """Fake quantization of a weight (per-channel scales, ``channels=C``) or activation (per-tensor, ``None``).

    Args:
        formats: the format menu; ``forward`` accepts only these names.
        channels: number of output channels for per-channel scales along axis 0, or ``None`` for one
            per-tensor scale.
        signed: whether the quantized tensor can be negative (``False`` for post-ReLU activations, which
            lets integer formats spend every level on ``[0, max]``).
        input_max: the largest magnitude the tensor can take (6 for a ReLU6 output), or ``None``. A learned
            scale is then capped at ``input_max / top`` (``top``: the grid's highest element, e.g. 255 for
            unsigned int8), so the grid ends at ``input_max``. Levels beyond it could never be used; and with
            the grid ending there, clipping at ``input_max`` before quantizing changes no code, which is what
            lets an exported int8 layer write its output directly in the next layer's codes
            (:mod:`automq.model.onnx_export` drops the ReLU6 only where it is redundant). The learned parameter
            is kept as it is; the cap applies where the scale is used (:meth:`scale`).
    """

    def __init__(self, formats: Sequence[str], *, channels: int | None, signed: bool,
                 input_max: float | None = None) -> None:
        super().__init__()
        self.formats = tuple(dict.fromkeys(formats))
        if not self.formats:
            raise ValueError("Quantizer needs at least one format; pass e.g. formats=['int8']")
        if channels is not None and channels < 1:
            raise ValueError(f"Quantizer channels must be a positive int or None, got {channels}")
        if input_max is not None and not input_max > 0:
            raise ValueError(f"Quantizer input_max must be positive or None, got {input_max}")
        self.channels = channels
        self.signed = signed
        self.input_max = input_max
        self.scales = nn.ParameterDict()
        for name in self.formats:
            if get_format(name).learnable_scale:  # get_format also rejects unknown names
                self.scales[name] = nn.Parameter(torch.ones(channels or 1))
                self.register_buffer(f"initialised_{name}", torch.zeros(channels or 1, dtype=torch.bool))

    @property
    def axis(self) -> int | None:
        """Channel axis of the scales (0) or ``None`` when per-tensor."""
        return None if self.channels is None else 0

    def _spec(self, fmt: str) -> NumericFormat:
        if fmt not in self.formats:
            raise KeyError(f"format {fmt!r} is not in this quantizer's menu {list(self.formats)}")
        return get_format(fmt)

    def _scale(self, fmt: str, x: Tensor) -> Tensor:
        """The learned scale for ``x`` (sliced to its leading channels), initialising unseen channels."""
        n = 1 if self.channels is None else x.shape[0]
        if n > (self.channels or 1):
            raise ValueError(
                f"tensor has {n} channels but the quantizer was built for {self.channels}; "
                "build it for the widest layer"
            )
        param = self.scales[fmt]
        flags = getattr(self, f"initialised_{fmt}")[:n]
        if not bool(flags.all()):
            with torch.no_grad():
                todo = ~flags
                init = get_format(fmt).init_scale(x, signed=self.signed, axis=self.axis)
                param[:n][todo] = init[todo].to(param.dtype)
                flags.fill_(True)
        return self._capped(fmt, param if n == len(param) else param[:n])  # a full slice would cost a backward node

    def scale(self, fmt: str, channels: int | None = None) -> Tensor:
        """The scale ``fmt`` quantizes with (the learned one, capped by ``input_max``), sliced to the leading
        ``channels``; what an exporter must write. Formats without a learned scale have none."""
        if fmt not in self.scales:
            raise KeyError(f"format {fmt!r} has no learned scale in this quantizer (its menu: {list(self.formats)})")
        param = self.scales[fmt]
        return self._capped(fmt, param if channels is None else param[:channels])

    def _capped(self, fmt: str, scale: Tensor) -> Tensor:
        if self.input_max is None:
            return scale
        top = get_format(fmt).bounds(self.signed)[1]
        # clamp passes no gradient to a capped entry: the cap is a constraint, not a target the scale learns
        return scale.clamp(max=self.input_max / top)

    def forward(self, x: Tensor, fmt: str) -> Tensor:
        """Fake-quantize ``x`` in ``fmt``; identity formats return ``x`` itself at no cost."""
        spec = self._spec(fmt)
        if spec.is_identity:
            return x
        scale = self._scale(fmt, x) if spec.learnable_scale else None
        return spec.quantize(x, scale, signed=self.signed, axis=self.axis)

    def extract(self, fmt: str, channels: int | None = None) -> Quantizer:
        """A single-format copy whose scale is sliced to the leading ``channels`` (for the exported model)."""
        self._spec(fmt)
        if (channels is None) != (self.channels is None) or (channels or 0) > (self.channels or 0):
            raise ValueError(
                f"cannot extract {channels} channels from a quantizer with channels={self.channels}; pass at most "
                f"{self.channels} (None for a per-tensor quantizer)"
            )
        out = Quantizer([fmt], channels=channels, signed=self.signed, input_max=self.input_max)
        if fmt in self.scales:
            n = channels or 1
            with torch.no_grad():
                out.scales[fmt].copy_(self.scales[fmt][:n])
            getattr(out, f"initialised_{fmt}").copy_(getattr(self, f"initialised_{fmt}")[:n])
        return out

    def extra_repr(self) -> str:
        cap = "" if self.input_max is None else f", input_max={self.input_max:g}"
        return f"formats={list(self.formats)}, channels={self.channels}, signed={self.signed}{cap}"


class _QuantLayer:
    """What :class:`QuantConv2d` and :class:`QuantLinear` share: two quantizers, the active formats and the copy
    of a float layer. Mixed in before the torch layer, whose constructor receives the remaining arguments.

    Positional and other keyword arguments are those of the torch layer; the menus default to ``fp32`` only and
    the first entry of each menu is active until :meth:`set_formats`. The weight is quantized per output channel.
    """

    # The constructor arguments that from_float reads off the float layer (bias, device and dtype aside).
    shape_args: ClassVar[tuple[str, ...]]
    weight: Tensor
    bias: Tensor | None
    w_quant: Quantizer
    a_quant: Quantizer
    w_fmt: str
    a_fmt: str

    def __init__(
        self,
        *args: Any,
        w_formats: Sequence[str] = ("fp32",),
        a_formats: Sequence[str] = ("fp32",),
        a_signed: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)  # the torch layer, next in the MRO
        self.w_quant = Quantizer(w_formats, channels=self.weight.shape[0], signed=True)
        self.a_quant = Quantizer(a_formats, channels=None, signed=a_signed)
        self.w_fmt, self.a_fmt = self.w_quant.formats[0], self.a_quant.formats[0]

    @classmethod
    def from_float(
        cls, layer: nn.Module, *, w_formats: Sequence[str], a_formats: Sequence[str], a_signed: bool = True
    ) -> Self:
        """A quantized copy of the float ``layer``: same hyper-parameters, device and dtype, weights copied."""
        quant = cls(
            **{name: getattr(layer, name) for name in cls.shape_args},
            bias=layer.bias is not None,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
            w_formats=w_formats,
            a_formats=a_formats,
            a_signed=a_signed,
        )
        with torch.no_grad():
            quant.weight.copy_(layer.weight)
            if layer.bias is not None:
                quant.bias.copy_(layer.bias)
        return quant

    def set_formats(self, w_fmt: str, a_fmt: str) -> None:
        """Use ``w_fmt`` for the weight and ``a_fmt`` for the input from the next call on."""
        self.w_quant._spec(w_fmt)
        self.a_quant._spec(a_fmt)
        self.w_fmt, self.a_fmt = w_fmt, a_fmt

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, w_fmt={self.w_fmt}, a_fmt={self.a_fmt}"  # type: ignore[misc]


class QuantConv2d(_QuantLayer, nn.Conv2d):
    """``nn.Conv2d`` whose input is fake-quantized in ``a_fmt`` and weight in ``w_fmt`` (per-channel)."""

    shape_args = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                  "padding_mode")

    def forward(self, x: Tensor) -> Tensor:
        weight = self.w_quant(self.weight, self.w_fmt)
        return self._conv_forward(self.a_quant(x, self.a_fmt), weight, self.bias)


class QuantLinear(_QuantLayer, nn.Linear):
    """``nn.Linear`` whose input is fake-quantized in ``a_fmt`` and weight in ``w_fmt`` (per-channel)."""

    shape_args = ("in_features", "out_features")

    def forward(self, x: Tensor) -> Tensor:
        weight = self.w_quant(self.weight, self.w_fmt)
        return nn.functional.linear(self.a_quant(x, self.a_fmt), weight, self.bias)


_QUANT_CLASSES: dict[type[nn.Module], type[QuantConv2d] | type[QuantLinear]] = {
    nn.Conv2d: QuantConv2d,
    nn.Linear: QuantLinear,
}


def quantize_modules_(model: nn.Module, w_fmt: str, a_fmt: str, *, a_signed: bool = True) -> list[str]:
    """Swap every plain ``nn.Conv2d`` / ``nn.Linear`` of ``model`` in place for its quantized copy.

    Subclasses (e.g. timm's ``Conv2dSame``, which pads in ``forward``) are left alone rather than silently
    losing their behaviour. Returns the names of the replaced modules, in ``named_modules`` order.
    """
    for fmt in (w_fmt, a_fmt):
        get_format(fmt)  # fail on an unknown name before touching the model
    replaced = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            quant_cls = _QUANT_CLASSES.get(type(child))
            if quant_cls is None:
                continue
            quant = quant_cls.from_float(child, w_formats=[w_fmt], a_formats=[a_fmt], a_signed=a_signed)
            setattr(parent, child_name, quant)
            replaced.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    return replaced


def dequantize_(model: nn.Module) -> int:
    """Make every quantized layer of ``model`` compute in ``fp32``, in place: each gets weight and activation
    quantizers whose menu is ``fp32`` alone (no scales), so the model is the float network of its architecture.

    This is the pretrained network that a quantization-aware fine-tune starts from: its ``state_dict`` holds the
    weights and BN parameters but no quantizer scales, so loading it into a quantized copy of the same
    architecture (``strict=False``) leaves that copy's scales to be initialised from the first tensors they see.
    Returns the number of layers changed."""
    layers = [module for module in model.modules() if isinstance(module, _QuantLayer)]
    for layer in layers:
        layer.w_quant = Quantizer(["fp32"], channels=layer.w_quant.channels, signed=True)
        layer.a_quant = Quantizer(["fp32"], channels=None, signed=layer.a_quant.signed,
                                  input_max=layer.a_quant.input_max)
        layer.w_fmt = layer.a_fmt = "fp32"
    return len(layers)


@contextmanager
def scales_restored(model: nn.Module) -> Iterator[None]:
    """Undo on exit every change that the block makes to the quantizer scales of ``model``.

    A scale that training never initialised (a format or channel no sampled candidate used) is initialised by
    the first tensor it sees. Scoring a candidate must not do that for good, or the score of the next candidate
    would depend on which candidates were scored before it; inside this block the first use initialises the
    scale from the candidate's own data, and the state is put back afterwards.
    """
    quantizers = [module for module in model.modules() if isinstance(module, Quantizer)]
    saved = [(q, {k: v.clone() for k, v in q.state_dict().items()}) for q in quantizers]
    try:
        yield
    finally:
        for quantizer, state in saved:
            quantizer.load_state_dict(state)
