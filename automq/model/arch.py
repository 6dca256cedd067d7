"""The one place that turns ``(space, candidate)`` into layer shapes, timm block strings and a timm model.

Channel rounding is timm's: stem, stage and head channels go through ``round_channels(c, width_mult)`` (the head
never shrinks below the file's value, as in timm's MobileNetV2: ``max(head, round_channels(head, w))``), and an
inverted residual's expanded width is ``make_divisible(in_chs * expand_ratio)``. The rules are restated here
so that shapes and costs do not import timm (about 3 s); ``tests/test_arch.py`` checks them against timm.
Spatial sizes follow timm's symmetric padding ``k // 2``: a stride-``s`` layer maps ``h`` to ``ceil(h / s)``.

Activation formats quantize each layer's input, so :attr:`LayerSpec.a_signed` records whether that input can
be negative: it is unsigned (``False``) exactly when it comes straight out of a ReLU6, i.e. the stem output,
an expansion or depthwise output inside a block, and the pooled head features; the linear bottleneck between
blocks (and the network input) is signed. An unsigned input is therefore also at most 6 (:attr:`LayerSpec.a_max`;
an average of ReLU6 outputs is too), which caps its quantizer's scale (:class:`~automq.numerics.quant.Quantizer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from automq.errors import CandidateError

if TYPE_CHECKING:
    from timm.models.efficientnet import EfficientNet

    from automq.space.candidate import BlockChoice, Candidate
    from automq.space.space import SearchSpace

__all__ = ["LayerSpec", "arch_def", "build_timm_model", "head_channels", "layer_specs", "make_divisible",
           "round_channels", "timm_kwargs"]

STEM_KERNEL, STEM_STRIDE = 3, 2
RELU6_MAX = 6.0


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """timm's ``make_divisible``: nearest multiple of ``divisor`` (>= divisor), never below 90 % of ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * value else rounded


def round_channels(channels: int, multiplier: float) -> int:
    """timm's ``round_channels``: scale a channel count by the width multiplier and round to a multiple of 8."""
    return make_divisible(channels * multiplier)


def head_channels(space: SearchSpace, width_mult: float) -> int:
    """Features of the 1x1 head conv: scaled like timm's MobileNetV2, which never narrows the head."""
    head = space.network.head_channels
    return max(head, round_channels(head, width_mult))


