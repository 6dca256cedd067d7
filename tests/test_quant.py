"""Quantizer and the quantized layers: per-format scales, slicing, persistence, extraction, module swapping."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from automq.numerics.formats import get_format
from automq.numerics.quant import (QuantConv2d, QuantLinear, Quantizer, dequantize_, quantize_modules_,
                                  scales_restored)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_switching_formats_keeps_separate_scales():
    quant = Quantizer(["int4", "int8", "fp8_e4m3", "mxfp4_e2m1"], channels=None, signed=True)
    x = torch.randn(2, 8, 4, 4, generator=_gen())
    outs = {fmt: quant(x, fmt) for fmt in quant.formats}
    assert set(quant.scales) == {"int4", "int8", "fp8_e4m3"}  # MX has nothing to learn
    for fmt in ("int4", "int8", "fp8_e4m3"):  # each scale initialised from the data in its own format
        torch.testing.assert_close(quant.scales[fmt].detach(), get_format(fmt).init_scale(x))
        assert torch.equal(outs[fmt], get_format(fmt).quantize(x, quant.scales[fmt].detach()))
    assert len({tuple(out.flatten().tolist()) for out in outs.values()}) == 4
    with torch.no_grad():
        quant.scales["int4"].mul_(3)
    assert torch.equal(quant(x, "int8"), outs["int8"]) and not torch.equal(quant(x, "int4"), outs["int4"])
    with pytest.raises(KeyError, match="not in this quantizer's menu"):
        quant(x, "int2")


def test_scales_receive_gradients_only_for_the_active_format():
    conv = QuantConv2d(4, 6, 3, padding=1, w_formats=["int4", "fp8_e4m3"], a_formats=["int8", "fp4_e2m1"])
    conv.set_formats("fp8_e4m3", "int8")
    conv(torch.randn(2, 4, 5, 5, generator=_gen())).square().sum().backward()
    w_grad, a_grad = conv.w_quant.scales["fp8_e4m3"].grad, conv.a_quant.scales["int8"].grad
    assert w_grad.shape == (6,) and bool((w_grad != 0).all()) and a_grad.shape == (1,) and a_grad.item() != 0
    assert conv.w_quant.scales["int4"].grad is None and conv.a_quant.scales["fp4_e2m1"].grad is None
    assert conv.weight.grad is not None


def test_per_channel_scales_slice_to_leading_channels():
    quant = Quantizer(["int8"], channels=8, signed=True)
    w = torch.randn(8, 3, 3, 3, generator=_gen(1))
    small = quant(w[:4], "int8")  # an elastic layer using its first 4 output channels
    assert torch.equal(quant.initialised_int8, torch.tensor([True] * 4 + [False] * 4))
    expected_scale = get_format("int8").init_scale(w[:4], axis=0)
    assert torch.equal(quant.scales["int8"].detach()[:4], expected_scale)
    assert torch.equal(small, get_format("int8").quantize(w[:4], expected_scale, axis=0))
    quant(w * 10, "int8")  # the full width: only the 4 new channels are initialised, from this tensor
    assert torch.equal(quant.scales["int8"].detach()[:4], expected_scale)
    assert torch.equal(quant.scales["int8"].detach()[4:], get_format("int8").init_scale(w * 10, axis=0)[4:])
    with pytest.raises(ValueError, match="9 channels"):
        quant(torch.randn(9, 3, 3, 3), "int8")


@pytest.mark.parametrize("fmt, top", [("int8", 255.0), ("int4", 15.0), ("fp8_e4m3", 448.0)])
def test_a_scale_learned_past_the_input_s_bound_is_used_as_ending_there(fmt, top):
    """An unsigned ReLU6 output never exceeds 6: with ``input_max=6`` a learned scale whose grid would end above 6
    quantizes as the scale ending at 6 (by hand: ``6 / top``), and one ending below 6 is left alone."""
    quant = Quantizer([fmt], channels=None, signed=False, input_max=6.0)
    x = torch.rand(4, 8, 5, 5, generator=_gen(3)) * 6
    with torch.no_grad():
        quant.scales[fmt].fill_(6.05 / top)
        quant.get_buffer(f"initialised_{fmt}").fill_(True)
    cap = torch.tensor([6.0 / top])
    assert torch.equal(quant.scale(fmt), cap)
    assert torch.equal(quant(x, fmt), get_format(fmt).quantize(x, cap, signed=False))
    assert float(quant(x, fmt).detach().max()) <= 6.0
    assert torch.equal(quant.extract(fmt)(x, fmt), quant(x, fmt))  # the exported layer keeps the cap
    quant(x, fmt).sum().backward()  # the cap is a constraint: no gradient pushes the parameter back below it
    assert quant.scales[fmt].grad.item() == 0.0
    with torch.no_grad():
        quant.scales[fmt].fill_(5.0 / top)
    assert torch.equal(quant.scale(fmt), torch.tensor([5.0 / top]))
    assert torch.equal(quant(x, fmt), get_format(fmt).quantize(x, torch.tensor([5.0 / top]), signed=False))


def test_an_uncapped_quantizer_uses_its_learned_scale_and_a_bad_cap_is_refused():
    quant = Quantizer(["int8"], channels=None, signed=False)
    with torch.no_grad():
        quant.scales["int8"].fill_(0.1)
    assert torch.equal(quant.scale("int8"), torch.tensor([0.1]))
    with pytest.raises(KeyError, match="no learned scale"):
        Quantizer(["mxint8"], channels=None, signed=False).scale("mxint8")
    with pytest.raises(ValueError, match="input_max must be positive"):
        Quantizer(["int8"], channels=None, signed=False, input_max=0.0)


def test_scales_restored_undoes_initialisation_and_changes_inside_the_block():
    model = nn.Sequential(QuantConv2d(3, 4, 3, w_formats=["int4", "int8"], a_formats=["int8"]))
    x = torch.randn(2, 3, 5, 5, generator=_gen(2))
    model[0].set_formats("int8", "int8")
    model(x)  # int8 initialised before the block, int4 not
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with scales_restored(model):
        model[0].set_formats("int4", "int8")
        inside = model(x)
        assert bool(model[0].w_quant.initialised_int4.all())
        with torch.no_grad():
            model[0].w_quant.scales["int8"].mul_(2)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert not bool(model[0].w_quant.initialised_int4.any())
    assert torch.equal(model(x), inside)  # initialised again from the same tensor: the same result


def test_state_dict_round_trip_keeps_learned_scales():
    quant = Quantizer(["int4", "fp8_e5m2"], channels=None, signed=False)
    quant(torch.rand(16, 8), "int4")
    buffer = io.BytesIO()
    torch.save(quant.state_dict(), buffer)
    buffer.seek(0)
    restored = Quantizer(["int4", "fp8_e5m2"], channels=None, signed=False)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.initialised_int4.item() and not restored.initialised_fp8_e5m2.item()
    other = torch.rand(16, 8) * 5  # re-initialising from this tensor would give a different scale
    assert torch.equal(restored(other, "int4"), quant(other, "int4"))


@pytest.mark.parametrize("fmt", ["int4", "fp4_e2m1", "mxint8", "bf16"])
def test_extract_gives_identical_outputs(fmt):
    quant = Quantizer(["int8", fmt], channels=8, signed=True)
    w = torch.randn(8, 4, 3, 3, generator=_gen(2))
    quant(w, fmt)
    single = quant.extract(fmt, channels=5)
    assert single.formats == (fmt,) and single.channels == 5
    assert torch.equal(single(w[:5], fmt), quant(w[:5], fmt))
    assert all(fmt in key for key in single.state_dict())
    with pytest.raises(ValueError, match="cannot extract 9 channels"):
        quant.extract(fmt, channels=9)


def test_quant_layers_from_float_and_identity_cost_nothing():
    conv, linear = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False), nn.Linear(7, 4)
    qconv = QuantConv2d.from_float(conv, w_formats=["fp32", "int4"], a_formats=["fp32", "int8"])
    qlinear = QuantLinear.from_float(linear, w_formats=["fp32", "fp8_e4m3"], a_formats=["fp32"])
    x, v = torch.randn(2, 3, 8, 8, generator=_gen(3)), torch.randn(6, 7, generator=_gen(4))
    assert torch.equal(qconv(x), conv(x)) and torch.equal(qlinear(v), linear(v))
    assert qconv.a_quant(x, "fp32") is x
    qconv.set_formats("int4", "int8")
    qlinear.set_formats("fp8_e4m3", "fp32")
    out = qconv(x)  # initialises both scales from this call's data
    w_q = get_format("int4").quantize(conv.weight, get_format("int4").init_scale(conv.weight, axis=0), axis=0)
    x_q = get_format("int8").quantize(x, get_format("int8").init_scale(x))
    torch.testing.assert_close(out, nn.functional.conv2d(x_q, w_q, stride=2, padding=1))
    assert not torch.equal(qlinear(v), linear(v))
    assert "w_fmt=fp8_e4m3" in repr(qlinear)
    with pytest.raises(KeyError, match="'int2' is not in this quantizer's menu"):
        qconv.set_formats("int2", "int8")


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, bias=True, padding_mode="reflect"), (2, 4, 9, 9)),
    (nn.Linear(5, 3, bias=False, dtype=torch.float64), (2, 5)),
])
def test_from_float_keeps_every_hyperparameter(layer, shape):
    quant = (QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear).from_float(
        layer, w_formats=["fp32"], a_formats=["fp32"])
    assert quant.extra_repr() == f"{layer.extra_repr()}, w_fmt=fp32, a_fmt=fp32"  # every torch hyper-parameter
    x = torch.randn(shape, generator=_gen(5), dtype=layer.weight.dtype)
    assert torch.equal(quant(x), layer(x)) and quant.weight.dtype == layer.weight.dtype
    assert quant.w_quant.channels == layer.weight.shape[0]


class _Conv2dSubclass(nn.Conv2d):
    """Stands in for timm's Conv2dSame, whose forward must not be replaced."""


