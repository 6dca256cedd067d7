"""Numeric formats against independent references: torch float8 casts, ml_dtypes casts, the OCP tables,
hand-computed MX exponents and LSQ gradients, and torch's own learnable fake-quantization kernels."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from automq.numerics.formats import (
    FloatFormat,
    IntFormat,
    MXFormat,
    NumericFormat,
    format_names,
    format_table,
    get_format,
    register_format,
)

FLOAT8 = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
SUBBYTE = {"fp6_e3m2": ml_dtypes.float6_e3m2fn, "fp6_e2m3": ml_dtypes.float6_e2m3fn, "fp4_e2m1": ml_dtypes.float4_e2m1fn}
MX_ELEMENTS = {"mxfp8_e4m3": ml_dtypes.float8_e4m3fn, "mxfp6_e3m2": ml_dtypes.float6_e3m2fn, "mxfp4_e2m1": ml_dtypes.float4_e2m1fn}
OCP_E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def _grid_with_midpoints(values: np.ndarray, max_value: float) -> torch.Tensor:
    """Every representable value, every exact tie between neighbours, and values past the max (saturation)."""
    pos = np.unique(np.abs(values[np.isfinite(values)]).astype(np.float64))
    mids = (pos[:-1] + pos[1:]) / 2
    beyond = max_value * np.array([1.01, 1.0625, 1.5, 2.0, 1e3])
    quarter = pos[:-1] + (pos[1:] - pos[:-1]) / 4  # not ties: exercise plain nearest rounding too
    mags = np.concatenate([pos, mids, quarter, beyond])
    return torch.from_numpy(np.concatenate([mags, -mags])).float()


def _random_spread(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=gen) * torch.exp2(torch.randint(-24, 24, (n,), generator=gen).float())


# ----------------------------------------------------------------------------------------------- registry
def test_registry_order_and_lookup():
    assert format_names() == [
        "int2", "int3", "int4", "int5", "int6", "int8",
        "fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1",
        "mxfp8_e4m3", "mxfp6_e3m2", "mxfp4_e2m1", "mxint8",
        "fp16", "bf16", "fp32",
    ]  # fmt: skip
    with pytest.raises(KeyError, match="unknown numeric format 'int7'.*int8"):
        get_format("int7")
    with pytest.raises(ValueError, match="already registered"):
        register_format(IntFormat("int8", 8))


def test_describe_matches_reference_dtypes():
    table = {row["name"]: row for row in format_table()}
    assert list(table) == format_names()
    for name, dtype in {**SUBBYTE, "fp8_e4m3": ml_dtypes.float8_e4m3fn, "fp8_e5m2": ml_dtypes.float8_e5m2}.items():
        info = ml_dtypes.finfo(dtype)
        assert table[name]["max"] == float(info.max)
        assert table[name]["min_positive"] == float(info.smallest_subnormal)
    for name, dtype in {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.items():
        assert table[name]["max"] == torch.finfo(dtype).max
    assert table["mxfp4_e2m1"]["bits_per_element"] == 4.25 and table["mxint8"]["bits_per_element"] == 8.25
    assert table["mxint8"]["max"] == 127 / 64 and table["mxint8"]["min_positive"] == 1 / 64
    assert table["int4"]["max"] == 7 and table["int4"]["bits_per_element"] == 4.0
    assert {row["family"] for row in table.values()} == {"int", "float", "mx", "identity"}
    assert all(set(row) == {"name", "family", "bits", "bits_per_element", "max", "min_positive", "notes"} for row in table.values())


# ------------------------------------------------------------------------------------------ scaled floats
@pytest.mark.parametrize("name", FLOAT8)
def test_fp8_equals_torch_cast(name):
    fmt = get_format(name)
    table = torch.arange(256, dtype=torch.uint8).view(FLOAT8[name]).float().numpy()
    x = torch.cat([_grid_with_midpoints(table, fmt.max_value), _random_spread(4000)])
    ref = x.clamp(-fmt.max_value, fmt.max_value).to(FLOAT8[name]).float()
    assert torch.equal(fmt.quantize(x, torch.ones(1)), ref)
    # A non-power-of-two scale: rounding happens on x * (1 / s), then scales back.
    s = torch.tensor([0.37])
    ref = (x * (1 / s)).clamp(-fmt.max_value, fmt.max_value).to(FLOAT8[name]).float() * s
    assert torch.equal(fmt.quantize(x, s), ref)


@pytest.mark.parametrize("name", SUBBYTE)
def test_fp6_fp4_equal_ml_dtypes_cast(name):
    fmt = get_format(name)
    dtype = SUBBYTE[name]
    table = np.arange(2 ** fmt.bits, dtype=np.uint8).view(dtype).astype(np.float32)
    x = torch.cat([_grid_with_midpoints(table, fmt.max_value), _random_spread(4000, seed=1)])
    ref = x.clamp(-fmt.max_value, fmt.max_value).numpy().astype(dtype).astype(np.float32)
    assert torch.equal(fmt.quantize(x, torch.ones(1)), torch.from_numpy(ref))


def test_fp4_e2m1_is_the_ocp_table():
    table = torch.tensor(OCP_E2M1 + [-v for v in OCP_E2M1])
    x = torch.linspace(-8, 8, 4001)
    q = get_format("fp4_e2m1").quantize(x, torch.ones(1))
    assert set(q.tolist()) == set(table.tolist())
    distance = (x[:, None] - table[None, :]).abs()
    assert torch.equal((q - x).abs(), distance.min(1).values)  # always a nearest table value


def test_float_scale_init_maps_amax_to_max():
    x = torch.randn(6, 4, 3, 3) * torch.arange(1, 7).view(6, 1, 1, 1)
    fmt = get_format("fp8_e4m3")
    scale = fmt.init_scale(x, axis=0)
    torch.testing.assert_close(scale * fmt.max_value, x.abs().flatten(1).amax(1))
    torch.testing.assert_close(fmt.quantize(x, scale, axis=0).abs().flatten(1).amax(1), x.abs().flatten(1).amax(1))


# ---------------------------------------------------------------------------------------------- integers
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_int_on_grid_with_clipping(bits, signed):
    fmt = get_format(f"int{bits}")
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    x = torch.randn(4, 3, 5, 5) * 3
    scale = torch.tensor([0.05, 0.1, 0.5, 2.0])
    q = fmt.quantize(x, scale, signed=signed, axis=0)
    s = scale.view(4, 1, 1, 1)
    levels = q / s
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
    assert levels.round().min() >= lo and levels.round().max() <= hi
    expected = torch.round(x * (1 / s)).clamp(lo, hi) * s  # brute force nearest level, clipped
    assert torch.equal(q, expected)


def test_int_init_is_mse_optimal_among_simple_choices():
    x = torch.randn(8, 16, 3, 3, generator=torch.Generator().manual_seed(0))
    for name in ("int2", "int4", "int8"):
        fmt = get_format(name)
        qp = fmt.max_value

        def mse(scale: torch.Tensor) -> float:
            return float((fmt.quantize(x, scale, axis=0) - x).square().mean())

        chosen = mse(fmt.init_scale(x, axis=0))
        assert chosen <= mse(x.abs().flatten(1).amax(1) / qp) + 1e-12  # no clipping
        assert chosen <= mse(2 * x.abs().flatten(1).mean(1) / math.sqrt(qp))  # the LSQ paper's init


def test_unsigned_int_clips_negatives_and_all_zero_channel_is_safe():
    fmt = get_format("int4")
    x = torch.tensor([[-1.0, 0.0, 0.3, 2.0], [0.0, 0.0, 0.0, 0.0]])
    scale = fmt.init_scale(x, signed=False, axis=0)
    assert scale[1] > 0
    q = fmt.quantize(x, scale, signed=False, axis=0)
    assert q[0, 0] == 0 and torch.equal(q[1], torch.zeros(4))


# -------------------------------------------------------------------------------------------- LSQ grads
def lsq_grad_tolerance(upstream: list[float], y: list[float], dq_ds: list[float], denominator: float) -> float:
    """Float32 error bound of ``sum(upstream * dq_ds) / denominator`` against the decimal inputs: each
    ``y = x / s`` carries two roundings (x's representation and the division, eps/2 each of |y|), and each
    product and partial sum one more (eps/2 of |dq_ds|)."""
    eps = torch.finfo(torch.float32).eps
    return eps * sum(abs(g) * (abs(v) + abs(d)) for g, v, d in zip(upstream, y, dq_ds)) / denominator


def test_lsq_gradient_by_hand_int4():
    x = torch.tensor([0.3, -1.7, 2.6, 9.0, -5.0], requires_grad=True)
    s = torch.tensor([0.5], requires_grad=True)
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    q = get_format("int4").quantize(x, s)
    # y = x/s = [0.6, -3.4, 5.2, 18, -10] -> round/clip to [1, -3, 5, 7, -8]; the last two are clipped.
    assert q.tolist() == [0.5, -1.5, 2.5, 3.5, -4.0]  # multiples of 0.5: exact in float32
    q.backward(upstream)
    assert x.grad.tolist() == [1.0, 2.0, 3.0, 0.0, 0.0]
    dq_ds = [1 - 0.6, -3 + 3.4, 5 - 5.2, 7.0, -8.0]  # round(y) - y inside, the bound outside
    expected = sum(g * d for g, d in zip(upstream.tolist(), dq_ds)) / math.sqrt(5 * 7)
    tolerance = lsq_grad_tolerance(upstream.tolist(), [0.6, 3.4, 5.2, 18, 10], dq_ds, math.sqrt(5 * 7))
    assert s.grad.item() == pytest.approx(expected, abs=tolerance)


def test_lsq_gradient_by_hand_fp4():
    x = torch.tensor([0.3, -1.3, 2.6, 5.0], requires_grad=True)
    s = torch.tensor([0.5], requires_grad=True)
    get_format("fp4_e2m1").quantize(x, s).backward(torch.ones(4))
    # y = [0.6, -2.6, 5.2, 10] -> [0.5, -3, 6, 6 (saturated)]
    expected = ((0.5 - 0.6) + (-3 + 2.6) + (6 - 5.2) + 6.0) / math.sqrt(4 * 6)
    tolerance = lsq_grad_tolerance([1.0] * 4, [0.6, 2.6, 5.2, 10], [-0.1, -0.4, 0.8, 6.0], math.sqrt(4 * 6))
    assert s.grad.item() == pytest.approx(expected, abs=tolerance)
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("per_channel", [False, True])
def test_lsq_matches_torch_learnable_fake_quant(per_channel):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, 3, 3, generator=gen) * 2
    upstream = torch.randn(x.shape, generator=gen)
    scale = torch.tensor([0.02, 0.05, 0.1, 0.3]) if per_channel else torch.tensor([0.07])
    fmt, qmin, qmax = get_format("int4"), -8, 7
    # torch masks on round(x/s), the LSQ paper (and automq) on x/s: they differ within half a step outside
    # the clipping range, so keep the data out of those two bands.
    y = x / (scale.view(-1, 1, 1, 1) if per_channel else scale)
    x[((y > qmax) & (y < qmax + 0.5)) | ((y < qmin) & (y > qmin - 0.5))] = 0.0
    grad_factor = 1.0 / math.sqrt(x[0].numel() * qmax if per_channel else x.numel() * qmax)

    ours_x, ours_s = x.clone().requires_grad_(), scale.clone().requires_grad_()
    fmt.quantize(ours_x, ours_s, axis=0 if per_channel else None).backward(upstream)
    ref_x, ref_s = x.clone().requires_grad_(), scale.clone().requires_grad_()
    zero = torch.zeros_like(scale)
    if per_channel:
        ref = torch._fake_quantize_learnable_per_channel_affine(ref_x, ref_s, zero, 0, qmin, qmax, grad_factor)
    else:
        ref = torch._fake_quantize_learnable_per_tensor_affine(ref_x, ref_s, zero, qmin, qmax, grad_factor)
    ref.backward(upstream)
    torch.testing.assert_close(fmt.quantize(x, scale, axis=0 if per_channel else None), ref.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours_x.grad, ref_x.grad)
    torch.testing.assert_close(ours_s.grad, ref_s.grad, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------------ MX
def _hand_exponent(block: np.ndarray, emax: int) -> int:
    amax = float(np.abs(block).max())
    unclamped = -math.inf if amax == 0 else math.floor(math.log2(amax)) - emax
    return int(min(max(unclamped, -127), 127))


def _mx_weight_input() -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(6, 72, generator=gen) * torch.exp2(torch.randint(-10, 10, (6, 1), generator=gen).float())
    w[1, :32] = 0.0  # all-zero block -> exponent -127
    w[2, 32:64] = 1e-39  # float32 subnormal block -> clamps at -127
    w[3, 0] = 3e38  # huge block
    w[4, 5] = 4.0  # exact power of two as the block max
    w[4, 6:32] = 0.001
    return w


@pytest.mark.parametrize("name", [*MX_ELEMENTS, "mxint8"])
def test_mx_shared_exponent_by_hand(name):
    fmt = get_format(name)
    w = _mx_weight_input()
    got = fmt.shared_exponents(w, axis=0).squeeze(2)  # [rows, blocks]
    wp = np.pad(w.numpy(), ((0, 0), (0, 96 - 72)))  # the last block has 8 elements plus padding
    expected = [[_hand_exponent(wp[r, b * 32 : (b + 1) * 32], fmt.element.emax) for b in range(3)] for r in range(6)]
    assert got.tolist() == expected
    assert expected[1][0] == -127 and expected[2][1] == -127


@pytest.mark.parametrize("name", [*MX_ELEMENTS, "mxint8"])
def test_mx_equals_elementwise_reference(name):
    fmt = get_format(name)
    w = _mx_weight_input()
    e = fmt.shared_exponents(w, axis=0).squeeze(2).repeat_interleave(32, dim=1)[:, :72].double().numpy()
    y = np.clip(w.double().numpy() / 2.0**e, -fmt.max_value, fmt.max_value)
    if name == "mxint8":  # two's complement int8 with implicit scale 2^-6; np.round is half to even
        elements = np.clip(np.round(y * 64), -128, 127) / 64
    else:
        elements = y.astype(MX_ELEMENTS[name]).astype(np.float64)
    expected = torch.from_numpy(elements * 2.0**e).float()
    assert torch.equal(fmt.quantize(w.view(6, 8, 3, 3), axis=0), expected.view(6, 8, 3, 3))


def test_mx_activation_blocks_run_along_channels():
    fmt = get_format("mxfp4_e2m1")
    x = torch.randn(2, 40, 3, 3, generator=torch.Generator().manual_seed(7))  # 40 channels: a partial block
    rows = x.permute(0, 2, 3, 1).reshape(-1, 40)  # one row per pixel, blocks along its channels
    expected = fmt.quantize(rows, axis=0).reshape(2, 3, 3, 40).permute(0, 3, 1, 2)
    assert torch.equal(fmt.quantize(x), expected)


# ------------------------------------------------------------------------------------------ every format
def _scale_for(fmt: NumericFormat, x: torch.Tensor, axis: int | None) -> torch.Tensor | None:
    return fmt.init_scale(x, axis=axis) if fmt.learnable_scale else None


@pytest.mark.parametrize("name", format_names())
@pytest.mark.parametrize("axis", [0, None])
def test_idempotent_finite_and_shape(name, axis):
    fmt = get_format(name)
    x = torch.randn(8, 40, 3, 3, generator=torch.Generator().manual_seed(11)) * 50
    scale = _scale_for(fmt, x, axis)
    q = fmt.quantize(x, scale, axis=axis)
    assert q.shape == x.shape and q.dtype == x.dtype and torch.isfinite(q).all()
    assert torch.equal(fmt.quantize(q, scale, axis=axis), q)
    if fmt.is_identity:
        assert q is x
    elif fmt.bits <= 8:
        assert not torch.equal(q, x)


@pytest.mark.parametrize("name", format_names())
def test_straight_through_gradient(name):
    fmt = get_format(name)
    x = torch.randn(4, 32, 2, 2, generator=torch.Generator().manual_seed(13)).requires_grad_()
    scale = _scale_for(fmt, x, None)
    upstream = torch.randn(x.shape)
    fmt.quantize(x, scale).backward(upstream)
    if fmt.learnable_scale:  # pass-through inside the clipping range, zero outside
        lo, hi = fmt.bounds(True)
        y = x.detach() / scale
        expected = upstream * ((y > lo) & (y < hi))
    else:
        expected = upstream
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_cast_formats_round_through_dtype(name):
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[name]
    x = _random_spread(2000).clamp(-6e4, 6e4)
    assert torch.equal(get_format(name).quantize(x), x.to(dtype).float())


def test_misuse_is_rejected():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="scale has shape"):
        get_format("int8").quantize(x, torch.ones(3), axis=0)
    with pytest.raises(ValueError, match="axis must be 0"):
        get_format("int8").quantize(x, torch.ones(8), axis=1)
    with pytest.raises(ValueError, match="pass scale=None"):
        get_format("mxint8").quantize(x, torch.ones(1))
    with pytest.raises(TypeError, match="no learnable scale"):
        get_format("mxfp4_e2m1").init_scale(x)
    assert isinstance(get_format("fp8_e4m3"), FloatFormat) and isinstance(get_format("mxint8"), MXFormat)
