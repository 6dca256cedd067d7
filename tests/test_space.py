import copy
import itertools
import os
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from automq.space.candidate import BlockChoice, Candidate
from automq.cost import CostModel, check_budgets
from automq.errors import CandidateError, SpaceError
from automq.numerics.formats import format_names, get_format
from automq.space.space import SHIPPED_SPACES, Decision, SearchSpace

from _spaces import DS_STAGE, IR_STAGE, tiny_space_data

SHIPPED = sorted(p.stem for p in SHIPPED_SPACES.glob("*.yaml"))

# Depth-conditional and override-heavy, yet small: 2^9 = 512 raw decision combinations, 288 distinct candidates.
TINY = tiny_space_data(
    dataset={"name": "fashion_mnist"},
    network={"stages": [DS_STAGE, {**IR_STAGE, "expand_ratio": [3, 6]}]},
    formats={
        "weights": ["int8"],
        "activations": ["int8"],
        "overrides": [
            {"layers": r"blocks\.1\.\d\.conv_pwl", "weights": ["int4", "int8"]},
            {"layers": "classifier", "activations": ["int8", "fp8_e4m3"]},
            {"layers": "classifier|conv_head", "weights": ["int2"]},  # shadowed for the classifier
        ],
    },
)


def tiny(**edits) -> SearchSpace:
    data = copy.deepcopy(TINY)
    data.update(edits)
    return SearchSpace.from_dict(data, source="tiny.yaml")


def distinct_candidates(space: SearchSpace) -> set[Candidate]:
    """Brute force: every combination of the max network's decisions, inactive ones dropped, de-duplicated."""
    decisions = space.decisions()
    return {
        space.candidate_from_choices(dict(zip([d.name for d in decisions], values)))
        for values in itertools.product(*(d.choices for d in decisions))
    }


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spaces_load_and_sample_valid_candidates(name):
    space = SearchSpace.from_file(SHIPPED_SPACES / f"{name}.yaml")
    assert space.name == name
    assert space.count() >= 1
    for seed in range(3):
        space.validate_candidate(space.sample(seed))
    space.validate_candidate(space.smallest())
    space.validate_candidate(space.largest())


def test_the_strong_space_searches_what_the_default_space_does():
    """Its supernet, searches and fronts are the default space's with more data, training and resolution only."""
    default, strong = SearchSpace.from_file("mbv2_fmnist"), SearchSpace.from_file("mbv2_fmnist_strong")
    assert strong.network == default.network and strong.overrides == default.overrides
    assert (strong.weight_formats, strong.activation_formats) == (default.weight_formats, default.activation_formats)
    assert strong.objectives == default.objectives and strong.seed == default.seed
    assert [c.id for c in strong.uniform_references()] == [c.id for c in default.uniform_references()]
    assert (strong.dataset.val_size, strong.training.epochs, strong.training.train_size) == (20000, 16, 40000)
    assert (strong.search.trials, strong.search.calib_blocks, strong.search.calib_contenders) == (1000, 4, 1)


ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT_SPACES = ROOT / "experiments" / "spaces"
SCORED_BY = {  # an experiment's copy of a space -> the space whose supernet scores it (the README's commands)
    "mpq_only_val10k": "spaces/mbv2_fmnist.yaml",
    "mbv2_fmnist_lowbit_weights": "spaces/mbv2_fmnist.yaml",
    "mbv2_fmnist_val20k_cb4": "experiments/spaces/mbv2_fmnist_val20k.yaml",
    "mbv2_fmnist_val20k_cb4c1": "experiments/spaces/mbv2_fmnist_val20k.yaml",
    "mpq_only_lowbit_acts_val10k": "experiments/spaces/mbv2_fmnist_lowbit_acts.yaml",
    "mbv2_fmnist_lowbit_acts_cb4c1": "experiments/spaces/mbv2_fmnist_lowbit_acts.yaml",
}


@pytest.mark.parametrize("name", sorted(p.stem for p in EXPERIMENT_SPACES.glob("*.yaml")))
def test_experiment_spaces_load_and_fit_the_supernet_that_scores_them(name):
    """The committed studies name these files in their commands; a copy meant for another space's supernet must
    stay inside that space, with the same validation split (else the estimate would score training images)."""
    space = SearchSpace.from_file(EXPERIMENT_SPACES / f"{name}.yaml")
    assert space.name == name
    space.validate_candidate(space.largest())
    if name in SCORED_BY:
        outer = SearchSpace.from_file(ROOT / SCORED_BY[name])
        assert space.outside(outer) is None
        assert space.dataset.val_size == outer.dataset.val_size and space.seed == outer.seed


def test_shipped_names_resolve_without_a_path():
    assert SearchSpace.from_file("mbv2_fmnist").source.endswith("spaces/mbv2_fmnist.yaml")


def test_default_space_matches_the_demo_brief():
    space = SearchSpace.from_file("mbv2_fmnist")
    assert (space.dataset.in_chans, space.dataset.num_classes, space.dataset.input_size) == (1, 10, 32)
    assert space.layer_menu("conv_stem") == (("int8",), ("int8",))
    assert space.layer_menu("classifier") == (("int8",), ("int8",))
    assert all(get_format(fmt).bits >= 6 for name in space.layer_names() if name.endswith("conv_dw")
               for fmt in space.layer_menu(name)[0])
    assert {get_format(fmt).family for fmt in space.weight_formats} == {"int", "float", "mx"}
    assert CostModel(space).costs(space.largest())["macs"] <= 15e6


