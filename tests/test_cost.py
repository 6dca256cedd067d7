import itertools
import json

import pytest
import torch
from torch import nn

from automq.model.arch import LayerSpec, build_timm_model, layer_specs
from automq.cost import HOROWITZ_45NM, METRIC_KEYS, CostModel, cost_range, format_bits, latency_key
from automq.errors import SpaceError
from automq.space.space import SearchSpace

EPS64 = torch.finfo(torch.float64).eps
# hand values of a few float64 products and quotients: 16 eps
TOLERANCE = 16 * EPS64

# The smallest possible network: 8x8x1 input, stem 8 (stride 2 -> 4x4), one ds block, head 16, 10 classes.
MINIMAL = {
    "name": "minimal",
    "dataset": {"name": "fashion_mnist", "input_size": 8},
    "network": {
        "stem": {"channels": 8},
        "stages": [{"type": "ds", "channels": 8, "stride": 1, "depth": [1], "kernel_size": [3]}],
        "head": {"channels": 16},
    },
    "formats": {"weights": ["int4", "int8"], "activations": ["int8"]},
    "objectives": [{"metric": "accuracy"}, {"metric": "bitops"}],
}


@pytest.fixture(scope="module")
def minimal() -> SearchSpace:
    return SearchSpace.from_dict(MINIMAL, source="minimal")


def conv(name, in_ch, out_ch, k, hw, w_fmt, a_fmt, groups=1):
    return LayerSpec(name, "conv", in_ch, out_ch, k, 1, groups, hw, hw, True, w_fmt, a_fmt)


