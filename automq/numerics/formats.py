"""Numeric formats: one registry entry per name, each a pure fake-quantization function with STE gradients.

Families (``NumericFormat.family``):

* ``int``      -- ``int2`` ... ``int8``: uniform grid times a learned LSQ scale (per-channel for weights,
  per-tensor for activations), signed ``[-2^(b-1), 2^(b-1)-1]`` or unsigned ``[0, 2^b-1]``.
* ``float``    -- OCP FP8/FP6/FP4 elements times a learned scale (round-to-nearest-even, subnormals,
  saturation); ``fp16``/``bf16`` round through the torch dtype and have no scale.
* ``mx``       -- OCP Microscaling: 32-element blocks along the reduction axis share a power-of-two E8M0
  scale, so there is nothing to learn.
* ``identity`` -- ``fp32``: the unquantized reference.

Every computation runs in float32. Element rounding is one generic routine for all OCP float elements; it
uses exponent-bit arithmetic instead of ``frexp``/``log2``, which are 10-60x slower than an add on CPU.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "E2M1",
    "E2M3",
    "E3M2",
    "E4M3",
    "E5M2",
    "CastFormat",
    "Element",
    "FixedPointElement",
    "FloatElement",
    "FloatFormat",
    "IntFormat",
    "MXFormat",
    "NumericFormat",
    "format_names",
    "format_table",
    "get_format",
    "register_format",
]

_EXP_MASK = 0x7F800000  # float32 exponent field
_MIN_SCALE = 1e-12  # keeps a learned scale that SGD drove to <= 0 usable
# Clipping ratios (of amax) tried by the MSE scale search: 16 steps of 2^(-1/4), from 1 down to ~0.07.
_CLIP_RATIOS = tuple(2.0 ** (-k / 4) for k in range(16))


# --------------------------------------------------------------------------------------------- elements
class Element(ABC):
    """The element grid of a format, before any scale: rounding (nearest, ties to even) with saturation.

    Rounding works in place on float32 tensors because every extra temporary the size of an activation
    costs a memory pass on the training hot path.
    """

    bits: int
    max_value: float  # largest finite element

    @property
    @abstractmethod
    def min_positive(self) -> float:
        """Smallest positive element (subnormal where the element has them)."""

    @property
    def emax(self) -> int:
        """Exponent of the largest element, the ``emax_elem`` of the OCP MX spec."""
        return math.floor(math.log2(self.max_value))

    @property
    @abstractmethod
    def label(self) -> str:
        """Short name of the grid, e.g. ``E4M3``."""

    @abstractmethod
    def round_(self, y: Tensor) -> Tensor:
        """Round float32 ``y`` in place to the nearest element, saturating at the range ends; returns ``y``."""

    def round(self, y: Tensor) -> Tensor:
        """:meth:`round_` on a copy of ``y``."""
        return self.round_(y.clone())


@dataclass(frozen=True)
class FloatElement(Element):
    """An OCP-style sign/exponent/mantissa element without inf/NaN encodings ("FN"), e.g. E4M3, E2M1."""

    exp_bits: int
    man_bits: int
    max_value: float  # a field: "FN" formats choose it (E4M3 is 448, not 480)

    @property
    def bits(self) -> int:  # type: ignore[override]
        return 1 + self.exp_bits + self.man_bits

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number (1 - bias)."""
        return 2 - 2 ** (self.exp_bits - 1)

    @property
    def min_positive(self) -> float:
        return 2.0 ** (self.emin - self.man_bits)

    @property
    def label(self) -> str:
        return f"E{self.exp_bits}M{self.man_bits}"

    def round_(self, y: Tensor) -> Tensor:
        return self._round_in_range_(y.clamp_(-self.max_value, self.max_value))

    def _round_in_range_(self, y: Tensor) -> Tensor:
        """:meth:`round_` for ``y`` already inside ``[-max_value, max_value]``.

        With ``e = max(exponent(y), emin)`` the grid step is ``2^(e - M)``. Adding and subtracting
        ``c = 1.5 * 2^23 * step`` makes the float32 adder round ``y`` to a multiple of that step, half to
        even, because ``c`` is an even multiple of it and ``y + c`` stays inside ``c``'s binade. This is
        exact, and 4 cheap passes where ``frexp`` alone costs 15 on CPU.
        """
        magic = y.view(torch.int32) & _EXP_MASK
        magic.clamp_(min=(self.emin + 127) << 23)  # below emin the step stays the subnormal step
        magic += ((23 - self.man_bits) << 23) + (1 << 22)
        magic = magic.view(torch.float32)
        return y.add_(magic).sub_(magic)


