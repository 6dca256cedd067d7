"""Analytic costs of a candidate: MACs, parameters, BitOps, weight bytes, peak activation bytes, energy, latency.

Every number is a sum (or, for activations, a maximum) over the quantized layers of
:func:`automq.model.arch.layer_specs`, one image at a time. The rules:

* **macs**: conv ``out_hw^2 * out_ch * in_ch / groups * k^2``; linear ``in * out``.
* **params**: conv and linear weights plus the classifier bias. BatchNorm is not counted: at deployment it
  folds into the preceding conv's weights and a per-channel bias.
* **bitops**: ``macs * bits(w_fmt) * bits(a_fmt)`` with ``bits`` = :attr:`NumericFormat.bits_per_element`
  (so MX formats pay their shared E8M0 scale, 8 bits per block of 32).
* **size_bytes** (weight memory): per layer ``weights * bits(w_fmt)`` + ``out_ch * 16`` bits of per-channel
  fp16 scales when ``w_fmt`` has a learned scale (int and scaled float formats; MX scales are already in
  ``bits_per_element``; fp16/bf16/fp32 casts have none) + ``out_ch * 32`` bits of int32/fp32 bias (the folded
  BN shift, or the classifier's bias); divided by 8.
* **peak_act_bytes**: the largest ``(input + output elements) * bits(a_fmt) / 8`` over the layers, i.e. the
  memory one layer needs to read its input and write its output, both held in that layer's activation format
  (a residual shortcut kept alive across a block is not counted).
* **energy_uj**: compute energy, ``macs * (multiply + add)`` per layer from an :class:`EnergyTable`
  (default :data:`HOROWITZ_45NM`); the scaling rules are on :class:`EnergyTable`. Memory traffic is not
  included (see ``size_bytes`` and ``peak_act_bytes``).
* **latency_ms**: only with a latency table: the sum of the per-layer entries keyed by :func:`latency_key`, plus
  the table's per-model overhead entry :data:`LATENCY_OVERHEAD_KEY` when it has one (``automq latency-table``
  writes it: what one inference costs beyond its layers).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from automq.errors import SpaceError
from automq.model.arch import LayerSpec, layer_specs
from automq.numerics.formats import FixedPointElement, FloatElement, NumericFormat, get_format
from automq.space.schema import shown, space_error

if TYPE_CHECKING:
    from automq.space.candidate import Candidate
    from automq.space.space import SearchSpace

__all__ = ["HOROWITZ_45NM", "METRIC_KEYS", "CostModel", "EnergyTable", "LayerCost", "check_budgets", "cost_range",
           "LATENCY_OVERHEAD_KEY", "format_bits", "integer_kernel", "latency_key", "load_latency_table"]

SCALE_BITS = 16  # one fp16 scale per output channel for learned-scale weight formats
BIAS_BITS = 32  # one int32 (or fp32) bias per output channel
# space-file metric name -> key of CostModel.costs()
METRIC_KEYS = {"macs": "macs", "params": "params", "bitops": "bitops", "size": "size_bytes",
               "peak_act": "peak_act_bytes", "energy": "energy_uj", "latency": "latency_ms"}


def format_bits(name: str) -> float:
    """Bits per element of a format, shared scales included (the unit of BitOps and weight size)."""
    return get_format(name).bits_per_element


@dataclass(frozen=True)
class EnergyTable:
    """Energy per arithmetic operation in pJ, with the rules that scale it to other widths.

    * Multiply. Both operands integer: array-multiplier energy grows with the product of the operand widths,
      so ``int8_mult * (bw * ba) / 64`` (or ``int32_mult * (bw * ba) / 1024`` above 8 x 8). Otherwise a float
      multiply whose cost is that of the significand product: significand widths ``s`` (mantissa + implicit
      1; ``bits - 1`` for an integer operand), ``fp16_mult * (sw * sa) / 121`` (or ``fp32_mult * (sw * sa)
      / 576`` above 11 x 11).
    * Add (accumulate). Integer products: an adder as wide as the exact sum,
      ``acc = min(32, bw + ba + ceil(log2(fan_in)))`` bits, costing ``int8_add * acc / 8`` (or
      ``int32_add * acc / 32`` above 8 bits). Float products accumulate in fp32 (as FP8 tensor cores do):
      ``fp32_add``.

    MX formats use their element widths (E2M1, E3M2, E4M3; MXINT8 as an 8-bit integer); the one shared-scale
    exponent add per block of 32 products is ignored.
    """

    int8_add: float
    int8_mult: float
    int32_add: float
    int32_mult: float
    fp16_add: float
    fp16_mult: float
    fp32_add: float
    fp32_mult: float

    def mult_pj(self, w_fmt: str, a_fmt: str) -> float:
        (w_kind, w_width), (a_kind, a_width) = _operand(get_format(w_fmt)), _operand(get_format(a_fmt))
        if w_kind == a_kind == "int":
            return _scaled(w_width * a_width, ((64, self.int8_mult), (1024, self.int32_mult)))
        w_sig = w_width if w_kind == "float" else w_width - 1
        a_sig = a_width if a_kind == "float" else a_width - 1
        return _scaled(w_sig * a_sig, ((121, self.fp16_mult), (576, self.fp32_mult)))

    def add_pj(self, w_fmt: str, a_fmt: str, fan_in: int) -> float:
        (w_kind, w_width), (a_kind, a_width) = _operand(get_format(w_fmt)), _operand(get_format(a_fmt))
        if w_kind == a_kind == "int":
            acc = min(32, w_width + a_width + math.ceil(math.log2(fan_in)))
            return _scaled(acc, ((8, self.int8_add), (32, self.int32_add)))
        return self.fp32_add

    def mac_pj(self, w_fmt: str, a_fmt: str, fan_in: int) -> float:
        """Energy of one multiply-accumulate of a layer whose outputs sum ``fan_in`` products."""
        return self.mult_pj(w_fmt, a_fmt) + self.add_pj(w_fmt, a_fmt, fan_in)


# Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm, 0.9 V.
HOROWITZ_45NM = EnergyTable(int8_add=0.03, int8_mult=0.2, int32_add=0.1, int32_mult=3.1,
                            fp16_add=0.4, fp16_mult=1.1, fp32_add=0.9, fp32_mult=3.7)


def _operand(fmt: NumericFormat) -> tuple[str, int]:
    """``("int", bits)`` or ``("float", significand bits)`` of a format's elements."""
    element = getattr(fmt, "element", None)
    if fmt.family == "int" or isinstance(element, FixedPointElement):
        return "int", fmt.bits
    if isinstance(element, FloatElement):
        return "float", element.man_bits + 1
    import torch  # cast formats (fp16, bf16, fp32): significand from the dtype

    return "float", round(-math.log2(torch.finfo(fmt.dtype).eps)) + 1


