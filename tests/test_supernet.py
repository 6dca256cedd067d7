"""Tests for automq.model.supernet and automq.model.elastic: shapes against arch.layer_specs, exact equality with the exported
timm model, in-place switching, per-format scales, model files, BN recalibration and channel sorting."""

import dataclasses

import pytest
import torch
from torch import nn

from automq.model.arch import layer_specs
from automq.space.candidate import BlockChoice, Candidate
from automq.model.elastic import ElasticInvertedResidual
from automq.errors import CandidateError, CheckpointError, DataError
from automq.io import atomic_torch_save, safe_torch_load
from automq.numerics.quant import QuantConv2d, QuantLinear
from automq.model.supernet import (
    MODEL_FORMAT_VERSION,
    Supernet,
    load_model,
    recalibrate_bn,
    save_model,
    sort_channels_by_importance,
)

from _spaces import DS_STAGE, IR_STAGE

# At width 0.5 the ds stage maps 8 -> 8 channels (a residual appears) and at 1.0 16 -> 8 (none): the skip rule
# must follow the ACTIVE widths. The menus mix learned-scale int/float, MX and identity formats.
SPACE_CHANGES = {
    "name": "tiny_supernet",
    "dataset": {"in_chans": 3, "num_classes": 10},
    "network": {
        "stem": {"channels": 16},
        "stages": [
            DS_STAGE,
            {**IR_STAGE, "expand_ratio": [2, 4]},
            {"type": "ir", "channels": 24, "stride": 1, "depth": [1, 2], "kernel_size": [3, 5], "expand_ratio": [3, 6]},
        ],
    },
    "formats": {
        "weights": ["int4", "int8", "fp8_e4m3", "mxfp4_e2m1"],
        "activations": ["int8", "fp8_e4m3", "fp32"],
        "overrides": [{"layers": "conv_stem|classifier", "weights": ["int8"], "activations": ["int8"]}],
    },
    "objectives": [{"metric": "accuracy"}],
}
# The same network with per-channel weight formats only: channel sorting then changes nothing but the float
# summation order of conv_pwl, which an activation quantizer could turn into a flipped rounding step.
PER_CHANNEL = {"formats": {"weights": ["int4", "int8"], "activations": ["fp32"], "overrides": []}}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def space(tiny_space):
    return tiny_space(SPACE_CHANGES)


def images(n=4, seed=1):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def randomize_bn(model):
    """Non-trivial BN affine parameters, so copying them (or not) shows in the outputs."""
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)


def calibrated(space, *candidates):
    """A supernet whose quantizer scales (and BN statistics) were initialised from data for ``candidates``."""
    net = Supernet(space)
    randomize_bn(net)
    net.train()
    with torch.no_grad():
        for candidate in candidates:
            net.set_active(candidate)
            net(images(8, seed=2))
    return net.eval()


def candidates(space):
    return [space.smallest(), space.largest(), *(space.sample(seed) for seed in range(3))]


def with_formats(space, candidate, layer, w_fmt):
    choices = space.choices_of(candidate)
    choices[f"{layer}.w_fmt"] = w_fmt
    return space.candidate_from_choices(choices)