def test_count_equals_brute_force_enumeration():
    space = tiny()
    assert [d.name for d in space.decisions()] == [
        "width_mult", "stages.1.depth",
        "blocks.1.0.kernel_size", "blocks.1.0.expand_ratio", "blocks.1.1.kernel_size", "blocks.1.1.expand_ratio",
        "blocks.1.0.conv_pwl.w_fmt", "blocks.1.1.conv_pwl.w_fmt", "classifier.a_fmt",
    ]
    # by hand: width 2 x classifier 2 x (depth 1: 2*2*2 + depth 2: 8*8) = 288
    assert space.count() == len(distinct_candidates(space)) == 288


def test_tiny_enum_is_enumerable_and_a_sub_space_of_the_default():
    space, default = SearchSpace.from_file("tiny_enum"), SearchSpace.from_file("mbv2_fmnist")
    candidates = distinct_candidates(space)
    assert space.count() == len(candidates) == 576
    for candidate in candidates:
        default.validate_candidate(candidate)
    default.validate_candidate(SearchSpace.from_file("mpq_only").largest())


def test_single_choice_decisions_are_constants():
    space = SearchSpace.from_file("mpq_only")
    assert not any(d.name.endswith(("depth", "kernel_size", "expand_ratio", "width_mult")) for d in space.decisions())
    assert space.smallest().blocks == space.largest().blocks


def test_choices_round_trip_and_inactive_decisions_are_dropped():
    space = tiny()
    for seed in range(20):
        candidate = space.sample(seed)
        assert space.candidate_from_choices(space.choices_of(candidate)) == candidate
    shallow = {d.name: d.choices[0] for d in space.decisions()}  # depth 1: blocks.1.1.* are inactive
    candidate = space.candidate_from_choices(shallow)
    assert candidate.depths == (1, 1)
    assert "blocks.1.1.kernel_size" not in space.choices_of(candidate)


@pytest.mark.parametrize(
    "choices, message",
    [
        ({"width_mul": 0.5}, "unknown decision 'width_mul'; did you mean 'width_mult'"),
        ({"width_mult": 0.7}, "'width_mult' = 0.7 is not one of \\[0.5, 1.0\\]"),
        ({"width_mult": 0.5}, "missing a value for the active decision 'stages.1.depth'"),
    ],
)
def test_candidate_from_choices_errors(choices, message):
    with pytest.raises(CandidateError, match=message):
        tiny().candidate_from_choices(choices)


def test_sampling_is_seeded():
    space = SearchSpace.from_file("mbv2_fmnist")
    assert space.sample(3) == space.sample(3) == space.sample(np.random.default_rng(3))
    assert len({space.sample(seed) for seed in range(20)}) == 20
    gen_a, gen_b = np.random.default_rng(7), np.random.default_rng(7)
    assert [space.mutate(space.largest(), gen_a, 0.3) for _ in range(3)] == \
           [space.mutate(space.largest(), gen_b, 0.3) for _ in range(3)]


def test_sampled_mutated_and_crossed_candidates_are_always_valid():
    space = SearchSpace.from_file("mbv2_fmnist")
    rng = np.random.default_rng(0)
    population = [space.sample(rng) for _ in range(10)]
    for step in range(60):
        a, b = population[rng.integers(10)], population[rng.integers(10)]
        child = space.mutate(space.crossover(a, b, rng), rng, prob=0.2)
        space.validate_candidate(child)
        population[step % 10] = child


def test_mutation_probability_bounds():
    space = tiny()
    candidate = space.sample(1)
    assert space.mutate(candidate, 0, prob=0.0) == candidate
    mutated = space.choices_of(space.mutate(candidate, 0, prob=1.0))
    before = space.choices_of(candidate)
    # every decision active in both differs (the depth flip may add or remove blocks)
    assert all(mutated[name] != before[name] for name in before.keys() & mutated.keys())


def test_crossover_takes_every_value_from_a_parent():
    space = SearchSpace.from_file("mbv2_fmnist")
    a, b = space.smallest(), space.largest()
    child = space.crossover(a, b, 5)
    ca, cb = space.choices_of(a), space.choices_of(b)
    for name, value in space.choices_of(child).items():
        assert value in (ca.get(name), cb.get(name))
    assert space.crossover(a, a, 9) == a


def test_smallest_and_largest_are_the_bitops_extremes():
    space = SearchSpace.from_file("tiny_enum")
    bitops = [CostModel(space).costs(c)["bitops"] for c in distinct_candidates(space)]
    model = CostModel(space)
    assert model.costs(space.smallest())["bitops"] == min(bitops)
    assert model.costs(space.largest())["bitops"] == max(bitops)