def _scaled(size: float, anchors: tuple[tuple[float, float], ...]) -> float:
    """Energy proportional to ``size`` from the smallest anchor ``(size, pJ)`` that is at least as large."""
    anchor_size, anchor_pj = next((a for a in anchors if size <= a[0]), anchors[-1])
    return anchor_pj * size / anchor_size


INTEGER_KERNEL_FORMAT = "int8"
INTEGER_KERNEL_SUFFIX = "/int8-out"


def integer_kernel(spec: LayerSpec) -> bool:
    """Whether the exported model runs ``spec`` as an integer conv (ONNX Runtime's ``QLinearConv``): int8 weights
    and input, and its output requantized to int8 right away by the layer that reads it
    (:mod:`automq.model.onnx_export` writes exactly these so, except where a ReLU6's bound 6 falls inside the
    next layer's learned int8 range and so changes codes: that conv stays in float, which only the trained scales
    tell, and the table prices it too low)."""
    return spec.kind == "conv" and spec.w_fmt == spec.a_fmt == spec.out_fmt == INTEGER_KERNEL_FORMAT


def latency_key(spec: LayerSpec) -> str:
    """Key of a layer in a latency table: ``{kind}/{in_ch}x{out_ch}/k{k}/s{stride}/g{groups}/hw{in_hw}/{w}/{a}``,
    e.g. ``conv/16x96/k1/s1/g1/hw16/int8/int8`` (``in_hw`` is the input height = width; 1 for linear), with
    :data:`INTEGER_KERNEL_SUFFIX` where the layer runs on an integer kernel (:func:`integer_kernel`)."""
    return (f"{spec.kind}/{spec.in_ch}x{spec.out_ch}/k{spec.kernel_size}/s{spec.stride}/g{spec.groups}/"
            f"hw{spec.in_hw}/{spec.w_fmt}/{spec.a_fmt}" + (INTEGER_KERNEL_SUFFIX if integer_kernel(spec) else ""))


LATENCY_OVERHEAD_KEY = "model/overhead"  # ms one inference costs beyond the sum of its layers (0 when absent)
MAX_LATENCY_TABLE_BYTES = 16 << 20  # 14x the table of every layer of spaces/mbv2_imagenet.yaml (24,034 keys, 1.2 MiB)