# ---------------------------------------------------------------------------------------------- construction
def test_allocates_the_largest_shapes_with_timm_init(space):
    net = Supernet(space)
    for spec in layer_specs(space, space.largest()):
        layer = net.get_submodule(spec.name)
        expected = (spec.out_ch, spec.in_ch) if spec.kind == "linear" else (
            spec.out_ch, spec.in_ch // spec.groups, spec.kernel_size, spec.kernel_size)
        assert tuple(layer.weight.shape) == expected
        assert layer.w_quant.channels == spec.out_ch and layer.a_quant.signed == spec.a_signed
        assert layer.a_quant.input_max == spec.a_max and layer.w_quant.input_max is None
    # timm's _init_weight_goog: N(0, 2 / fan_out), fan_out = k * k * out / groups; Linear U(+-1/sqrt(out)).
    head = net.conv_head.weight
    # the sample std of n normal draws has a relative standard error of 1 / sqrt(2 n): 5 of them
    assert head.std().item() == pytest.approx((2.0 / head.shape[0]) ** 0.5, rel=5 / (2 * head.numel()) ** 0.5)
    assert net.classifier.weight.abs().max().item() <= 1 / 10**0.5
    assert torch.equal(net.classifier.bias, torch.zeros(10))


def test_quant_layers_expose_names_formats_and_the_format_hook(space):
    net = calibrated(space, space.largest())
    layers = net.quant_layers()
    assert list(layers) == space.layer_names()
    assert all(layer.name == name for name, layer in layers.items())
    candidate = space.sample(5)
    net.set_active(candidate)
    for name, (w_fmt, a_fmt) in candidate.layer_formats().items():
        assert (layers[name].w_fmt, layers[name].a_fmt) == (w_fmt, a_fmt)

    layer = layers["blocks.1.0.conv_pwl"]
    x = torch.rand(2, layer.active.in_ch, 8, 8)
    other = "int4" if layer.w_fmt != "int4" else "int8"
    branch = layer.forward_formats(x, other, layer.a_fmt)
    torch.testing.assert_close(layer.forward_formats(x, layer.w_fmt, layer.a_fmt), layer(x), rtol=0, atol=0)
    net.set_active(with_formats(space, candidate, "blocks.1.0.conv_pwl", other))
    torch.testing.assert_close(branch, layer(x), rtol=0, atol=0)
    assert not torch.equal(branch, layer.forward_formats(x, candidate.layer_formats()[layer.name][0], layer.a_fmt))


# ---------------------------------------------------------------------------------------------- set_active
def test_set_active_round_trips_and_rejects_foreign_candidates(space):
    net = Supernet(space)
    assert net.active() == space.largest()
    candidate = space.sample(7)
    net.set_active(candidate)
    assert net.active() is candidate
    # stage 0 has depth choices [1]; two blocks there is not in the space
    bad = Candidate(candidate.width_mult, ((BlockChoice(3, 1),) * 2, *candidate.blocks[1:]), candidate.formats)
    with pytest.raises(CandidateError, match="stages.0.depth"):
        net.set_active(bad)
    assert net.active() is candidate


@pytest.mark.parametrize("seed", [None, 0, 1, 2, 3])
def test_slicing_produces_the_shapes_layer_specs_predicts(space, seed):
    candidate = space.smallest() if seed is None else space.sample(seed)
    net = Supernet(space)
    net.set_active(candidate)
    seen, weights = [], {}

    def record(module, args, output):
        seen.append((module.name, tuple(args[0].shape), tuple(output.shape)))

    def record_weight(name):
        def hook(module, args):
            weights.setdefault(name, tuple(args[0].shape))
        return hook

    for name, layer in net.quant_layers().items():
        layer.register_forward_hook(record)
        layer.w_quant.register_forward_pre_hook(record_weight(name))
    net.eval()(images(2))

    specs = layer_specs(space, candidate)
    expected = [(s.name, (2, s.in_ch, s.in_hw, s.in_hw), (2, s.out_ch, s.out_hw, s.out_hw)) for s in specs[:-1]]
    classifier = specs[-1]
    expected.append(("classifier", (2, classifier.in_ch), (2, classifier.out_ch)))
    assert seen == expected  # inactive blocks are skipped
    for s in specs[:-1]:
        assert weights[s.name] == (s.out_ch, s.in_ch // s.groups, s.kernel_size, s.kernel_size)


def test_smaller_kernels_are_the_centre_of_the_largest(space):
    net = Supernet(space)
    spec = next(s for s in layer_specs(space, space.largest()) if s.depthwise and s.kernel_size == 5)
    layer = net.get_submodule(spec.name)
    small = dataclasses.replace(spec, kernel_size=3)
    assert torch.equal(layer.weight_of(small), layer.weight[:, :, 1:4, 1:4])


def test_switching_candidates_allocates_nothing(space):
    net = Supernet(space).train()
    tensors = dict(net.named_parameters()) | dict(net.named_buffers())
    pointers = {name: t.data_ptr() for name, t in tensors.items()}
    for candidate in candidates(space):
        net.set_active(candidate)
        net(images(4)).sum().backward()  # also initialises the scales of new formats, in place
    after = dict(net.named_parameters()) | dict(net.named_buffers())
    assert {name: t.data_ptr() for name, t in after.items()} == pointers


def test_each_format_has_its_own_scale(space):
    int8 = space.uniform("int8", "int8", arch=space.largest(), clamp=True)
    int4 = space.uniform("int4", "int8", arch=space.largest(), clamp=True)
    layer = "blocks.1.0.conv_pw"
    assert int8.layer_formats()[layer][0] == "int8" and int4.layer_formats()[layer][0] == "int4"
    net = calibrated(space, int8)
    quant = net.get_submodule(layer).w_quant
    assert quant.initialised_int8.all() and not quant.initialised_int4.any()
    int8_scale = quant.scales["int8"].detach().clone()
    net.set_active(int4)
    net.train()(images())
    assert quant.initialised_int4.all()
    assert torch.equal(quant.scales["int8"], int8_scale)
    assert (quant.scales["int4"] > int8_scale).all()  # initialised for a coarser grid: a larger step

    net.eval().set_active(int8)
    reference = net(images())
    with torch.no_grad():
        quant.scales["int4"].mul_(3.0)
    torch.testing.assert_close(net(images()), reference, rtol=0, atol=0)
    with torch.no_grad():
        quant.scales["int8"].mul_(3.0)
    assert (net(images()) - reference).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("which", range(5))
def test_extracted_timm_model_computes_what_the_supernet_computes(space, which):
    from timm.models.efficientnet import EfficientNet

    candidate = candidates(space)[which]
    net = calibrated(space, candidate)
    model = net.extract(candidate)
    assert type(model) is EfficientNet and not model.training
    specs = {s.name: s for s in layer_specs(space, candidate)}
    quantized = {name: m for name, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}
    assert list(quantized) == list(specs)
    for name, module in quantized.items():
        assert (module.w_fmt, module.a_fmt) == (specs[name].w_fmt, specs[name].a_fmt)
        assert module.w_quant.formats == (specs[name].w_fmt,)
    x = images(4, seed=3)
    torch.testing.assert_close(model(x), net(x), rtol=0, atol=1e-5)
    assert net.active() == candidate  # extract does not switch the supernet


def test_extract_defaults_to_the_active_candidate_and_leaves_other_candidates_alone(space):
    small, large = space.smallest(), space.largest()
    net = calibrated(space, small, large)
    reference = net(images())
    net.set_active(small)
    model = net.extract()
    assert [n for n, m in model.named_modules() if isinstance(m, QuantConv2d)] == space.layer_names(small)[:-1]
    net.set_active(large)
    torch.testing.assert_close(net(images()), reference, rtol=0, atol=0)


def test_supernet_state_dict_round_trip_keeps_initialised_scales(space, tmp_path):
    candidate = space.sample(4)
    net = calibrated(space, candidate)
    atomic_torch_save(net.state_dict(), tmp_path / "supernet.pt")
    restored = Supernet(space)
    restored.load_state_dict(safe_torch_load(tmp_path / "supernet.pt"))
    restored.set_active(candidate)
    net.set_active(candidate)
    # An uninitialised scale would be re-initialised from these new images and change the output.
    torch.testing.assert_close(restored.eval()(images(seed=9)), net(images(seed=9)), rtol=0, atol=0)


def test_save_and_load_model_round_trip(space, tmp_path):
    candidate = space.sample(6)
    model = calibrated(space, candidate).extract(candidate)
    path = tmp_path / "model.pt"
    save_model(path, model, candidate, space)
    state = torch.load(path, weights_only=True)
    assert state["format_version"] == MODEL_FORMAT_VERSION and isinstance(state["space"], str)
    loaded, loaded_candidate = load_model(path)
    assert loaded_candidate == candidate and not loaded.training
    torch.testing.assert_close(loaded(images()), model(images()), rtol=0, atol=0)


def test_corrupt_or_foreign_model_files_raise_checkpoint_error(space, tmp_path):
    candidate = space.smallest()
    path = tmp_path / "model.pt"
    save_model(path, Supernet(space).extract(candidate), candidate, space)
    data = path.read_bytes()

    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    state = torch.load(path, weights_only=True)
    atomic_torch_save({"kind": "automq-supernet"}, tmp_path / "foreign.pt")
    atomic_torch_save({**state, "format_version": MODEL_FORMAT_VERSION + 1}, tmp_path / "future.pt")
    atomic_torch_save({**state, "candidate": space.largest().to_json()}, tmp_path / "mismatch.pt")
    for name, message in [("truncated.pt", "cannot be read"), ("garbage.pt", "cannot be read"),
                          ("foreign.pt", "not an automq model"), ("future.pt", "format version"),
                          ("mismatch.pt", "inconsistent"), ("missing.pt", "no such")]:
        with pytest.raises(CheckpointError, match=message):
            load_model(tmp_path / name)


# ---------------------------------------------------------------------------------------------- BN recalibration
def test_recalibrate_bn_gives_the_statistics_of_the_batches(space):
    candidate = space.smallest()
    net = calibrated(space, candidate)
    bn = net.get_submodule("blocks.1.0.bn1")
    inputs = []
    hook = bn.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach()))
    batches = [(images(8, seed=s), torch.zeros(8)) for s in range(3)]
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.3
    recalibrate_bn(net, batches)
    hook.remove()

    # Train-mode BN inputs do not depend on running statistics, so the hook saw exactly what BN averaged.
    c = inputs[0].shape[1]
    assert c < bn.num_features  # a sliced BN: the rest is reset
    mean = torch.cat(inputs).mean(dim=(0, 2, 3))  # equal batch sizes: the mean of batch means
    var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in inputs]).mean(0)
    torch.testing.assert_close(bn.running_mean[:c], mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var[:c], var, rtol=1e-5, atol=1e-6)
    assert torch.equal(bn.running_mean[c:], torch.zeros(bn.num_features - c))
    assert torch.equal(bn.running_var[c:], torch.ones(bn.num_features - c))
    assert not net.training and not any(m.training for m in net.modules())
    assert all(m.momentum == 0.3 for m in net.modules() if isinstance(m, nn.BatchNorm2d))