@dataclass(frozen=True)
class LayerSpec:
    """One quantized layer of a candidate: shapes, the sign of its input, and its formats."""

    name: str
    kind: str  # "conv" | "linear"
    in_ch: int
    out_ch: int
    kernel_size: int
    stride: int
    groups: int
    in_hw: int  # input height = width (inputs are square); 1 for the classifier
    out_hw: int
    a_signed: bool
    w_fmt: str
    a_fmt: str
    # the input format of the layer that alone reads this one's output (through its BatchNorm and ReLU6 only);
    # None where a residual add also reads it or comes first, or the pooling or the logits do. An exporter can
    # requantize the output there.
    out_fmt: str | None = None

    @property
    def a_max(self) -> float | None:
        """The largest value the input can take: that of ReLU6 where the input is unsigned, else unbounded."""
        return None if self.a_signed else RELU6_MAX

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_ch == self.out_ch

    @property
    def fan_in(self) -> int:
        """Products summed into one output value."""
        return (self.in_ch // self.groups) * self.kernel_size**2

    @property
    def weight_numel(self) -> int:
        return self.out_ch * self.fan_in

    @property
    def params(self) -> int:
        """Weights, plus the bias of the classifier (timm's convs have none; BN is not counted)."""
        return self.weight_numel + (self.out_ch if self.kind == "linear" else 0)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one image: every weight is used once per output position."""
        return self.weight_numel * self.out_hw**2

    @property
    def in_numel(self) -> int:
        return self.in_ch * self.in_hw**2

    @property
    def out_numel(self) -> int:
        return self.out_ch * self.out_hw**2


def _conv(name: str, in_ch: int, out_ch: int, k: int, stride: int, hw: int, *, depthwise: bool = False,
          a_signed: bool) -> dict[str, Any]:
    return dict(name=name, kind="conv", in_ch=in_ch, out_ch=out_ch, kernel_size=k, stride=stride,
                groups=in_ch if depthwise else 1, in_hw=hw, out_hw=-(-hw // stride), a_signed=a_signed)


def _block(prefix: str, kind: str, in_ch: int, out_ch: int, block: BlockChoice, stride: int, hw: int,
           input_signed: bool) -> list[dict[str, Any]]:
    """Layers of one block: ``ds`` is depthwise then pointwise, ``ir`` expand, depthwise, project; ReLU6
    follows every conv except the last, so only the first conv can read a signed input."""
    if kind == "ds":
        dw = _conv(prefix + "conv_dw", in_ch, in_ch, block.kernel_size, stride, hw, depthwise=True,
                   a_signed=input_signed)
        return [dw, _conv(prefix + "conv_pw", in_ch, out_ch, 1, 1, dw["out_hw"], a_signed=False)]
    mid = make_divisible(in_ch * block.expand_ratio)
    dw = _conv(prefix + "conv_dw", mid, mid, block.kernel_size, stride, hw, depthwise=True, a_signed=False)
    return [_conv(prefix + "conv_pw", in_ch, mid, 1, 1, hw, a_signed=input_signed), dw,
            _conv(prefix + "conv_pwl", mid, out_ch, 1, 1, dw["out_hw"], a_signed=False)]


def _shapes(space: SearchSpace, candidate: Candidate) -> list[dict[str, Any]]:
    """Shape fields of every active layer, in network order (the same order as ``space.layer_names``)."""
    w = candidate.width_mult
    hw, chs = space.dataset.input_size, round_channels(space.network.stem_channels, w)
    layers = [_conv("conv_stem", space.dataset.in_chans, chs, STEM_KERNEL, STEM_STRIDE, hw, a_signed=True)]
    hw = layers[0]["out_hw"]
    input_signed = False  # the first block reads the stem's ReLU6 output
    for i, (stage, blocks) in enumerate(zip(space.network.stages, candidate.blocks)):
        out = round_channels(stage.channels, w)
        for j, block in enumerate(blocks):
            stride = stage.stride if j == 0 else 1
            body = _block(f"blocks.{i}.{j}.", stage.type, chs, out, block, stride, hw, input_signed)
            if stride == 1 and chs == out:  # timm's has_skip: the block adds its input to its output
                layers[-1]["feeds_next"] = body[-1]["feeds_next"] = False  # both outputs also meet the add
            layers += body
            chs, hw, input_signed = out, body[-1]["out_hw"], True  # blocks end linear (the bottleneck)
    features = head_channels(space, w)
    layers.append(_conv("conv_head", chs, features, 1, 1, hw, a_signed=True))
    layers[-1]["feeds_next"] = False  # the global pooling follows
    layers.append(dict(name="classifier", kind="linear", in_ch=features, out_ch=space.dataset.num_classes,
                       kernel_size=1, stride=1, groups=1, in_hw=1, out_hw=1, a_signed=False, feeds_next=False))
    return layers


def layer_specs(space: SearchSpace, candidate: Candidate) -> list[LayerSpec]:
    """Every quantized layer of ``candidate`` with its shapes and formats, in network order.

    ``layer_specs(space, space.largest())`` gives the maximal shapes a supernet allocates.
    """
    formats = candidate.layer_formats()
    shapes = _shapes(space, candidate)
    for shape in shapes:
        if shape["name"] not in formats:
            raise CandidateError(f"candidate {candidate.id} has no formats for layer '{shape['name']}'; "
                                 f"check it with space.validate_candidate")
    following = [formats[shape["name"]][1] for shape in shapes[1:]] + [None]
    specs = []
    for shape, next_input in zip(shapes, following):
        feeds_next = shape.pop("feeds_next", True)
        specs.append(LayerSpec(**shape, w_fmt=formats[shape["name"]][0], a_fmt=formats[shape["name"]][1],
                               out_fmt=next_input if feeds_next else None))
    return specs


def arch_def(space: SearchSpace, candidate: Candidate) -> list[list[str]]:
    """timm block strings, one per active block (``ir_r1_k5_s2_e6_c24`` / ``ds_r1_k3_s1_c16``).

    Channels are the file's unscaled stage channels: the width multiplier enters through ``round_chs_fn``.
    """
    stages = []
    for stage, blocks in zip(space.network.stages, candidate.blocks):
        strings = []
        for j, block in enumerate(blocks):
            stride = stage.stride if j == 0 else 1
            expand = f"_e{block.expand_ratio}" if stage.type == "ir" else ""
            strings.append(f"{stage.type}_r1_k{block.kernel_size}_s{stride}{expand}_c{stage.channels}")
        stages.append(strings)
    return stages


def timm_kwargs(space: SearchSpace, candidate: Candidate) -> dict[str, Any]:
    """Keyword arguments of ``timm.models.efficientnet.EfficientNet`` for a plain float ``candidate``."""
    from functools import partial

    from timm.layers import get_act_layer
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models._efficientnet_builder import round_channels as timm_round_channels

    return dict(
        block_args=decode_arch_def(arch_def(space, candidate)),
        stem_size=space.network.stem_channels,
        fix_stem=False,
        num_features=head_channels(space, candidate.width_mult),
        in_chans=space.dataset.in_chans,
        num_classes=space.dataset.num_classes,
        round_chs_fn=partial(timm_round_channels, multiplier=candidate.width_mult),
        act_layer=get_act_layer("relu6"),
    )


def build_timm_model(space: SearchSpace, candidate: Candidate) -> EfficientNet:
    """A freshly initialised float timm ``EfficientNet`` of ``candidate`` (``timm.create_model`` rejects
    ``block_args``, so the class is constructed directly)."""
    from timm.models.efficientnet import EfficientNet

    return EfficientNet(**timm_kwargs(space, candidate))