def test_uniform_formats_and_clamping():
    space = SearchSpace.from_file("mbv2_fmnist")
    with pytest.raises(CandidateError, match="layer 'conv_stem' allows w_fmt \\['int8'\\] only"):
        space.uniform("int4", "int8")
    clamped = space.uniform("int4", "fp8_e4m3", clamp=True)
    formats = clamped.layer_formats()
    assert formats["conv_stem"] == ("int8", "int8")  # the stem allows int8 only
    assert formats["blocks.0.0.conv_dw"] == ("int8", "fp8_e4m3")  # nearest >= 6-bit depthwise format
    assert formats["blocks.1.0.conv_pw"] == ("int4", "fp8_e4m3")
    assert clamped.blocks == space.largest().blocks
    assert space.uniform("int8", "int8", arch="smallest").blocks == space.smallest().blocks
    arch = space.sample(4)
    assert space.uniform("int8", "int8", arch=arch).blocks == arch.blocks
    with pytest.raises(CandidateError, match="unknown format 'int7'"):
        space.uniform("int7", "int8")


def test_uniform_references_are_the_largest_architecture_in_every_format_pair_most_bits_first():
    space = SearchSpace.from_file("mbv2_fmnist")
    # weight bits, then activation bits, descending (mxfp4: 4.25 bits); equal bits keep the file's order
    assert space.weight_formats == ("int2", "int4", "int8", "fp4_e2m1", "fp8_e4m3", "mxfp4_e2m1")
    assert space.activation_formats == ("int4", "int8", "fp8_e4m3")
    assert space.uniform_pairs() == [
        ("int8", "int8"), ("int8", "fp8_e4m3"), ("fp8_e4m3", "int8"), ("fp8_e4m3", "fp8_e4m3"),  # 8 / 8
        ("int8", "int4"), ("fp8_e4m3", "int4"),  # 8 / 4
        ("mxfp4_e2m1", "int8"), ("mxfp4_e2m1", "fp8_e4m3"), ("mxfp4_e2m1", "int4"),  # 4.25 / 8, 4
        ("int4", "int8"), ("int4", "fp8_e4m3"), ("fp4_e2m1", "int8"), ("fp4_e2m1", "fp8_e4m3"),  # 4 / 8
        ("int4", "int4"), ("fp4_e2m1", "int4"),  # 4 / 4
        ("int2", "int8"), ("int2", "fp8_e4m3"), ("int2", "int4")]  # 2 / 8, 4
    references = space.uniform_references()
    assert len({c.id for c in references}) == len(references) == 18  # no two pairs clamp to the same candidate
    for candidate, (w_fmt, a_fmt) in zip(references, space.uniform_pairs()):
        assert candidate.blocks == space.largest().blocks and candidate.width_mult == space.largest().width_mult
        pointwise = {f for name, f in candidate.layer_formats().items() if name.endswith(("conv_pw", "conv_pwl"))}
        assert pointwise == {(w_fmt, a_fmt)}


def test_sample_uniform_draws_one_format_pair_for_every_layer_that_allows_it():
    space = SearchSpace.from_file("mbv2_fmnist")
    pairs = set()
    for seed in range(300):
        formats = space.sample_uniform(seed).layer_formats()
        pointwise = {f for name, f in formats.items() if name.endswith(("conv_pw", "conv_pwl", "conv_head"))}
        assert len(pointwise) == 1  # these layers all take the default menus: one pair throughout
        (w_fmt, a_fmt), = pointwise
        assert formats["conv_stem"] == formats["classifier"] == ("int8", "int8")  # the file's int8-only override
        dw_weights = {f[0] for name, f in formats.items() if name.endswith("conv_dw")}
        # depthwise weights allow [int8, fp8_e4m3]: the drawn one where allowed, else the nearest (hand-listed)
        # (mxfp4's 4.25 bits are as far from both 8-bit ones, neither is its family: the menu's first wins)
        nearest = {"int2": "int8", "int4": "int8", "int8": "int8", "fp4_e2m1": "fp8_e4m3", "fp8_e4m3": "fp8_e4m3",
                   "mxfp4_e2m1": "int8"}
        assert dw_weights == {nearest[w_fmt]}
        pairs.add((w_fmt, a_fmt))
    # 6 weight x 3 activation formats: all 18 pairs turn up in 300 draws (each misses with p = (17/18)^300 < 1e-7)
    assert pairs == {(w, a) for w in ["int2", "int4", "int8", "fp4_e2m1", "fp8_e4m3", "mxfp4_e2m1"]
                     for a in ["int4", "int8", "fp8_e4m3"]}


def test_layer_names_and_first_matching_override_wins():
    space = tiny()
    candidate = space.smallest()
    assert space.layer_names(candidate) == [
        "conv_stem", "blocks.0.0.conv_dw", "blocks.0.0.conv_pw",
        "blocks.1.0.conv_pw", "blocks.1.0.conv_dw", "blocks.1.0.conv_pwl", "conv_head", "classifier",
    ]
    assert space.layer_menu("classifier") == (("int8",), ("int8", "fp8_e4m3"))
    assert space.layer_menu("conv_head") == (("int2",), ("int8",))
    assert space.layer_menu("blocks.1.1.conv_pwl") == (("int4", "int8"), ("int8",))
    with pytest.raises(CandidateError, match="no layer named 'blocks.9.0.conv_pw'"):
        space.layer_menu("blocks.9.0.conv_pw")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: Candidate(0.7, c.blocks, c.formats), "'width_mult' = 0.7"),
        (lambda c: Candidate(c.width_mult, c.blocks[:1], c.formats), "has 1 stages, the space tiny.yaml has 2"),
        (lambda c: Candidate(c.width_mult, (c.blocks[0], c.blocks[1] * 3), c.formats), "stages.1.depth = 3"),
        (lambda c: Candidate(c.width_mult, (c.blocks[0], (BlockChoice(7, 3),)), c.formats),
         "'blocks.1.0.kernel_size' = 7 is not one of \\[3, 5\\]"),
        (lambda c: Candidate(c.width_mult, c.blocks, c.formats[:-1]), "its formats lack layers \\['classifier'\\]"),
        (lambda c: Candidate(c.width_mult, c.blocks, c.formats[:-1] + (("classifier", "int8", "int4"),)),
         "'classifier.a_fmt' = 'int4' is not one of"),
    ],
)
def test_validate_candidate_names_the_field(edit, message):
    space = tiny()
    with pytest.raises(CandidateError, match=message):
        space.validate_candidate(edit(space.smallest()))


