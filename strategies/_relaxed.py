"""The supernet under relaxed choices: a masked single path over the largest shapes, and multi-branch formats.

:class:`RelaxedSupernet` computes the supernet on a ``[rows, width]`` table of choice weights, one row per
decision of a :class:`~strategies._archparams.DecisionTable`. Every layer runs once, at its largest shape (the
supernet's allocation), and every choice enters as a weighted sum *inside* the computation, where a choice
actually differs from its alternatives:

* kernel: the depthwise weight is ``sum_k w(k) * pad(Q(W[centre k]))``, each window quantized on its own and
  zero-padded to the largest kernel (the "superkernel" of Single-Path NAS, Stamoulis et al., 2019);
* channels (width, expansion): every layer computes all the channels it has room for, with the real shared
  weights, and a channel choice enters at exactly one place per layer: the (quantized) input of each
  non-depthwise layer is multiplied by ``sum_c w(c) * 1[channel < in_ch(c)]`` (the channel masks of FBNetV2,
  Wan et al., 2020). The channels a narrower choice does not read are therefore real features that are zeroed,
  so the gradient sees what reading them would change. A choice that entered at two places (say, zero-padded
  weight rows and a masked input) would have a zero first-order effect: each place is switched off by the other;
* depth: the stage's output is ``sum_d w(d) * x_d``, ``x_d`` the output of its first ``d`` blocks; a block's
  skip connection is weighted by the widths under which timm gives it one;
* formats: ``single_path`` mixes the quantized weights, ``sum_f w(f) * Q_f(W)``, and the quantized inputs,
  ``sum_a w(a) * Q_a(x)`` (EdMIPS's composite convolution, Cai & Vasconcelos, CVPR 2020); the input mixture is
  recomputed in the backward pass instead of stored, so memory stays that of training the largest subnet.
  ``multi_branch`` (the DNAS reference) computes one output per ``(w_fmt, a_fmt)`` pair and mixes the outputs,
  which stores every branch: the memory single-path search avoids.

With one-hot weights the result is the candidate's own subnet (up to float summation order, and except that an
OCP MX *activation* format on a layer whose input width varies shares its block scales with channels that are
zeroed afterwards; the final candidates are scored exactly by the estimator); with Gumbel-softmax
straight-through samples (one-hot in value) the forward pass is that subnet and the backward pass gives every
choice the first-order effect of switching to it. That matters under batch norm in training mode: a gate that
only scales the chosen path's output gets no gradient once a batch norm follows, because the norm divides any
scale away; the difference between two choices' weights or inputs does not vanish.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from automq.space.space import BLOCK_LAYERS

if TYPE_CHECKING:
    from automq.model.arch import LayerSpec
    from automq.model.elastic import ElasticQuantLayer
    from automq.strategies._archparams import DecisionTable, LayerVariants
    from automq.model.supernet import Supernet

RELAXATIONS = ("single_path", "multi_branch")
FORMAT_KINDS = ("w_fmt", "a_fmt")


class RelaxedSupernet:
    """Computes ``supernet`` under relaxed choice weights; see the module docstring.

    Args:
        supernet: the (copied) supernet whose weights, quantizers and batch norms are used.
        table: the decisions whose rows the weights follow.
        relaxation: ``"single_path"`` or ``"multi_branch"``.
    """

    def __init__(self, supernet: Supernet, table: DecisionTable, *, relaxation: str = "single_path") -> None:
        if relaxation not in RELAXATIONS:
            raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")
        self.supernet, self.table, self.relaxation = supernet, table, relaxation
        self.layers = supernet.quant_layers()
        self.variants = table.variants
        # Rows whose weights a multi-branch relaxation uses as output-mixing probabilities.
        self.mixed_rows = table.rows_where(FORMAT_KINDS) if relaxation == "multi_branch" else \
            torch.zeros(table.shape[0], dtype=torch.bool)

    def __call__(self, images: Tensor, weights: Tensor) -> Tensor:
        """Logits of ``images`` under choice ``weights`` (``[rows, width]``, each row summing to 1)."""
        net, space = self.supernet, self.table.space
        x = net.bn1(self._layer("conv_stem", images, weights))
        for i, (stage, spec) in enumerate(zip(net.blocks, space.network.stages)):
            outputs = [x]
            for j, block in enumerate(stage):
                prefix = f"blocks.{i}.{j}"
                out = x
                for k, conv in enumerate(BLOCK_LAYERS[spec.type]):
                    out = getattr(block, f"bn{k + 1}")(self._layer(f"{prefix}.{conv}", out, weights))
                x = out + self._skip(prefix, spec.type, x, out, weights)
                outputs.append(x)
            x = self._depth(i, outputs, weights)
        x = net.bn2(self._layer("conv_head", x, weights))
        # timm's SelectAdaptivePool2d('avg', flatten=True), as Supernet.forward
        return self._layer("classifier", F.adaptive_avg_pool2d(x, 1).flatten(1), weights)

    # ------------------------------------------------------------------------------------------ choice weights
    def _format_weights(self, layer: str, kind: str, menu: Sequence[str], weights: Tensor) -> list[Tensor | float]:
        row = self.table.index.get(f"{layer}.{kind}")
        return [1.0] if row is None else [weights[row, n] for n in range(len(menu))]

    def _kernel_weights(self, layer: str, largest: LayerSpec, weights: Tensor) -> list[tuple[int, Tensor | float]]:
        row = self.table.index.get(f"{layer.rsplit('.', 1)[0]}.kernel_size") if layer.endswith(".conv_dw") else None
        if row is None:
            return [(largest.kernel_size, 1.0)]
        return [(k, weights[row, n]) for n, k in enumerate(self.table.decisions[row].choices)]

    def _width_weights(self, weights: Tensor) -> list[tuple[int, Tensor | float]]:
        row = self.table.index.get("width_mult")
        if row is None:
            return [(0, 1.0)]
        return [(n, weights[row, n]) for n in range(len(self.table.decisions[row].choices))]

    def _depth(self, stage: int, outputs: list[Tensor], weights: Tensor) -> Tensor:
        row = self.table.index.get(f"stages.{stage}.depth")
        if row is None:
            return outputs[-1]
        return sum(weights[row, n] * outputs[d] for n, d in enumerate(self.table.decisions[row].choices))

    def _skip(self, prefix: str, block_type: str, x: Tensor, out: Tensor, weights: Tensor) -> Tensor | float:
        """timm's residual rule under each width: a skip when the block's stride is 1 and its input and output
        widths agree (the channels beyond them are never read downstream)."""
        if self.variants[f"{prefix}.conv_dw"].largest.stride != 1:
            return 0.0
        first, last = (self.variants[f"{prefix}.{conv}"] for conv in (BLOCK_LAYERS[block_type][0],
                                                                       BLOCK_LAYERS[block_type][-1]))
        row = self.table.index.get("width_mult")
        skip = sum(weight for choice, weight in self._width_weights(weights)
                   if _at_width(first, row, choice).in_ch == _at_width(last, row, choice).out_ch)
        return skip * _fit_channels(x, out.shape[1]) if skip else 0.0

    # ------------------------------------------------------------------------------------------ one layer
    def _layer(self, name: str, x: Tensor, weights: Tensor) -> Tensor:
        layer, variants = self.layers[name], self.variants[name]
        largest = variants.largest
        shapes = [(spec, _product(weights[r, c] for r, c in zip(variants.rows, combo)))
                  for combo, spec in variants.specs.items()]
        chosen = variants.specs[tuple(int(weights[row].detach().argmax()) for row in variants.rows)]
        mask = None
        if not largest.depthwise and len({spec.in_ch for spec, _ in shapes}) > 1:
            # The one place where a channel choice enters: zero the input channels the chosen width does not
            # read (a depthwise layer's extra channels only reach its own extra outputs, which the next layer
            # masks). Applied after quantization, because an unsigned quantizer passes no gradient at 0.
            mask = sum(weight * _channel_mask(spec.in_ch, x) for spec, weight in shapes)
        w_menu, a_menu = self.table.space.layer_menu(name)
        kernels = self._kernel_weights(name, largest, weights)
        quantized = [sum(weight * _pad_kernel(_quantized_weight(layer, largest, k, chosen.in_ch, fmt),
                                              largest.kernel_size) for k, weight in kernels) for fmt in w_menu]
        w_weights = self._format_weights(name, "w_fmt", w_menu, weights)
        a_weights = self._format_weights(name, "a_fmt", a_menu, weights)
        if self.relaxation == "multi_branch":
            return sum(pw * pa * layer.forward_quantized(_mix_inputs(layer.a_quant, [a], [1.0], mask)(x), w, largest)
                       for pw, w in zip(w_weights, quantized) for pa, a in zip(a_weights, a_menu))
        weight = sum(pw * w for pw, w in zip(w_weights, quantized))
        mixed = _mix_inputs(layer.a_quant, a_menu, a_weights, mask)
        # Recomputed in the backward pass: storing the per-format copies (and the unmasked input) would
        # multiply activation memory; this way only x is kept, as a plain layer keeps its quantized input.
        inputs = checkpoint(mixed, x, use_reentrant=False) if len(a_menu) > 1 or mask is not None else mixed(x)
        return layer.forward_quantized(inputs, weight, largest)


def _product(factors: Iterable[Tensor]) -> Tensor | float:
    result: Tensor | float = 1.0
    for factor in factors:
        result = result * factor
    return result


def _quantized_weight(layer: ElasticQuantLayer, largest: LayerSpec, kernel: int, in_ch: int, fmt: str) -> Tensor:
    """``fmt``-quantized weight of the ``kernel`` window over the largest channel extents. The columns the
    chosen width reads are quantized as that sub-layer quantizes them (OCP MX blocks run along the input
    channels, so they depend on the width); the others as in the largest layer, to carry the gradient."""
    spec = dataclasses.replace(largest, kernel_size=kernel)
    full = layer.w_quant(layer.weight_of(spec), fmt)
    if largest.depthwise or in_ch == largest.in_ch:
        return full
    read = layer.w_quant(layer.weight_of(dataclasses.replace(spec, in_ch=in_ch)), fmt)
    return torch.cat([read, full[:, in_ch:]], dim=1)


def _mix_inputs(quantize: Callable[[Tensor, str], Tensor], menu: Sequence[str], weights: Sequence[Tensor | float],
                mask: Tensor | None) -> Callable[[Tensor], Tensor]:
    """``x -> sum_a w(a) * Q_a(x)``, times the channel mask when there is one."""
    def mixed(x: Tensor) -> Tensor:
        out = sum(weight * quantize(x, fmt) for weight, fmt in zip(weights, menu))
        return out if mask is None else out * mask

    return mixed


def _at_width(variants: LayerVariants, row: int | None, choice: int) -> LayerSpec:
    """A layer's shape under one width choice (the block's input and output widths depend on nothing else)."""
    if row is None or row not in variants.rows:
        return variants.largest
    position = variants.rows.index(row)
    return next(spec for combo, spec in variants.specs.items() if combo[position] == choice)


def _pad_kernel(weight: Tensor, kernel: int) -> Tensor:
    """Zero-pad a conv weight's window to ``kernel`` x ``kernel``, centred (a linear weight is returned as is)."""
    pad = (kernel - weight.shape[-1]) // 2 if weight.ndim == 4 else 0
    return F.pad(weight, (pad, pad, pad, pad)) if pad else weight


def _fit_channels(x: Tensor, channels: int) -> Tensor:
    """``x`` with its channel axis cut or zero-padded to ``channels``."""
    if x.shape[1] >= channels:
        return x[:, :channels]
    return F.pad(x, (0, 0, 0, 0, 0, channels - x.shape[1]))


def _channel_mask(channels: int, x: Tensor) -> Tensor:
    """1 on the leading ``channels`` of ``x``'s channel axis, 0 after, shaped to broadcast against ``x``."""
    mask = (torch.arange(x.shape[1], device=x.device) < channels).to(x.dtype)
    return mask.reshape(1, -1, *([1] * (x.ndim - 2)))