def load_latency_table(path: str | Path) -> dict[str, float]:
    """Read a ``{latency_key: milliseconds}`` JSON object; keys starting with ``_`` are comments/metadata.

    Like a space file it is read bounded: at most :data:`MAX_LATENCY_TABLE_BYTES`, duplicate keys refused (one
    would silently replace the other), numbers parsed as floats (a 5000-digit integer would make ``int()`` raise)
    and NaN or infinite entries refused."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_LATENCY_TABLE_BYTES + 1)  # one byte more tells a file at the limit from a longer one
    except OSError as exc:
        space_error(str(path), "", f"cannot read the latency table: {exc.strerror}; check the path")
    if len(raw) > MAX_LATENCY_TABLE_BYTES:
        space_error(str(path), "", f"larger than {MAX_LATENCY_TABLE_BYTES >> 20} MiB; check that this is the "
                    "latency table")
    try:
        data = json.loads(raw, parse_int=float, object_pairs_hook=lambda pairs: _unique_keys(pairs, path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        space_error(str(path), "", f"not a JSON latency table: {exc}; fix the JSON syntax")
    except RecursionError:  # json's decoder recurses per nesting level
        data = None
    if not isinstance(data, dict):
        space_error(str(path), "", "a latency table is one flat JSON object {layer key: milliseconds}")
    table = {}
    for key, value in data.items():
        if key.startswith("_"):
            continue
        if not isinstance(value, float) or not 0 <= value < math.inf:  # JSON true/false are bools, not floats
            space_error(str(path), f"entry {shown(key)}", f"expected a non-negative number of "
                        f"milliseconds, got {shown(value)}; measure the layer again or remove the entry")
        table[key] = value
    return table


def _unique_keys(pairs: list[tuple[str, object]], path: Path) -> dict[str, object]:
    """The JSON object of ``pairs``, refusing a key given twice (``json`` would keep the last silently)."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            space_error(str(path), f"entry {shown(key)}", "duplicate key; keep only one measurement per layer")
        seen.add(key)
    return dict(pairs)


@dataclass(frozen=True)
class LayerCost:
    """Costs of one layer; ``act_bytes`` is its input + output activation memory."""

    name: str
    macs: int
    params: int
    bitops: float
    size_bytes: float
    act_bytes: float
    energy_uj: float
    latency_ms: float | None


class CostModel:
    """Analytic cost model of a space's candidates (see the module docstring for every rule)."""

    def __init__(self, space: SearchSpace, *, energy_table: EnergyTable = HOROWITZ_45NM,
                 latency_table: Mapping[str, float] | str | Path | None = None) -> None:
        self.space = space
        self.energy_table = energy_table
        table = space.latency_table if latency_table is None else latency_table
        self._latency_source = str(table) if isinstance(table, (str, Path)) else "latency table"
        if isinstance(table, (str, Path)):
            table = load_latency_table(table)
        self.latency_table = dict(table) if table is not None else None

    def layer_cost(self, spec: LayerSpec) -> LayerCost:
        """Costs of one layer; with ``dataclasses.replace(spec, w_fmt=...)`` it prices any format choice."""
        w_fmt, a_fmt = get_format(spec.w_fmt), get_format(spec.a_fmt)
        w_bits, a_bits = w_fmt.bits_per_element, a_fmt.bits_per_element
        scale_bits = SCALE_BITS if w_fmt.learnable_scale else 0
        size_bits = spec.weight_numel * w_bits + spec.out_ch * (scale_bits + BIAS_BITS)
        return LayerCost(
            name=spec.name,
            macs=spec.macs,
            params=spec.params,
            bitops=spec.macs * w_bits * a_bits,
            size_bytes=size_bits / 8,
            act_bytes=(spec.in_numel + spec.out_numel) * a_bits / 8,
            energy_uj=spec.macs * self.energy_table.mac_pj(spec.w_fmt, spec.a_fmt, spec.fan_in) * 1e-6,
            latency_ms=self._latency(spec),
        )

    def _latency(self, spec: LayerSpec) -> float | None:
        if self.latency_table is None:
            return None
        key = latency_key(spec)
        if key not in self.latency_table and key.removesuffix(INTEGER_KERNEL_SUFFIX) in self.latency_table:
            raise SpaceError(f"{self._latency_source}: no integer-kernel entry for layer {spec.name} (key '{key}'): "
                             "the table predates the export's integer convs; rebuild it with automq latency-table")
        if key not in self.latency_table:
            raise SpaceError(f"{self._latency_source}: no entry for layer {spec.name} (key '{key}'); measure "
                             "this layer configuration and add it, or drop the latency metric")
        return self.latency_table[key]

    def layer_costs(self, candidate: Candidate) -> list[LayerCost]:
        """Per-layer costs in network order."""
        return [self.layer_cost(spec) for spec in layer_specs(self.space, candidate)]

    def costs(self, candidate: Candidate) -> dict[str, float]:
        """``macs, params, bitops, size_bytes, peak_act_bytes, energy_uj`` (and ``latency_ms`` with a table)."""
        return _total(self.layer_costs(candidate), self.latency_overhead)

    @property
    def latency_overhead(self) -> float | None:
        """The table's per-model overhead (0 for a table without one), or None without a table."""
        return None if self.latency_table is None else self.latency_table.get(LATENCY_OVERHEAD_KEY, 0.0)

    def metrics(self, candidate: Candidate) -> dict[str, float]:
        """The same costs keyed by the metric names of space files (``bitops, size, macs, ...``)."""
        costs = self.costs(candidate)
        return {metric: costs[key] for metric, key in METRIC_KEYS.items() if key in costs}

    def layer_macs(self, candidate: Candidate) -> dict[str, int]:
        """MACs per layer name, for expected-cost estimates of differentiable strategies."""
        return {spec.name: spec.macs for spec in layer_specs(self.space, candidate)}


