import pytest
import timm
import torch
from timm.layers import make_divisible as timm_make_divisible
from timm.models._efficientnet_builder import round_channels as timm_round_channels
from torch import nn

from automq.model.arch import arch_def, build_timm_model, head_channels, layer_specs, make_divisible, round_channels
from automq.space.candidate import Candidate
from automq.errors import CandidateError
from automq.space.space import SearchSpace

TIMM_MBV2_DEPTHS = (1, 2, 3, 4, 3, 3, 1)


@pytest.fixture(scope="module")
def fmnist() -> SearchSpace:
    return SearchSpace.from_file("mbv2_fmnist")


def standard_mobilenetv2(space: SearchSpace, width: float) -> Candidate:
    """timm's MobileNetV2 (kernel 3, expansion 6, timm's depths) as a candidate of mbv2_imagenet, int8 formats."""
    choices = {"width_mult": width}
    for i, depth in enumerate(TIMM_MBV2_DEPTHS):
        choices[f"stages.{i}.depth"] = depth
        for j in range(depth):
            choices[f"blocks.{i}.{j}.kernel_size"] = 3
            if i > 0:
                choices[f"blocks.{i}.{j}.expand_ratio"] = 6
    arch = space.candidate_from_choices({**choices, **{d.name: "int8" for d in space.decisions()
                                                       if d.name.endswith("_fmt")}})
    return space.uniform("int8", "int8", arch=arch)


def test_channel_rounding_matches_timm():
    for channels in (8, 12, 16, 24, 32, 40, 96, 160, 320, 1280):
        for mult in (0.1, 0.35, 0.5, 0.75, 1.0, 1.3, 1.4, 2.0):
            assert round_channels(channels, mult) == timm_round_channels(channels, mult)
    for value in [x / 4 for x in range(1, 4000)]:
        assert make_divisible(value) == timm_make_divisible(value)


@pytest.mark.parametrize("width, variant, params", [
    (1.0, "mobilenetv2_100", 3_504_872), (0.5, "mobilenetv2_050", None), (1.4, "mobilenetv2_140", None),
])
def test_standard_mobilenetv2_has_timms_parameter_count(width, variant, params):
    space = SearchSpace.from_file("mbv2_imagenet")
    model = build_timm_model(space, standard_mobilenetv2(space, width))
    reference = timm.create_model(variant)
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in reference.parameters())
    assert params is None or count == params
    assert [n for n, _ in model.named_modules()] == [n for n, _ in reference.named_modules()]


def test_arch_def_strings(fmnist):
    candidate = fmnist.smallest()
    assert arch_def(fmnist, candidate) == [
        ["ds_r1_k3_s1_c8"], ["ir_r1_k3_s2_e3_c16"], ["ir_r1_k3_s2_e3_c24"], ["ir_r1_k3_s1_e3_c32"],
        ["ir_r1_k3_s2_e3_c48"], ["ir_r1_k3_s1_e3_c64"],
    ]
    deep = arch_def(fmnist, fmnist.largest())
    assert deep[2] == ["ir_r1_k5_s2_e6_c24", "ir_r1_k5_s1_e6_c24", "ir_r1_k5_s1_e6_c24"]


def test_head_never_narrows_like_timm(fmnist):
    assert head_channels(fmnist, 0.75) == 256
    assert head_channels(SearchSpace.from_file("mbv2_imagenet"), 1.4) == 1792


def candidates_to_check(fmnist):
    cifar = SearchSpace.from_file("mbv2_cifar10")
    picks = [(fmnist, fmnist.largest()), (fmnist, fmnist.smallest())]
    picks += [(fmnist, fmnist.sample(seed)) for seed in range(4)]
    return picks + [(cifar, cifar.sample(0)), (cifar, cifar.smallest())]


def test_layer_specs_match_the_timm_model(fmnist):
    torch.manual_seed(0)
    for space, candidate in candidates_to_check(fmnist):
        model = build_timm_model(space, candidate).eval()
        layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        specs = layer_specs(space, candidate)
        assert [s.name for s in specs] == list(layers) == space.layer_names(candidate)

        seen = {}
        hooks = [m.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, (i[0], o)))
                 for name, m in layers.items()]
        size = space.dataset.input_size
        with torch.no_grad():
            model(torch.randn(2, space.dataset.in_chans, size, size))
        for hook in hooks:
            hook.remove()

        for spec in specs:
            module, (x, y) = layers[spec.name], seen[spec.name]
            if spec.kind == "conv":
                k = spec.kernel_size
                assert module.weight.shape == (spec.out_ch, spec.in_ch // spec.groups, k, k), spec.name
                assert (module.stride[0], module.groups) == (spec.stride, spec.groups), spec.name
                assert x.shape[1:] == (spec.in_ch, spec.in_hw, spec.in_hw), spec.name
                assert y.shape[1:] == (spec.out_ch, spec.out_hw, spec.out_hw), spec.name
            else:
                assert module.weight.shape == (spec.out_ch, spec.in_ch), spec.name
            # a_signed is exactly "this input can be negative": ReLU6 outputs never are, the others are; a_max bounds
            # the unsigned ones (a ReLU6 output, or an average of them).
            assert bool(x.min() < 0) == spec.a_signed, spec.name
            assert spec.a_max == (None if spec.a_signed else 6.0) and float(x.max()) <= (spec.a_max or float("inf"))


def test_out_fmt_is_the_input_format_of_the_one_layer_that_reads_the_output(fmnist):
    """timm's blocks say which add their input to their output (``has_skip``): such a block's last conv and the
    layer before the block both feed that add as well. The head conv is pooled and the classifier's output is the
    logits. Every other layer's output is read by the next layer alone, so its out_fmt is that layer's input
    format (sampled candidates: mixed formats, depths with and without residual blocks)."""
    for space, candidate in candidates_to_check(fmnist):
        model = build_timm_model(space, candidate)
        specs = layer_specs(space, candidate)
        names = [spec.name for spec in specs]
        shared = {"conv_head", "classifier"}
        for i, stage in enumerate(model.blocks):
            for j, block in enumerate(stage):
                if block.has_skip:  # inverted residual: conv_pw ... conv_pwl; depthwise separable: conv_dw, conv_pw
                    first, last = ("conv_pw", "conv_pwl") if hasattr(block, "conv_pwl") else ("conv_dw", "conv_pw")
                    shared |= {names[names.index(f"blocks.{i}.{j}.{first}") - 1], f"blocks.{i}.{j}.{last}"}
        assert len(shared) > 2 or candidate == space.smallest()  # the check sees residual blocks
        for spec, following in zip(specs, specs[1:] + [None]):
            assert spec.out_fmt == (None if spec.name in shared else following.a_fmt), spec.name


def test_layer_specs_need_formats_for_every_layer(fmnist):
    candidate = fmnist.smallest()
    broken = Candidate(candidate.width_mult, candidate.blocks, candidate.formats[:-1])
    with pytest.raises(CandidateError, match="no formats for layer 'classifier'"):
        layer_specs(fmnist, broken)