def hook_count(model: nn.Module, input_size: int, in_chans: int) -> tuple[int, int]:
    """Independent MACs (forward hooks on the actual modules) and conv/linear parameters (weights + biases)."""
    macs = []

    def count(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs.append(output.shape[2] * output.shape[3] * module.out_channels
                        * module.in_channels // module.groups * k)
        else:
            macs.append(module.in_features * module.out_features)

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = [m.register_forward_hook(count) for m in layers]
    with torch.no_grad():
        model.eval()(torch.zeros(1, in_chans, input_size, input_size))
    for hook in hooks:
        hook.remove()
    return sum(macs), sum(p.numel() for m in layers for p in m.parameters())


@pytest.mark.parametrize("name", ["mbv2_fmnist", "mbv2_cifar10"])
def test_macs_and_params_equal_a_hook_count_on_the_timm_model(name):
    space = SearchSpace.from_file(name)
    model = CostModel(space)
    for candidate in (space.largest(), space.sample(1)):
        costs = model.costs(candidate)
        expected = hook_count(build_timm_model(space, candidate), space.dataset.input_size, space.dataset.in_chans)
        assert (costs["macs"], costs["params"]) == expected


def test_minimal_network_by_hand(minimal):
    model = CostModel(minimal)
    candidate = minimal.uniform("int8", "int8")
    # stem 16*8*9 + dw 16*8*9 + pw 16*8*8 + head 16*8*16 + classifier 16*10
    assert model.layer_macs(candidate) == {"conv_stem": 1152, "blocks.0.0.conv_dw": 1152,
                                           "blocks.0.0.conv_pw": 1024, "conv_head": 2048, "classifier": 160}
    costs = model.costs(candidate)
    assert costs["macs"] == 5536
    assert costs["params"] == 72 + 72 + 64 + 128 + 160 + 10
    assert costs["bitops"] == 64 * 5536
    # int8 weights with fp16 per-channel scales and 32-bit biases: (weights*8 + out_ch*(16+32)) / 8
    assert costs["size_bytes"] == (496 * 8 + (8 + 8 + 8 + 16 + 10) * 48) / 8
    # the head reads 8*4*4 and writes 16*4*4 int8 values
    assert costs["peak_act_bytes"] == 384
    assert set(costs) == {"macs", "params", "bitops", "size_bytes", "peak_act_bytes", "energy_uj"}


def test_uniform_int8_bitops_are_64_macs():
    space = SearchSpace.from_file("mbv2_fmnist")
    for arch in ("largest", "smallest", space.sample(3)):
        costs = CostModel(space).costs(space.uniform("int8", "int8", arch=arch))
        assert costs["bitops"] == 64 * costs["macs"]


def test_two_layers_by_hand(minimal):
    model = CostModel(minimal)
    layers = [model.layer_cost(conv("a", 4, 8, 3, 8, "int4", "int8")),
              model.layer_cost(LayerSpec("b", "linear", 8, 10, 1, 1, 1, 1, 1, False, "mxfp4_e2m1", "fp8_e4m3"))]
    assert [c.macs for c in layers] == [64 * 8 * 4 * 9, 80]
    # int4 x int8 = 32 bits per MAC; MX E2M1 pays its 8-bit scale per 32 elements: 4.25 x 8 bits per MAC
    assert sum(c.bitops for c in layers) == 18432 * 32 + 80 * 34
    # 288 int4 weights + 8 x (16-bit scale + 32-bit bias); 80 x 4.25 bits + 10 x 32-bit bias, no extra scale
    assert [c.size_bytes for c in layers] == [(288 * 4 + 8 * 48) / 8, (80 * 4.25 + 10 * 32) / 8]
    assert [c.act_bytes for c in layers] == [(4 * 64 + 8 * 64) * 8 / 8, (8 + 10) * 8 / 8]


def test_energy_by_hand(minimal):
    model = CostModel(minimal)
    # int4 x int8: multiply 0.2 * 32/64; the exact sum of 36 products needs 4+8+6 = 18 bits: 0.1 * 18/32
    int_layer = model.layer_cost(conv("a", 4, 8, 3, 8, "int4", "int8"))
    assert int_layer.energy_uj == pytest.approx(18432 * (0.1 + 0.05625) * 1e-6, rel=TOLERANCE)
    # E2M1 (2-bit significand) x E4M3 (4-bit): 1.1 * 8/121, accumulated in fp32 (0.9)
    float_layer = model.layer_cost(conv("b", 8, 10, 1, 1, "mxfp4_e2m1", "fp8_e4m3"))
    assert float_layer.energy_uj == pytest.approx(80 * (1.1 * 8 / 121 + 0.9) * 1e-6, rel=TOLERANCE)
    # the table's own entries come back where they apply
    table = HOROWITZ_45NM
    assert table.mult_pj("int8", "int8") == pytest.approx(0.2, rel=TOLERANCE)
    assert table.mult_pj("fp16", "fp16") == pytest.approx(1.1, rel=TOLERANCE)
    assert table.mult_pj("fp32", "fp32") == pytest.approx(3.7, rel=TOLERANCE)
    assert table.add_pj("int2", "int2", fan_in=16) == pytest.approx(0.03, rel=TOLERANCE)  # 2 + 2 + 4 = 8-bit adder
    assert table.add_pj("int8", "int8", fan_in=2**20) == pytest.approx(0.1, rel=TOLERANCE)  # capped at 32 bits
    # int8 weights with fp8 activations: a float multiply of 7-bit (integer magnitude) by 4-bit significands
    assert table.mult_pj("int8", "fp8_e4m3") == pytest.approx(1.1 * 28 / 121, rel=TOLERANCE)


def test_format_bits():
    assert format_bits("int4") == 4
    assert format_bits("mxfp8_e4m3") == 8.25
    assert format_bits("fp32") == 32


def test_cost_range_is_exact_on_an_enumerable_space():
    space = SearchSpace.from_file("tiny_enum")
    model = CostModel(space)
    decisions = space.decisions()
    every = [model.metrics(space.candidate_from_choices(dict(zip([d.name for d in decisions], values))))
             for values in itertools.product(*(d.choices for d in decisions))]
    ranges = cost_range(space, model)
    assert set(ranges) == {"macs", "params", "bitops", "size", "peak_act", "energy"}
    for metric, (low, high) in ranges.items():
        values = [m[metric] for m in every]
        # per-layer costs summed in another order: one float64 rounding per layer
        tolerance = len(model.layer_costs(space.largest())) * EPS64
        assert low == pytest.approx(min(values), rel=tolerance) and high == pytest.approx(max(values), rel=tolerance)


def test_cost_range_picks_the_cheapest_format_per_metric():
    # int2 has the fewest bits, yet with its 16-bit per-channel scale a depthwise 3x3 stores more than MX E2M1:
    # 9*2 + 16 = 34 vs 9*4.25 = 38.25 bits per channel, but int4: 9*4 + 16 = 52 > 38.25.
    data = dict(MINIMAL, formats={"weights": ["int4", "mxfp4_e2m1"], "activations": ["int8"]})
    space = SearchSpace.from_dict(data, source="minimal")
    model = CostModel(space)
    sizes = [model.costs(space.candidate_from_choices(
        {d.name: v for d, v in zip(space.decisions(), values)}))["size_bytes"]
        for values in itertools.product(*(d.choices for d in space.decisions()))]
    assert cost_range(space)["size"] == (min(sizes), max(sizes))
    assert cost_range(space)["size"][0] < model.costs(space.smallest())["size_bytes"]


def test_latency_table(minimal, tmp_path):
    candidate = minimal.uniform("int8", "int8")
    specs = layer_specs(minimal, candidate)
    # the depthwise conv feeds the int8 pointwise conv directly: an integer conv in the exported model
    assert latency_key(specs[1]) == "conv/8x8/k3/s1/g8/hw4/int8/int8/int8-out"
    table = {latency_key(spec): 0.5 * n for n, spec in enumerate(specs)}
    path = tmp_path / "latency.json"
    path.write_text(json.dumps({"_device": "test bench", **table}))
    model = CostModel(minimal, latency_table=path)
    assert model.costs(candidate)["latency_ms"] == 0.5 * (0 + 1 + 2 + 3 + 4)
    assert model.metrics(candidate)["latency"] == 5.0
    with pytest.raises(SpaceError, match="no entry for layer conv_stem \\(key 'conv/1x8/k3/s2/g1/hw8/int4/int8'\\)"):
        model.costs(minimal.uniform("int4", "int8", clamp=True))
    path.write_text(json.dumps({key.removesuffix("/int8-out"): value for key, value in table.items()}))
    with pytest.raises(SpaceError, match="predates the export's integer convs; rebuild it with automq latency-table"):
        CostModel(minimal, latency_table=path).costs(candidate)
    path.write_text(json.dumps({"conv/1x8": "fast"}))
    with pytest.raises(SpaceError, match="entry 'conv/1x8': expected a non-negative number"):
        CostModel(minimal, latency_table=path)


def test_metrics_use_space_file_names(minimal):
    candidate = minimal.smallest()
    model = CostModel(minimal)
    costs, metrics = model.costs(candidate), model.metrics(candidate)
    assert metrics == {metric: costs[key] for metric, key in METRIC_KEYS.items() if key in costs}
    assert "size" in metrics and "latency" not in metrics