def _total(layers: list[LayerCost], latency_overhead: float | None) -> dict[str, float]:
    """Sums (and the activation peak) over ``layers``; ``latency_ms`` too unless ``latency_overhead`` is None."""
    totals: dict[str, float] = {
        "macs": sum(c.macs for c in layers),
        "params": sum(c.params for c in layers),
        "bitops": sum(c.bitops for c in layers),
        "size_bytes": sum(c.size_bytes for c in layers),
        "peak_act_bytes": max(c.act_bytes for c in layers),
        "energy_uj": sum(c.energy_uj for c in layers),
    }
    if latency_overhead is not None:
        totals["latency_ms"] = latency_overhead + sum(c.latency_ms or 0.0 for c in layers)
    return totals


def cost_range(space: SearchSpace, model: CostModel | None = None) -> dict[str, tuple[float, float]]:
    """``{metric: (min, max)}`` over all candidates, keyed by space-file metric names.

    Every cost grows with depth, kernel, expansion and width, and each layer's format is chosen independently,
    so the minimum is the smallest architecture with, per layer, the menu's cheapest format *for that metric*
    (the fewest-bit format is not always the smallest once per-channel scales are counted), and the maximum
    the mirror image. Latency tables need not be monotone, so its range is only that of these two architectures.
    """
    model = model or CostModel(space)
    low = _extreme(model, space.smallest(), min)
    high = _extreme(model, space.largest(), max)
    return {metric: (low[key], high[key]) for metric, key in METRIC_KEYS.items() if key in low}


def check_budgets(space: SearchSpace) -> None:
    """Refuse a space whose hard budgets no candidate can meet (:class:`SpaceError` naming ``budgets.<metric>``).

    This is the one check of a space file that needs costs, so it lives here rather than in
    :mod:`automq.space.space` (costs sit above spaces); every entry point that reads a user's space file
    (the CLI, :func:`automq.search.driver.run_search`) calls it after :meth:`SearchSpace.from_file`.
    """
    if not space.budgets:
        return
    lowest = cost_range(space)
    for metric, limit in space.budgets.items():
        if metric in lowest and limit < lowest[metric][0]:
            space_error(space.source, f"budgets.{metric}",
                        f"{limit:g} is below the smallest candidate's {metric} ({lowest[metric][0]:g}); no "
                        f"candidate is feasible. Raise the budget to at least {lowest[metric][0]:g} or add "
                        "smaller choices to the space")


def _extreme(model: CostModel, arch: Candidate, choose: Callable) -> dict[str, float]:
    """Totals of ``arch`` when every layer takes, per cost, its cheapest (``min``) or dearest (``max``) formats."""
    options = [
        [model.layer_cost(dataclasses.replace(spec, w_fmt=w, a_fmt=a))
         for w, a in itertools.product(*model.space.layer_menu(spec.name))]
        for spec in layer_specs(model.space, arch)
    ]
    overhead = model.latency_overhead
    totals = {}
    for key in _total([costs[0] for costs in options], overhead):
        field = "act_bytes" if key == "peak_act_bytes" else key
        layers = [choose(costs, key=operator.attrgetter(field)) for costs in options]
        totals[key] = _total(layers, overhead)[key]
    return totals