@dataclass(frozen=True)
class FixedPointElement(Element):
    """A two's-complement integer element with an implicit scale ``2^-frac_bits`` (OCP MXINT8: 8, 6)."""

    bits: int
    frac_bits: int

    @property
    def max_value(self) -> float:
        return (2 ** (self.bits - 1) - 1) * 2.0**-self.frac_bits

    @property
    def min_value(self) -> float:
        return -(2 ** (self.bits - 1)) * 2.0**-self.frac_bits

    @property
    def min_positive(self) -> float:
        return 2.0**-self.frac_bits

    @property
    def label(self) -> str:
        return f"INT{self.bits} x 2^-{self.frac_bits}"

    def round_(self, y: Tensor) -> Tensor:
        unit = 2.0**self.frac_bits
        return y.clamp_(self.min_value, self.max_value).mul_(unit).round_().div_(unit)


# --------------------------------------------------------------------------------------------- autograd
class _LsqFakeQuant(torch.autograd.Function):
    """``s * round(clamp(x / s, lo, hi))`` with the LSQ gradients (Esser et al., 2020).

    ``scale`` is ``[1]`` (per tensor) or ``[C]`` (per slice of axis 0). With ``y = x / s`` and "inside"
    meaning ``lo < y < hi``: d/dx is 1 inside and 0 outside; d/ds is ``round(y) - y`` inside and the clamp
    bound outside, times ``grad_factor``.

    On CPU a fresh activation-sized tensor costs several times an in-place pass (page faults), so the
    forward pass allocates only its output and the backward pass only ``grad_x``; both read ``x`` and the
    output, which autograd keeps alive anyway.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        scale: Tensor,
        lo: float,
        hi: float,
        round_: Callable[[Tensor], Tensor],
        grad_factor: float,
    ) -> Tensor:
        # Clamping here rather than in autograd: an SGD step may push a scale to <= 0, and the clamp must not
        # add backward nodes to every call.
        s = scale.clamp_min(_MIN_SCALE).view([-1] + [1] * (x.dim() - 1))
        out = round_((x * s.reciprocal()).clamp_(lo, hi)).mul_(s)
        if any(ctx.needs_input_grad[:2]):
            ctx.save_for_backward(x, out, s)
            ctx.bounds, ctx.grad_factor = (lo, hi), grad_factor
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, out, s = ctx.saved_tensors
        lo, hi = ctx.bounds
        if s.numel() == 1:  # compare x with scaled bounds rather than materialise x / s
            grad_x = torch.ops.aten.hardtanh_backward(grad, x, lo * s.item(), hi * s.item())
        else:
            grad_x = torch.ops.aten.hardtanh_backward(grad, x / s, lo, hi)
        grad_scale = None
        if ctx.needs_input_grad[1]:
            # sum(grad * (q - y * inside)) = (sum(grad * out) - sum(grad_x * x)) / s: two read-only passes.
            s = s.reshape(-1)
            grad_scale = _row_dot(grad, out, len(s)).sub_(_row_dot(grad_x, x, len(s)))
            grad_scale = grad_scale.div_(s).mul_(ctx.grad_factor)
        return grad_x, grad_scale, None, None, None, None


def _row_dot(a: Tensor, b: Tensor, rows: int) -> Tensor:
    """Dot products of the ``rows`` rows of ``a`` and ``b`` viewed as ``[rows, -1]``."""
    if rows == 1:  # the per-tensor case: torch.dot is a single pass, vecdot multiplies then sums
        return torch.dot(a.reshape(-1), b.reshape(-1)).reshape(1)
    return torch.linalg.vecdot(a.reshape(rows, -1), b.reshape(rows, -1))


class _StraightThrough(torch.autograd.Function):
    """``fn(x)`` in the forward pass, the identity in the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:  # type: ignore[override]
        return fn(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


def _check_axis(name: str, axis: int | None) -> None:
    if axis not in (None, 0):
        raise ValueError(f"{name}: axis must be 0 (per output channel) or None (per tensor), not {axis}")


def _rows(x: Tensor, axis: int | None) -> Tensor:
    """``x`` as ``[channels, -1]`` (per-channel along axis 0) or ``[1, -1]`` (per-tensor)."""
    return x.reshape(1 if axis is None else x.shape[0], -1)


def _nonzero(amax: Tensor) -> Tensor:
    """``amax`` with zeros replaced by 1, so all-zero channels still get a usable scale."""
    return torch.where(amax > 0, amax, torch.ones_like(amax))


# --------------------------------------------------------------------------------------------- formats
@dataclass(frozen=True)
class NumericFormat(ABC):
    """A named numeric format: fake quantization (forward rounding, STE backward) plus its cost in bits.

    ``axis`` is the channel axis of a per-channel scale (weights: 0) or ``None`` for a per-tensor scale
    (activations); MX formats use it to tell weights (blocks along the flattened ``in*kh*kw`` of each
    output row) from activations (blocks along the channel axis 1).
    """

    family: ClassVar[str]
    learnable_scale: ClassVar[bool] = False

    name: str
    bits: int

    @property
    def bits_per_element(self) -> float:
        """Storage cost per element, including any amortised shared scale."""
        return float(self.bits)

    @property
    def is_identity(self) -> bool:
        """True when ``quantize`` returns its input unchanged, so callers may skip it entirely."""
        return False

    @property
    @abstractmethod
    def max_value(self) -> float:
        """Largest finite element value (in units of the scale for scaled formats)."""

    @property
    @abstractmethod
    def min_positive(self) -> float:
        """Smallest positive element value, subnormal where the format has them."""

    @property
    @abstractmethod
    def notes(self) -> str:
        """One line on the grid, scale and rounding, for ``automq formats``."""

    @abstractmethod
    def quantize(
        self, x: Tensor, scale: Tensor | None = None, *, signed: bool = True, axis: int | None = None
    ) -> Tensor:
        """Fake-quantize ``x`` (same shape and dtype back) with straight-through gradients."""

    def init_scale(self, x: Tensor, *, signed: bool = True, axis: int | None = None) -> Tensor:
        """Data-driven initial scale, ``[x.shape[0]]`` (axis 0) or ``[1]``; ``learnable_scale`` formats only."""
        raise TypeError(f"format {self.name!r} ({self.family}) has no learnable scale to initialise")

    def describe(self) -> dict[str, Any]:
        """Summary row for ``automq formats`` and the docs."""
        return {
            "name": self.name,
            "family": self.family,
            "bits": self.bits,
            "bits_per_element": self.bits_per_element,
            "max": self.max_value,
            "min_positive": self.min_positive,
            "notes": self.notes,
        }


@dataclass(frozen=True)
class _ScaledFormat(NumericFormat):
    """Elements times a learned scale ``s``: LSQ gradients, gradient scale ``1/sqrt(N * Qp)``."""

    learnable_scale: ClassVar[bool] = True

    @abstractmethod
    def bounds(self, signed: bool) -> tuple[float, float]:
        """Clamp range of ``x / s``: the lowest and the highest element of the grid."""

    @abstractmethod
    def _round_(self, y: Tensor) -> Tensor:
        """Round already-clamped ``x / s`` to the element grid, in place."""

    def quantize(
        self, x: Tensor, scale: Tensor | None = None, *, signed: bool = True, axis: int | None = None
    ) -> Tensor:
        """``s * round(clamp(x / s))``; ``scale=None`` uses :meth:`init_scale` of ``x`` (no gradient)."""
        _check_axis(self.name, axis)
        if scale is None:
            scale = self.init_scale(x, signed=signed, axis=axis)
        rows = 1 if axis is None else x.shape[0]
        if scale.shape != (rows,):
            raise ValueError(
                f"{self.name}: scale has shape {tuple(scale.shape)} but x of shape {tuple(x.shape)} needs "
                f"({rows},) (axis={axis}); slice the scale to the channels in use"
            )
        lo, hi = self.bounds(signed)
        grad_factor = 1.0 / math.sqrt(max(x.numel() // rows, 1) * hi)
        out = _LsqFakeQuant.apply(x.float(), scale.float(), lo, hi, self._round_, grad_factor)
        return out.to(x.dtype)


@dataclass(frozen=True)
class IntFormat(_ScaledFormat):
    """Uniform integer grid times a learned scale; the scale is initialised by an MSE search."""

    family: ClassVar[str] = "int"

    def bounds(self, signed: bool) -> tuple[float, float]:
        if signed:
            return -(2.0 ** (self.bits - 1)), 2.0 ** (self.bits - 1) - 1
        return 0.0, 2.0**self.bits - 1

    def _round_(self, y: Tensor) -> Tensor:
        return y.round_()

    @property
    def max_value(self) -> float:
        return self.bounds(signed=True)[1]

    @property
    def min_positive(self) -> float:
        return 1.0

    @property
    def notes(self) -> str:
        lo, hi = self.bounds(signed=True)
        return (
            f"integers [{lo:.0f}, {hi:.0f}] (signed) or [0, {2**self.bits - 1}] (unsigned, post-ReLU) times "
            "a learned LSQ scale; per-channel for weights, per-tensor for activations"
        )

    def init_scale(self, x: Tensor, *, signed: bool = True, axis: int | None = None) -> Tensor:
        """The scale among ``amax * r / Qp`` (16 clipping ratios ``r``) with the least squared error.

        Never worse in squared error than the LSQ paper's ``2 mean|x| / sqrt(Qp)``, whose int8 step is several
        times too coarse for Gaussian data; all-zero channels get the scale of ``amax = 1``.
        """
        _check_axis(self.name, axis)
        rows = _rows(x.detach().float(), axis)
        lo, hi = self.bounds(signed)
        amax = _nonzero((rows.abs() if signed else rows.clamp_min(0)).amax(1))
        best_scale, best_err = amax / hi, torch.full_like(amax, math.inf)
        for ratio in _CLIP_RATIOS:
            scale = amax * (ratio / hi)
            q = torch.round((rows / scale[:, None]).clamp_(lo, hi)).mul_(scale[:, None])
            err = q.sub_(rows).square_().sum(1)
            better = err < best_err
            best_scale, best_err = torch.where(better, scale, best_scale), torch.where(better, err, best_err)
        return best_scale


@dataclass(frozen=True)
class FloatFormat(_ScaledFormat):
    """OCP FP8/FP6/FP4 elements times a learned scale, initialised so ``amax`` maps to the element max."""

    family: ClassVar[str] = "float"

    element: FloatElement

    def bounds(self, signed: bool) -> tuple[float, float]:
        return -self.element.max_value, self.element.max_value

    def _round_(self, y: Tensor) -> Tensor:
        return self.element._round_in_range_(y)

    @property
    def max_value(self) -> float:
        return self.element.max_value

    @property
    def min_positive(self) -> float:
        return self.element.min_positive

    @property
    def notes(self) -> str:
        e = self.element
        return (
            f"{e.label} (bias {1 - e.emin}, subnormals, no inf/NaN, saturating) times a "
            "learned scale; round to nearest even"
        )

    def init_scale(self, x: Tensor, *, signed: bool = True, axis: int | None = None) -> Tensor:
        """``amax / max_value`` so the largest magnitude lands on the largest element."""
        _check_axis(self.name, axis)
        return _nonzero(_rows(x.detach().float(), axis).abs().amax(1)) / self.element.max_value


@dataclass(frozen=True)
class MXFormat(NumericFormat):
    """OCP Microscaling: blocks of ``block_size`` elements share a power-of-two (E8M0) scale.

    The shared exponent is ``floor(log2(amax_block)) - emax_elem`` clamped to ``[-127, 127]``; elements are
    rounded to nearest even and saturate. A partial last block is its own block (zero padding does not
    change its amax).
    """

    family: ClassVar[str] = "mx"

    element: Element
    block_size: int = 32

    @property
    def bits_per_element(self) -> float:
        return self.bits + 8 / self.block_size

    @property
    def max_value(self) -> float:
        return self.element.max_value

    @property
    def min_positive(self) -> float:
        return self.element.min_positive

    @property
    def notes(self) -> str:
        return (
            f"OCP MX: {self.element.label} elements, blocks of {self.block_size} along the reduction axis "
            f"share an E8M0 scale 2^(floor(log2 amax) - {self.element.emax}); values shown before that scale"
        )

    def _blocks(self, x: Tensor, axis: int | None) -> tuple[Tensor, int]:
        """``x`` viewed as ``[rows, n_blocks, block_size, *rest]`` (zero padded), and the padding added."""
        _check_axis(self.name, axis)
        if x.dim() < 2:
            raise ValueError(f"{self.name}: needs at least 2 dims to find the block axis, got {tuple(x.shape)}")
        rows = x.reshape(x.shape[0], -1) if axis == 0 else x
        pad = -rows.shape[1] % self.block_size
        if pad:
            rows = F.pad(rows, [0, 0] * (rows.dim() - 2) + [0, pad])
        return rows.unflatten(1, (-1, self.block_size)), pad

    def shared_exponents(self, x: Tensor, *, axis: int | None = None) -> Tensor:
        """Shared E8M0 exponent of every block, int32 of shape ``[rows, n_blocks, 1, *rest]``."""
        blocks, _ = self._blocks(x.detach().float(), axis)
        return self._exponents(blocks)

    def _exponents(self, blocks: Tensor) -> Tensor:
        low, high = torch.aminmax(blocks, dim=2, keepdim=True)  # one pass, no |x| temporary
        amax = torch.maximum(high, low.neg_())
        # The float32 exponent field is floor(log2 amax) + 127 for normal amax; 0 (zero, subnormal) ends up
        # below -127 and is clamped there, as the spec's log2(0) = -inf would be.
        field = (amax.view(torch.int32) & _EXP_MASK) >> 23
        return (field - (127 + self.element.emax)).clamp_(-127, 127)

    def _fake_quantize(self, x: Tensor, axis: int | None) -> Tensor:
        blocks, pad = self._blocks(x.float(), axis)
        exponents = self._exponents(blocks).float()
        q = self.element.round_(blocks * torch.exp2(-exponents)).mul_(torch.exp2(exponents))
        q = q.flatten(1, 2)
        if pad:
            q = q[:, : q.shape[1] - pad]
        return q.reshape(x.shape).to(x.dtype)

    def quantize(
        self, x: Tensor, scale: Tensor | None = None, *, signed: bool = True, axis: int | None = None
    ) -> Tensor:
        """Block-scaled rounding; the gradient passes straight through. ``scale`` must be ``None``."""
        if scale is not None:
            raise ValueError(f"{self.name}: MX formats derive their block scales from x; pass scale=None")
        return _StraightThrough.apply(x, lambda t: self._fake_quantize(t, axis))


@dataclass(frozen=True)
class CastFormat(NumericFormat):
    """A torch floating dtype used as is: round through ``dtype``, no scale (``fp16``, ``bf16``, ``fp32``)."""

    # A field here, not a class constant: fp32 is "identity", fp16/bf16 are "float".
    family: str = field(default="float", kw_only=True)  # type: ignore[misc]
    dtype: torch.dtype = field(default=torch.float32, kw_only=True)

    @property
    def is_identity(self) -> bool:
        return self.dtype == torch.float32

    @property
    def max_value(self) -> float:
        return float(torch.finfo(self.dtype).max)

    @property
    def min_positive(self) -> float:
        return float(torch.finfo(self.dtype).smallest_normal) * float(torch.finfo(self.dtype).eps)

    @property
    def notes(self) -> str:
        if self.is_identity:
            return "IEEE float32, no quantization (the reference)"
        return f"torch.{str(self.dtype).removeprefix('torch.')} round trip (nearest even, overflow to inf)"

    def quantize(
        self, x: Tensor, scale: Tensor | None = None, *, signed: bool = True, axis: int | None = None
    ) -> Tensor:
        """``x`` rounded through ``dtype``; the gradient passes straight through."""
        if scale is not None:
            raise ValueError(f"{self.name}: cast formats have no scale; pass scale=None")
        if self.is_identity:
            return x
        return _StraightThrough.apply(x, lambda t: t.to(self.dtype).to(t.dtype))


# --------------------------------------------------------------------------------------------- registry
_REGISTRY: dict[str, NumericFormat] = {}


def register_format(fmt: NumericFormat) -> NumericFormat:
    """Add ``fmt`` under ``fmt.name``; a name can be registered once."""
    if fmt.name in _REGISTRY:
        raise ValueError(f"numeric format {fmt.name!r} is already registered; choose another name")
    _REGISTRY[fmt.name] = fmt
    return fmt


def get_format(name: str) -> NumericFormat:
    """The registered format called ``name``; ``KeyError`` listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown numeric format {name!r}; known formats: {', '.join(_REGISTRY)}") from None


def format_names() -> list[str]:
    """Registered names in registry order: int2..int8, fp8/fp6/fp4, mx*, fp16, bf16, fp32."""
    return list(_REGISTRY)


def format_table() -> list[dict[str, Any]]:
    """``describe()`` of every registered format, in registry order (printed by ``automq formats``)."""
    return [fmt.describe() for fmt in _REGISTRY.values()]


E4M3 = FloatElement(4, 3, 448.0)
E5M2 = FloatElement(5, 2, 57344.0)
E3M2 = FloatElement(3, 2, 28.0)
E2M3 = FloatElement(2, 3, 7.5)
E2M1 = FloatElement(2, 1, 6.0)


def _register_builtin_formats() -> None:
    for bits in (2, 3, 4, 5, 6, 8):
        register_format(IntFormat(f"int{bits}", bits))
    for name, element in (
        ("fp8_e4m3", E4M3), ("fp8_e5m2", E5M2), ("fp6_e3m2", E3M2), ("fp6_e2m3", E2M3), ("fp4_e2m1", E2M1)
    ):  # fmt: skip
        register_format(FloatFormat(name, element.bits, element))
    for name, element in (("mxfp8_e4m3", E4M3), ("mxfp6_e3m2", E3M2), ("mxfp4_e2m1", E2M1)):
        register_format(MXFormat(name, element.bits, element))
    register_format(MXFormat("mxint8", 8, FixedPointElement(8, 6)))
    register_format(CastFormat("fp16", 16, family="float", dtype=torch.float16))
    register_format(CastFormat("bf16", 16, family="float", dtype=torch.bfloat16))
    register_format(CastFormat("fp32", 32, family="identity", dtype=torch.float32))


_register_builtin_formats()