def read_in_full(data: dict) -> SearchSpace:
    """What ``automq space validate`` checks: the file's structure, then (in the cost model) its budgets."""
    space = SearchSpace.from_dict(data, source="tiny.yaml")
    check_budgets(space)
    return space


def set_path(data: dict, path: str, value) -> dict:
    """Copy of ``data`` with ``value`` at a dotted path (integers index lists); ``...`` deletes the key."""
    data = copy.deepcopy(data)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = data
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("formats.weights", ["int8", "int7"], "formats.weights[1]: unknown format 'int7'; did you mean 'int8'? "
                                              "valid formats: int2"),
        ("network.stages.1.kernel_size", [], "network.stages[1].kernel_size: empty choice list"),
        ("network.stages.1.kernel_size", [3, 4], "network.stages[1].kernel_size[1]: kernel size 4 is even"),
        ("network.stages.1.depth", [0, 1], "network.stages[1].depth[0]: expected a value >= 1, got 0"),
        ("network.stages.1.kernal_size", [3], "network.stages[1].kernal_size: unknown key; did you mean "
                                              "'kernel_size'?"),
        ("network.stages.1.stride", "2", "network.stages[1].stride: expected an integer, got str '2'"),
        ("network.stages.1.stride", 3, "network.stages[1].stride: expected 1 or 2, got 3"),
        ("network.stages.1.type", "mb", "network.stages[1].type: expected 'ds' (depthwise-separable) or 'ir'"),
        ("network.stages.1.expand_ratio", ..., "network.stages[1].expand_ratio: missing required key"),
        ("network.stages.0.expand_ratio", [1, 2], "network.stages[0].expand_ratio: a 'ds' stage has no expansion"),
        ("network.stages.1.depth", [1, 1], "network.stages[1].depth[1]: duplicate choice 1; list each choice once"),
        ("network.width_mult", 1.0, "network.width_mult: expected a list of a number choices"),
        ("network.stem", ..., "network.stem: missing required key"),
        ("objectives", [{"metric": "acuracy"}], "objectives[0].metric: unknown metric 'acuracy'; did you mean "
                                                "'accuracy'?"),
        ("objectives", [{"metric": "bitops"}, {"metric": "bitops"}], "objectives[1].metric: 'bitops' is listed"),
        ("objectives", [{"metric": "size", "mode": "lowest"}], "objectives[0].mode: expected 'min' or 'max'"),
        ("objectives", [{"metric": "latency"}], "latency_table: the 'latency' metric needs"),
        ("budgets", {"accuracy": 0.9}, "budgets.accuracy: unknown key; valid keys: bitops, size"),
        # smallest by hand: width 0.5 (8-channel stem/stages), depth 1, k3, e3, int4 pwl, int2 head, rest int8:
        # 64*(4608+4608+4096+12288+3456) + 32*3072 + 16*4096 + 64*320 = 2043904
        ("budgets", {"bitops": 1000.0}, "budgets.bitops: 1000 is below the smallest candidate's bitops (2.0439e+06)"),
        ("dataset.name", "fmnist", "dataset.name: unknown dataset 'fmnist'"),
        ("dataset.name", "imagefolder", "dataset.num_classes: required for dataset 'imagefolder'"),
        ("dataset.val_size", None, "dataset.val_size: expected an integer, got NoneType None"),
        ("dataset.input_size", 32.5, "dataset.input_size: expected an integer, got float 32.5"),
        ("formats.overrides.0.layers", "blocks.(", "formats.overrides[0].layers: invalid regular expression"),
        ("formats.overrides.0.layers", "conv_pwl", "formats.overrides[0].layers: 'conv_pwl' matches no layer"),
        ("formats.overrides.2", {"layers": "conv_head", "activations": ["int4"]}, None),  # one menu is enough
        ("formats.overrides.1.activations", ..., "formats.overrides[1]: a rule needs 'weights', 'activations'"),
        ("network.stages.1.stride", 2, None),
        ("training", {"epochs": 0}, "training.epochs: expected a value >= 1, got 0"),
        ("search", {"calib_blocks": 0}, "search.calib_blocks: expected a value >= 1, got 0"),
        ("search", {"calib_contenders": -1}, "search.calib_contenders: expected a value >= 0, got -1"),
        ("training", {"lr": "fast"}, "training.lr: expected a number, got str 'fast'"),
        ("search", {"trails": 5}, "search.trails: unknown key; did you mean 'trials'?"),
        ("search", {"eval_size": 9000}, "search.eval_size: 9000 exceeds dataset.val_size (5000)"),
        ("search", {"finetune_images": -1}, "search.finetune_images: expected a value >= 0, got -1"),
        ("search", {"finetune_images": 512}, None),
        ("seed", -1, "seed: expected a value >= 0"),
        ("network.head.channels", True, "network.head.channels: expected an integer, got bool True"),
    ],
)
def test_validation_errors_name_file_field_and_expectation(path, value, message):
    data = set_path(TINY, path, value)
    if message is None:
        read_in_full(data)
        return
    with pytest.raises(SpaceError) as info:
        read_in_full(data)
    assert str(info.value).startswith("tiny.yaml: ")
    assert message in str(info.value)