def test_recalibrate_bn_agrees_between_supernet_and_extracted_model(space):
    candidate = space.sample(2)
    net = calibrated(space, candidate)
    model = net.extract(candidate)
    batches = [images(8, seed=s) for s in range(2)]
    recalibrate_bn(net, batches)
    before = model(images(seed=5))
    recalibrate_bn(model, batches)
    after = model(images(seed=5))
    assert (after - before).abs().max() > 1e-4  # the statistics did change
    torch.testing.assert_close(after, net(images(seed=5)), rtol=0, atol=1e-5)


def test_recalibrate_bn_without_batches_is_an_error(space):
    with pytest.raises(DataError, match="no batches"):
        recalibrate_bn(Supernet(space), [])


# ---------------------------------------------------------------------------------------------- channel sorting
def test_sorting_by_importance_keeps_the_full_network_and_orders_channels(tiny_space):
    space = tiny_space(SPACE_CHANGES, PER_CHANNEL)
    largest = space.largest()
    net = calibrated(space, largest)
    before = net(images())
    conv_pw = net.get_submodule("blocks.2.1.conv_pw")
    fmt = largest.layer_formats()["blocks.2.1.conv_pw"][0]
    old_weight, old_scale = conv_pw.weight.detach().clone(), conv_pw.w_quant.scales[fmt].detach().clone()
    old_importance = net.get_submodule("blocks.2.1.conv_pwl").weight.abs().sum(dim=(0, 2, 3))
    order = torch.argsort(old_importance, descending=True, stable=True)
    assert not torch.equal(order, torch.arange(len(order)))

    sort_channels_by_importance(net)

    torch.testing.assert_close(net(images()), before, rtol=0, atol=1e-5)
    assert torch.equal(conv_pw.weight, old_weight[order])
    assert torch.equal(conv_pw.w_quant.scales[fmt], old_scale[order])
    for block in net.modules():
        if isinstance(block, ElasticInvertedResidual):
            importance = block.conv_pwl.weight.abs().sum(dim=(0, 2, 3))
            assert (importance[:-1] >= importance[1:]).all()