def test_quantize_modules_swaps_plain_conv_and_linear():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU6(), _Conv2dSubclass(4, 4, 1), nn.Flatten(), nn.Sequential(nn.Linear(144, 10))
    )
    x = torch.randn(2, 1, 8, 8, generator=_gen(5))
    reference = model(x)
    replaced = quantize_modules_(model, "fp32", "fp32")
    assert replaced == ["0", "4.0"]
    assert isinstance(model[0], QuantConv2d) and isinstance(model[4][0], QuantLinear)
    assert type(model[2]) is _Conv2dSubclass
    assert torch.equal(model(x), reference)
    assert quantize_modules_(model[4], "int4", "int4") == []  # already quantized layers are left alone
    for module in (model[0], model[4][0]):
        module.set_formats("fp32", "fp32")
    assert torch.equal(model(x), reference)
    with pytest.raises(KeyError, match="unknown numeric format"):
        quantize_modules_(model, "int7", "int8")


def test_dequantize_computes_the_float_layers_and_keeps_no_scales():
    """The float network of a quantized model: its outputs are those of the plain torch layers it was made from
    (torch computes them, bit for bit), its state has no quantizer entries, and the ReLU6 cap and signedness of each
    activation quantizer survive for a later quantized copy."""
    conv, linear = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 6 * 6, 5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU6(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    model[0].load_state_dict(conv.state_dict())
    model[3].load_state_dict(linear.state_dict())
    quantize_modules_(model, "int4", "int8")
    model[3].a_quant = Quantizer(["int8"], channels=None, signed=False, input_max=6.0)
    x = torch.randn(2, 3, 6, 6, generator=_gen(6))
    reference = linear(nn.functional.relu6(conv(x)).flatten(1))
    assert not torch.equal(model(x), reference)  # quantized: int4 weights move the outputs
    assert dequantize_(model) == 2
    assert torch.equal(model(x), reference)
    assert [k for k in model.state_dict() if "quant" in k] == []
    assert (model[0].w_fmt, model[0].a_fmt, model[0].w_quant.channels) == ("fp32", "fp32", 4)
    assert (model[3].a_quant.signed, model[3].a_quant.input_max) == (False, 6.0)