def test_total_stride_beyond_timm_output_stride_is_rejected():
    stages = TINY["network"]["stages"] + [
        {"type": "ir", "channels": 16, "stride": 2, "depth": [1], "kernel_size": [3], "expand_ratio": [6]}
    ] * 4
    with pytest.raises(SpaceError, match="network.stages: total stride 64"):
        SearchSpace.from_dict(set_path(TINY, "network.stages", stages), source="tiny.yaml")


def test_budget_floats_from_yaml_strings_and_feasible_budgets_are_kept():
    # PyYAML reads 2.0e8 (no exponent sign) as a string; it still is a number to a user.
    data = yaml.safe_load(yaml.safe_dump(TINY) + "budgets: {bitops: 2.0e8, size: 1e6}\n")
    assert tiny(budgets=data["budgets"]).budgets == {"bitops": 2e8, "size": 1e6}


def test_file_errors(tmp_path: Path):
    with pytest.raises(SpaceError, match="no_such.yaml: no such space file.*mbv2_fmnist"):
        SearchSpace.from_file(tmp_path / "no_such.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nnetwork:\n  stem: {channels: 16\n  head: 3\n")
    with pytest.raises(SpaceError, match=r"broken.yaml: YAML syntax error at line 4, column 7"):
        SearchSpace.from_file(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(SpaceError, match="list.yaml: expected a mapping with keys"):
        SearchSpace.from_file(listing)
    code = tmp_path / "code.yaml"
    code.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(SpaceError, match="code.yaml: YAML syntax error at line 1, .*plain data only"):
        SearchSpace.from_file(code)


def test_latency_table_path_is_relative_to_the_space_file(tmp_path: Path):
    (tmp_path / "lat.json").write_text("{}")
    data = set_path(TINY, "objectives", [{"metric": "accuracy"}, {"metric": "latency"}])
    data["latency_table"] = "lat.json"
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(data))
    assert SearchSpace.from_file(space_file).latency_table == tmp_path / "lat.json"
    data["latency_table"] = "missing.json"
    space_file.write_text(yaml.safe_dump(data))
    with pytest.raises(SpaceError, match="latency_table: .*missing.json': no such file"):
        SearchSpace.from_file(space_file)


# --------------------------------------------------------------------------- hostile and oversized inputs
BILLION = 10**9
MILLION = 10**6
MAX_MESSAGE_CHARS = 300  # file and field path, the fixed text, and at most 60 echoed characters


def space_text(**extra_lines: str) -> str:
    """The tiny space as YAML text without its name, then ``extra_lines`` (each a YAML top-level entry)."""
    data = {key: value for key, value in TINY.items() if key != "name"}
    return yaml.safe_dump(data) + "".join(extra_lines.values())


def alias_bomb() -> str:
    """'Billion laughs': anchor n lists anchor n-1 nine times, so ``name: *a8`` expands to 9**9 strings."""
    lines = ["description:", "  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 9)]
    return "\n".join(lines + ["name: *a8", ""])


def line_of(text: str, line: str) -> int:
    return text.splitlines().index(line) + 1


def test_an_alias_bomb_is_refused_at_its_first_anchor_in_well_under_a_second(tmp_path: Path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(space_text(bomb=alias_bomb()))
    start = time.perf_counter()
    with pytest.raises(SpaceError) as info:
        SearchSpace.from_file(bomb)
    assert time.perf_counter() - start < 0.5
    first_anchor = line_of(bomb.read_text(), "  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]")
    assert str(info.value) == (f"{bomb}: description.a0: YAML anchor '&a0' at line {first_anchor}; space files "
                               "refuse anchors and aliases, write the value out in full")


def test_an_expanded_alias_bomb_given_as_data_is_shown_in_bounded_time():
    laughs = ["lol"] * 9
    for _ in range(8):
        laughs = [laughs] * 9  # 9**9 strings through shared references, as yaml.safe_load would build them
    start = time.perf_counter()
    with pytest.raises(SpaceError) as info:
        SearchSpace.from_dict({**TINY, "name": laughs}, source="tiny.yaml")
    assert time.perf_counter() - start < 0.5
    prefix = "tiny.yaml: name: expected a string, got list "
    assert str(info.value).startswith(prefix + "[[")
    assert len(str(info.value)) == len(prefix) + 60 and str(info.value).endswith("...")


# (.*.*)*z backtracks for minutes on the 19-character 'blocks.1.0.conv_pwl'; the other three fail fast on this
# network's names, but only because its names are short.
@pytest.mark.parametrize("pattern", [r"(a+)+b", r"(\w*)*x", r"(blocks\.\d+)*z", r"(.*.*)*z"])
def test_an_override_regex_that_repeats_a_repeat_is_refused_in_well_under_a_second(pattern, tmp_path: Path):
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(set_path(TINY, "formats.overrides.1.layers", pattern)))
    start = time.perf_counter()
    with pytest.raises(SpaceError) as info:
        SearchSpace.from_file(space_file)
    assert time.perf_counter() - start < 0.5
    assert str(info.value).startswith(f"{space_file}: formats.overrides[1].layers: {pattern!r} repeats a group that "
                                      "itself contains a repeat, which can take exponential time to match; repeat "
                                      r"each part once (e.g. 'blocks\.\d+\.\d+\.conv_dw')")


PWL_1 = {"blocks.1.0.conv_pwl", "blocks.1.1.conv_pwl"}


@pytest.mark.parametrize("pattern, layers", [
    (r"blocks\.\d+\.\d+\.conv_pwl", PWL_1),
    (r"(blocks\.\d+\.\d+\.)?conv_pwl", PWL_1),  # an optional group may hold a repeat: it runs at most once
    (r"blocks\.1\.[01]\.conv_pwl?", PWL_1 | {"blocks.1.0.conv_pw", "blocks.1.1.conv_pw"}),
    (r"conv_\w+", {"conv_stem", "conv_head"}),  # the whole name must match
    (r"[a-z]+\.\d+\.\d+\.conv_\w+", {"blocks.0.0.conv_dw", "blocks.0.0.conv_pw", "blocks.1.0.conv_pw",
                                     "blocks.1.0.conv_dw", "blocks.1.0.conv_pwl", "blocks.1.1.conv_pw",
                                     "blocks.1.1.conv_dw", "blocks.1.1.conv_pwl"}),
])
def test_override_regexes_with_single_repeats_are_accepted(pattern, layers):
    space = read_in_full(set_path(TINY, "formats.overrides.0.layers", pattern))  # rule 0 gives weights int4, int8
    assert {name for name in space.layer_names() if space.layer_menu(name)[0] == ("int4", "int8")} == layers


@pytest.mark.parametrize("duplicate, field, first", [
    ("name: other\n", "name", "name: tiny"),  # yaml.safe_load would silently keep 'other'
    ('"name": other\n', "name", "name: tiny"),  # quoting a key does not make it another key
    ("training: {epochs: 1, epochs: 2}\n", "training.epochs", "training: {epochs: 1, epochs: 2}"),
])
def test_duplicate_keys_are_refused_naming_the_key_and_both_lines(duplicate, field, first, tmp_path: Path):
    space_file = tmp_path / "dup.yaml"
    text = yaml.safe_dump(TINY) + duplicate
    space_file.write_text(text)
    with pytest.raises(SpaceError) as info:
        SearchSpace.from_file(space_file)
    last = text.count("\n")
    assert str(info.value) == (f"{space_file}: {field}: duplicate key at line {last}; it is first given at line "
                               f"{line_of(text, first)}; keep only one")


@pytest.mark.parametrize("extra, message", [
    # safe_load would merge the epochs silently; the recursion and the int() ValueError were tracebacks
    ("training: {<<: {epochs: 1}, epochs: 2}\n", "training: YAML merge key (<<) at line {last}; space files refuse"),
    ("seed: " + "9" * 5000 + "\n", "seed: an integer of 5000 characters at line {last}; at most 40 are allowed"),
    ("description: " + "[" * 5000 + "]" * 5000 + "\n",
     "description" + "[0]" * 15 + ": nested more than 16 levels deep at line {last}"),
])
def test_yaml_features_no_space_file_needs_are_refused(extra, message, tmp_path: Path):
    space_file = tmp_path / "bad.yaml"
    text = yaml.safe_dump(TINY) + extra
    space_file.write_text(text)
    with pytest.raises(SpaceError) as info:
        SearchSpace.from_file(space_file)
    assert str(info.value).startswith(f"{space_file}: " + message.format(last=text.count("\n")))
    assert len(str(info.value)) < MAX_MESSAGE_CHARS


def test_a_flood_of_values_is_refused_at_the_10001st(tmp_path: Path):
    flood = tmp_path / "flood.yaml"
    flood.write_text("[" + "1, " * 200_000 + "1]\n")  # 600 KB, under the size limit; safe_load took 14 s
    with pytest.raises(SpaceError) as info:
        SearchSpace.from_file(flood)
    # value 1 is the list, item i is value i + 2: the 10001st is item 9999
    assert str(info.value) == (f"{flood}: [9999]: more than 10000 values in one file at line 1; a space file has a "
                               "few hundred, automq bounds every size (see Limits in docs/space-files.md)")


def test_files_beyond_the_size_limits_are_refused_unread(tmp_path: Path):
    space_file = tmp_path / "huge.yaml"
    with space_file.open("wb") as stream:
        stream.truncate(2 * 1024 * 1024)  # sparse: 2 MiB of zeros
    with pytest.raises(SpaceError, match=r"huge.yaml: larger than 1024 KiB; a space file is a few KiB"):
        SearchSpace.from_file(space_file)
    table = tmp_path / "huge.json"
    with table.open("wb") as stream:
        stream.truncate(16 * 1024 * 1024 + 1)
    with pytest.raises(SpaceError, match=r"huge.json: larger than 16 MiB"):
        CostModel(latency_space(tmp_path, table.name))


@pytest.mark.parametrize("path, value, message", [
    ("network.stem.channels", BILLION, "network.stem.channels: expected a value <= 8192, got 1000000000; automq "
                                       "bounds every size (see Limits in docs/space-files.md)"),
    ("network.head.channels", BILLION, "network.head.channels: expected a value <= 8192, got 1000000000"),
    ("network.stages.1.channels", BILLION, "network.stages[1].channels: expected a value <= 8192"),
    ("network.stages.1.depth", [BILLION], "network.stages[1].depth[0]: expected a value <= 32, got 1000000000"),
    ("network.stages.1.kernel_size", [BILLION + 1], "network.stages[1].kernel_size[0]: expected a value <= 31"),
    ("network.stages.1.expand_ratio", [BILLION], "network.stages[1].expand_ratio[0]: expected a value <= 16"),
    ("network.width_mult", [1e9], "network.width_mult[0]: expected a value <= 4.0, got 1000000000.0"),
    ("network.stages.1.depth", list(range(1, MILLION + 1)),
     "network.stages[1].depth: a list of 1000000 entries, at most 64 allowed"),
    ("formats.weights", ["int8"] * MILLION, "formats.weights: a list of 1000000 entries, at most 64 allowed"),
    ("network.stages", [DS_STAGE] * MILLION, "network.stages: a list of 1000000 entries"),
    ("formats.overrides", [{"layers": "conv_stem", "weights": ["int8"]}] * MILLION,
     "formats.overrides: a list of 1000000 entries"),
    ("objectives", [{"metric": "accuracy"}] * MILLION, "objectives: a list of 1000000 entries"),
    ("dataset.input_size", BILLION, "dataset.input_size: expected a value <= 2048"),
    ("dataset.num_classes", BILLION, "dataset.num_classes: expected a value <= 100000"),
    ("dataset.val_size", BILLION, "dataset.val_size: expected a value <= 10000000"),
    ("training", {"batch_size": BILLION}, "training.batch_size: expected a value <= 65536"),
    ("training", {"num_random": BILLION}, "training.num_random: expected a value <= 64"),
    ("search", {"trials": BILLION}, "search.trials: expected a value <= 1000000"),
    ("search", {"calib_size": BILLION}, "search.calib_size: expected a value <= 10000000"),
    ("search", {"calib_blocks": BILLION}, "search.calib_blocks: expected a value <= 64"),
    ("search", {"calib_contenders": BILLION}, "search.calib_contenders: expected a value <= 1000"),
    ("seed", 2**64, "seed: expected a value <= 4294967295"),
    ("name", "x" * MILLION, "name: a string of 1000000 characters, at most 200 allowed; shorten it"),
    ("description", "x" * MILLION, "description: a string of 1000000 characters, at most 10000 allowed"),
    ("dataset.root", "x" * MILLION, "dataset.root: a string of 1000000 characters, at most 4096 allowed"),
])
def test_every_size_is_bounded_before_anything_is_allocated(path, value, message):
    with pytest.raises(SpaceError) as info:
        read_in_full(set_path(TINY, path, value))
    assert str(info.value).startswith(f"tiny.yaml: {message}")
    assert len(str(info.value)) < MAX_MESSAGE_CHARS


LONG = "x" * 150  # under the 200-character limit of a name, so it reaches the message that echoes it


@pytest.mark.parametrize("path, value, field", [
    ("formats.weights", [LONG], "formats.weights[0]: unknown format 'xxx"),
    ("dataset.name", LONG, "dataset.name: unknown dataset 'xxx"),
    ("objectives", [{"metric": LONG}], "objectives[0].metric: unknown metric 'xxx"),
    ("objectives", [{"metric": "bitops", "mode": LONG}], "objectives[0].mode: expected 'min' or 'max', got 'xxx"),
    ("network.stages.1.type", LONG, "network.stages[1].type: expected 'ds' (depthwise-separable) or 'ir'"),
    ("network.stages.1.stride", 10**400, "network.stages[1].stride: expected 1 or 2, got 1000"),
    ("network.stages.1.depth", [10**5000], "network.stages[1].depth[0]: expected a value <= 32, got <int too"),
    ("network.stages.1." + LONG, 1, "network.stages[1].xxx"),
    ("formats.overrides.0.layers", "(" + LONG, "formats.overrides[0].layers: invalid regular expression '(xxx"),
    ("formats.overrides.0.layers", LONG, "formats.overrides[0].layers: 'xxx"),  # matches no layer
])
def test_echoed_values_are_cut_to_60_characters(path, value, field):
    with pytest.raises(SpaceError) as info:
        read_in_full(set_path(TINY, path, value))
    assert str(info.value).startswith(f"tiny.yaml: {field}")
    assert "x" * 61 not in str(info.value) and len(str(info.value)) < MAX_MESSAGE_CHARS


def latency_space(folder: Path, table: str) -> SearchSpace:
    """The tiny space with a latency objective reading ``folder/table``, written to and read from a file."""
    data = set_path(TINY, "objectives", [{"metric": "accuracy"}, {"metric": "latency"}])
    space_file = folder / "space.yaml"
    space_file.write_text(yaml.safe_dump({**data, "latency_table": table}))
    return SearchSpace.from_file(space_file)


@pytest.mark.parametrize("content, message", [
    ('{"k": 1, "k": 2}', "lat.json: entry 'k': duplicate key; keep only one measurement per layer"),
    ('{"k": NaN}', "lat.json: entry 'k': expected a non-negative number of milliseconds, got nan"),
    ('{"k": Infinity}', "lat.json: entry 'k': expected a non-negative number of milliseconds, got inf"),
    ('{"k": ' + "9" * 5000 + "}", "lat.json: entry 'k': expected a non-negative number of milliseconds, "
                                  "got inf"),  # 9...9 overflows a float; int() would raise past 4300 digits
    ('{"k": ' + "[" * 100_000 + "]" * 100_000 + "}", "lat.json: a latency table is one flat JSON object"),
    ('{"' + LONG + '": true}', "lat.json: entry 'xxx"),
])
def test_latency_tables_are_read_bounded(content, message, tmp_path: Path):
    (tmp_path / "lat.json").write_text(content)
    with pytest.raises(SpaceError) as info:
        CostModel(latency_space(tmp_path, "lat.json"))
    assert str(info.value).startswith(f"{tmp_path}/{message}")
    assert "x" * 61 not in str(info.value) and len(str(info.value)) < MAX_MESSAGE_CHARS


def test_a_latency_table_path_too_long_for_the_file_system_is_an_error(tmp_path: Path):
    with pytest.raises(SpaceError, match=r"latency_table: cannot access '.*': File name too long; give the path"):
        latency_space(tmp_path, "x" * 300)  # one path component beyond the 255 bytes Linux allows


def test_decision_is_a_plain_record():
    decision = tiny().decisions()[0]
    assert decision == Decision("width_mult", (0.5, 1.0))
    assert set(tiny().weight_formats) <= set(format_names())


def test_shipped_spaces_are_found_in_a_source_tree_that_is_not_installed(tmp_path) -> None:
    """``PYTHONPATH=.`` in a checkout, as on the GPU machine where automq is not installed (there the missing
    package data ``automq.spaces`` stopped every import of the package): the shipped spaces come from the tree's
    ``spaces/``. ``-S`` skips site processing, so the editable install's finder is not loaded and only the tree and
    the dependencies (site-packages on the path as a plain folder) are importable."""
    import subprocess
    import sys
    import sysconfig

    code = "from automq.space.space import SHIPPED_SPACES as S; import automq; print(automq.__file__); print(S)"
    env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{sysconfig.get_paths()['purelib']}", "PATH": os.environ["PATH"]}
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    package, spaces = done.stdout.split()
    assert Path(package) == ROOT / "automq" / "__init__.py"
    assert Path(spaces) == ROOT / "spaces" and (Path(spaces) / "mbv2_fmnist.yaml").is_file()


# ------------------------------------------------------------------------------------------------ narrower copies
def _tiny(**changes) -> SearchSpace:
    return SearchSpace.from_dict(tiny_space_data(changes), source="<tiny>")


NARROWER = {  # each: a copy of the tiny space every candidate of which is one of the tiny space's
    "fewer weight formats": {"formats": {"weights": ["int4"]}},
    "fewer kernels and expansions": {"network": {"stages": [DS_STAGE, {**IR_STAGE, "kernel_size": [5],
                                                                         "expand_ratio": [3]}]}},
    "shallower": {"network": {"stages": [DS_STAGE, {**IR_STAGE, "depth": [1]}]}},
    "one width": {"network": {"width_mult": [0.5]}},
    "other objectives and training": {"objectives": [{"metric": "accuracy"}, {"metric": "size"}],
                                      "training": {"epochs": 1}},
}
WIDER = {  # each: a copy with a candidate outside the tiny space, and the field that says so
    "another weight format": ({"formats": {"weights": ["int4", "int2"]}}, "conv_stem.w_fmt: 'int2' is not one of"),
    "deeper": ({"network": {"stages": [DS_STAGE, {**IR_STAGE, "depth": [1, 3]}]}}, "stages.1.depth: 3"),
    "another kernel": ({"network": {"stages": [DS_STAGE, {**IR_STAGE, "kernel_size": [7]}]}},
                       "blocks.1.0.kernel_size: 7"),
    "wider": ({"network": {"width_mult": [1.0, 1.5]}}, "width_mult: 1.5"),
    "another stride": ({"network": {"stages": [DS_STAGE, {**IR_STAGE, "stride": 1}]}}, "network.stages[1]"),
    "another head": ({"network": {"head": {"channels": 48}}}, "network: the stem, the head"),
    "other images": ({"dataset": {"input_size": 32}}, "dataset.input_size is 32, not 16"),
}


@pytest.mark.parametrize("name", NARROWER)
def test_a_narrower_copy_is_inside_and_each_of_its_candidates_is_one_of_the_wider_space(name: str) -> None:
    outer, inner = _tiny(), _tiny(**NARROWER[name])
    assert inner.outside(outer) is None
    rng = np.random.default_rng(0)
    for _ in range(50):
        outer.validate_candidate(inner.sample(rng))  # the oracle: the wider space's own check


@pytest.mark.parametrize("name", WIDER)
def test_a_copy_with_other_choices_names_the_first_one_outside(name: str) -> None:
    changes, reason = WIDER[name]
    assert reason in _tiny(**changes).outside(_tiny())
