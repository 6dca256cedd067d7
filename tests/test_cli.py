"""The ``automq`` command line, run in-process on the tests' tiny space: each command's output equals the library
computing the same thing, ``search --option`` reaches the strategy's constructor, and bad input is one
``automq: error:`` line with exit status 2."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml

from automq.cli import main, parse_option
from automq.cost import CostModel
from automq.oneshot.evaluate import OneShotEstimator
from automq.numerics.formats import format_names, get_format
from automq.search.results import load_trials
from automq.space.space import SearchSpace
from automq.model.supernet import load_model
from automq.oneshot.train import load_space_data, load_supernet

from _spaces import SpaceFactory, tiny_space_data

# The space trains 2 epochs on 128 images, so `train-supernet --epochs 1 --subset 64` shows its overrides.
SPACE_CHANGES = {
    "dataset": {"val_size": 64},
    "training": {"epochs": 2, "batch_size": 32, "num_random": 1, "train_size": 128},
    "search": {"eval_size": 64, "calib_size": 32, "trials": 4},
}
UNIFORM_PAIRS = 4  # weights {int4, int8} x activations {int8, fp8_e4m3}
EPS32 = torch.finfo(torch.float32).eps


def run_cli(*argv: str | Path) -> int:
    return main([str(arg) for arg in argv])


def single_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a user error prints on stderr (asserting there is exactly one)."""
    err = capsys.readouterr().err
    assert err.startswith("automq: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def space_file(tiny_space: SpaceFactory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tiny_space(SPACE_CHANGES, folder=tmp_path_factory.mktemp("space")).source)


@pytest.fixture(scope="module")
def run_dir(space_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("train") / "run"
    assert run_cli("train-supernet", space_file, "--out", run, "--epochs", "1", "--subset", "64") == 0
    return run


@pytest.fixture(scope="module")
def random_search(space_file: Path, run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("search") / "random"
    assert run_cli("search", space_file, "--supernet", run_dir, "--strategy", "random", "--trials", 3,
                   "--out", out) == 0
    return out


@pytest.fixture(scope="module")
def limpq_search(space_file: Path, run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("search") / "limpq"
    # alpha=1e0 must reach LIMPQ as a float: it compares alpha with 0 and would reject the string '1e0'.
    assert run_cli("search", space_file, "--supernet", run_dir, "--strategy", "limpq", "--option", "steps=2",
                   "--option", "batch_size=32", "--option", "alpha=1e0", "--trials", 3, "--out", out) == 0
    return out


def run_options(search_dir: Path) -> dict:
    return json.loads((search_dir / "run.json").read_text())["options"]


def bn_inputs(model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The float64 input of every batch norm of a copy of ``model`` in train mode on ``images``: what each BN
    sees when its statistics are computed from ``images`` as one batch."""
    model = copy.deepcopy(model).train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    seen: list[torch.Tensor] = []
    for bn in norms:
        bn.register_forward_pre_hook(lambda module, args: seen.append(args[0].double()))
    with torch.no_grad():
        model(images)
    return seen


def one_shot_by_hand(run_dir: Path, space: SearchSpace, candidate) -> dict[str, float]:
    """Accuracy and mean float64 cross-entropy of ``candidate`` extracted from the run's supernet (a static timm
    model, not the supernet's elastic path), every BN's statistics taken by torch from the space's first
    ``calib_size`` training images as one batch, scored on the first ``eval_size`` validation images: what the
    one-shot estimate means. (Statistics computed here in float64 would differ from torch's float32 ones in the
    last bit, which a fake-quantizer downstream can turn into a whole quantization step.)"""
    data = load_space_data(space)
    model = load_supernet(run_dir, space).extract(candidate)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: one batch gives exactly its statistics
    images, labels = (t[: space.search.eval_size] for t in data.val.tensors)
    with torch.no_grad():
        model.train()(data.train.tensors[0][: space.search.calib_size])
        logits = model.eval()(images).double()
    return {"accuracy": (logits.argmax(1) == labels).double().mean().item(),
            "loss": torch.nn.functional.cross_entropy(logits, labels).item()}


# ------------------------------------------------------------------------------------------ formats, space
def test_formats_lists_every_registered_format_with_its_bits(capsys) -> None:
    assert run_cli("formats") == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["name", "family", "bits", "bits/elem"]
    listed = {}
    for row in rows:
        name, family, bits, bits_per_element = row.split()[:4]
        listed[name] = (family, int(bits), float(bits_per_element))
    assert list(listed) == format_names()
    for name, row in listed.items():
        fmt = get_format(name)
        assert row == (fmt.family, fmt.bits, fmt.bits_per_element)
    assert listed["mxfp4_e2m1"][2] == 4 + 8 / 32  # the shared E8M0 scale of each block of 32


def test_space_validate_accepts_a_valid_file(space_file, capsys) -> None:
    assert run_cli("space", "validate", space_file) == 0
    assert capsys.readouterr().out == f"{space_file}: valid search space 'tiny'\n"


@pytest.mark.parametrize(("change", "field"), [
    ({"formats": {"weights": ["int4", "int7"]}}, "formats.weights[1]"),
    ({"network": {"width_mult": [0]}}, "network.width_mult[0]"),
    ({"objectives": [{"metric": "speed"}]}, "objectives[0].metric"),
])
def test_space_validate_names_the_broken_field(change, field, tmp_path, capsys) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(tiny_space_data(change)))
    assert run_cli("space", "validate", broken) == 2
    assert f"{broken}: {field}:" in single_error_line(capsys)


def test_space_validate_refuses_an_alias_bomb_in_one_line(tmp_path, capsys) -> None:
    # 'Billion laughs': `name: *a8` would expand to 9**9 strings; the loader refuses the first anchor instead.
    space = {key: value for key, value in tiny_space_data().items() if key != "name"}
    lines = ["description:", "  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 9)] + ["name: *a8", ""]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(yaml.safe_dump(space) + "\n".join(lines))
    assert run_cli("space", "validate", bomb) == 2
    assert f"{bomb}: description.a0: YAML anchor '&a0' at line" in single_error_line(capsys)


def test_space_info_prints_the_exact_candidate_count(space_file, capsys) -> None:
    assert run_cli("space", "info", space_file) == 0
    count = re.search(r"^candidates:\s+(\d+) ", capsys.readouterr().out, re.MULTILINE)
    assert count is not None and int(count.group(1)) == SearchSpace.from_file(space_file).count()


# ------------------------------------------------------------------------------- train, estimate, export
def test_train_supernet_overrides_the_space_s_epochs_and_training_images(run_dir) -> None:
    training = json.loads((run_dir / "run.json").read_text())["config"]["training"]
    assert (training["epochs"], training["train_size"]) == (1, 64)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert (run_dir / "supernet.pt").is_file()


def test_train_float_then_a_supernet_from_it(space_file, tmp_path, capsys) -> None:
    floats = tmp_path / "float"
    assert run_cli("train-float", space_file, "--out", floats, "--epochs", "1", "--subset", "64") == 0
    assert f"float network written to {floats / 'float.pt'}" in capsys.readouterr().out
    record = json.loads((floats / "float.json").read_text())
    assert (record["config"]["epochs"], record["config"]["train_images"]) == (1, 64)
    run = tmp_path / "run"
    assert run_cli("train-supernet", space_file, "--out", run, "--epochs", "1", "--subset", "64",
                   "--init-float", floats, "--lr", "0.01") == 0
    config = json.loads((run / "run.json").read_text())["config"]
    assert config["training"]["lr"] == 0.01 and config["init_float"]["source"] == str(floats / "float.pt")
    capsys.readouterr()
    assert run_cli("train-supernet", space_file, "--out", tmp_path / "other", "--init-float", run) == 2
    assert "no such checkpoint file" in single_error_line(capsys)


def test_estimate_prints_the_one_shot_estimate_of_each_candidate_form(run_dir, random_search, capsys) -> None:
    space = SearchSpace.from_file(run_dir / "space.yaml")
    trial = load_trials(random_search)[1]
    assert run_cli("estimate", run_dir, "largest", space.smallest().to_json(), f"{random_search}:1") == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    candidates = (space.largest(), space.smallest(), trial.candidate)
    assert [p["candidate_id"] for p in printed] == [c.id for c in candidates]
    for line, candidate in zip(printed, candidates):
        expected = one_shot_by_hand(run_dir, space, candidate)
        assert line["accuracy"] == expected["accuracy"]
        # float32 cross-entropies (a log-sum-exp: a few eps of the logits' magnitude) summed over eval_size
        # images, one rounding each, against float64 here
        assert line["loss"] == pytest.approx(expected["loss"], rel=4 * space.search.eval_size * EPS32)
        assert {k: line[k] for k in CostModel(space).metrics(candidate)} == CostModel(space).metrics(candidate)
    assert printed[2]["accuracy"] == trial.metrics["accuracy"]  # the search scored it with the same estimator


def test_estimate_can_fine_tune_each_candidate_first(run_dir, capsys) -> None:
    assert run_cli("estimate", run_dir, "smallest", "--finetune-images", 64) == 0
    printed = json.loads(capsys.readouterr().out)
    estimator = OneShotEstimator.from_run(run_dir, finetune_images=64)
    assert printed == {"candidate_id": estimator.space.smallest().id, **estimator.estimate(estimator.space.smallest())}
    by_hand = one_shot_by_hand(run_dir, estimator.space, estimator.space.smallest())
    assert printed["oneshot_accuracy"] == by_hand["accuracy"]
    assert run_cli("estimate", run_dir, "smallest", "--finetune-images", -1) == 2
    assert "--finetune-images must be at least 0 (0: one-shot only), got -1" in single_error_line(capsys)


def test_estimate_names_a_candidate_it_cannot_read(run_dir, capsys) -> None:
    assert run_cli("estimate", run_dir, "no_such_candidate.json") == 2
    assert "candidate 'no_such_candidate.json': no such file" in single_error_line(capsys)


def test_export_writes_the_extracted_candidate_with_recalibrated_bn(run_dir, tmp_path) -> None:
    path = tmp_path / "model.pt"
    assert run_cli("export", run_dir, "smallest", "--out", path, "--calib-images", 64) == 0
    model, candidate = load_model(path)
    space = SearchSpace.from_file(run_dir / "space.yaml")
    assert candidate == space.smallest()
    # the weights are the supernet's for this candidate (extract itself is checked against timm in test_supernet)
    weights = {k: v for k, v in load_supernet(run_dir, space).extract(candidate).state_dict().items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    # every BN holds the mean and unbiased variance of its input over the first 64 training images
    calib = load_space_data(space).train.tensors[0][:64]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn, seen in zip(norms, bn_inputs(model, calib), strict=True):
        mean, var = seen.mean(dim=(0, 2, 3)), seen.var(dim=(0, 2, 3), unbiased=True)
        # torch's CPU kernels reduce each channel's n values with cascade (pairwise) sums, in float64 on some paths
        # and in float32 on others (channels-last), so the float32 statistics are within log2(n) eps of the float64
        # reference, relative to the variance; the mean's error is relative to the spread it sits in, not to the
        # mean, which may be near 0
        ulps = EPS32 * math.log2(seen[:, 0].numel())
        torch.testing.assert_close(bn.running_var.double(), var, rtol=ulps, atol=0)
        spread = float((mean.abs() + var.sqrt()).max())
        torch.testing.assert_close(bn.running_mean.double(), mean, rtol=0, atol=ulps * spread)


# ---------------------------------------------------------------------------------------- search, report
def test_search_random_logs_its_trials(random_search) -> None:
    trials = load_trials(random_search)
    assert [t.number for t in trials] == [0, 1, 2]
    assert {(t.status, t.strategy) for t in trials} == {("ok", "random")}
    assert run_options(random_search) == {}


def test_search_option_reaches_the_strategy_and_is_recorded(limpq_search) -> None:
    trials = load_trials(limpq_search)
    assert len(trials) == 3 and {t.strategy for t in trials} == {"limpq"}
    assert run_options(limpq_search) == {"steps": 2, "batch_size": 32, "alpha": 1.0}


def test_search_prints_what_the_measurement_and_each_solve_cost(space_file, run_dir, tmp_path, capsys) -> None:
    assert run_cli("search", space_file, "--supernet", run_dir, "--strategy", "clado_diag", "--option",
                   "calib_images=32", "--trials", 2, "--out", tmp_path / "clado") == 0
    err = capsys.readouterr().err
    assert len(re.findall(r"^automq\.strategies\.clado: .* in [\d.]+ s", err, re.M)) == 1
    solve = r"^automq\.strategies\._solvers: milp solved \d+ layers x \d+ options in ([\d.]+) s$"
    solves = re.findall(solve, err, re.M)
    recorded = [t.info["solve_s"] for t in load_trials(tmp_path / "clado")]
    assert [float(s) for s in solves] == pytest.approx(recorded, abs=1e-3)


def test_tune_shortcuts_merge_with_options(space_file, run_dir, tmp_path) -> None:
    out = tmp_path / "tune"
    assert run_cli("search", space_file, "--supernet", run_dir, "--strategy", "tune", "--sampler", "random",
                   "--workers", 0, "--option", "batch_size=2", "--trials", 2, "--out", out) == 0
    assert run_options(out) == {"batch_size": 2, "sampler": "random", "workers": 0}
    assert len(load_trials(out)) == 2


def test_evolution_is_the_default_search_and_takes_the_workers_shortcut(space_file, run_dir, tmp_path) -> None:
    out = tmp_path / "evolution"
    assert run_cli("search", space_file, "--supernet", run_dir, "--workers", 0, "--trials", 3, "--out", out) == 0
    assert run_options(out) == {"workers": 0}
    assert [t.strategy for t in load_trials(out)] == ["evolution"] * 3


@pytest.mark.parametrize(("arguments", "message"), [
    (["--strategy", "random", "--option", "max_draws"], "--option 'max_draws': expected KEY=VALUE"),
    (["--strategy", "random", "--option", "=3"], "--option '=3': expected KEY=VALUE"),
    (["--strategy", "random", "--option", "max_draws=[1"], "--option max_draws: '[1' is not a YAML value"),
    (["--strategy", "random", "--option", "max_drawz=3"], "unexpected keyword argument 'max_drawz'"),
    (["--strategy", "random", "--option", "max_draws=0"], "max_draws must be >= 1, got 0"),
    (["--strategy", "limpq", "--sampler", "tpe"], "--sampler is not an option of the 'limpq' strategy"),
    (["--strategy", "uniform", "--workers", "0"], "--workers is not an option of the 'uniform' strategy"),
    (["--strategy", "evolution", "--sampler", "tpe"], "--sampler is not an option of the 'evolution' strategy"),
    (["--sampler", "tpe"], "--sampler is not an option of the 'evolution' strategy but of tune (--strategy tune)"),
    (["--strategy", "tune", "--sampler", "tpe", "--option", "sampler=gp"], "the strategy option 'sampler' is given "
                                                                           "twice"),
    (["--strategy", "nope"], "unknown strategy 'nope'"),
])
def test_bad_search_options_fail_before_anything_is_written(arguments, message, space_file, tmp_path,
                                                             capsys) -> None:
    out = tmp_path / "search"
    # A supernet that does not exist: option errors must come first, before any model is loaded.
    assert run_cli("search", space_file, "--supernet", tmp_path / "none", *arguments, "--out", out) == 2
    assert message in single_error_line(capsys)
    assert not out.exists()


# repr() compares types too: 200 must stay an int, 3e7 must become a float.
@pytest.mark.parametrize(("text", "key", "value"), [
    ("steps=200", "steps", 200),
    ("levels=[3e7,6e7]", "levels", [3e7, 6e7]),
    ("lr=1.5e-3", "lr", 0.0015),
    ("target=-2E+3", "target", -2000.0),
    ("eta_range=[0.01, 10]", "eta_range", [0.01, 10]),
    ("sampler=tpe", "sampler", "tpe"),
    ("arch='3e7'", "arch", "3e7"),
    ("metric=null", "metric", None),
    ("note=a=b", "note", "a=b"),
])
def test_option_values_are_yaml_with_exponent_floats(text, key, value) -> None:
    assert repr(parse_option(text)) == repr((key, value))


def test_report_of_two_searches(random_search, limpq_search, tmp_path, capsys) -> None:
    assert run_cli("report", random_search, limpq_search, "--out", tmp_path / "report") == 0
    html = (tmp_path / "report" / "report.html").read_text()
    assert "limpq" in html and "random" in html
    assert capsys.readouterr().out.endswith(f"report written to {tmp_path / 'report'}/report.html "
                                            "(and report.md, trials.csv, pareto.csv)\n")


# ------------------------------------------------------------------------------------------------- demo
def test_demo_trains_searches_and_reports_end_to_end(space_file, tmp_path) -> None:
    out = tmp_path / "demo"
    assert run_cli("demo", space_file, "--out", out, "--trials", 3, "--workers", 0) == 0
    assert len((out / "supernet" / "metrics.jsonl").read_text().splitlines()) == 2  # the space's epochs
    assert len(load_trials(out / "search-evolution")) == 3
    assert len(load_trials(out / "search-uniform")) == UNIFORM_PAIRS
    assert run_options(out / "search-evolution") == {"workers": 0}
    assert (out / "report" / "report.html").is_file()
    final = json.loads((out / "report" / "final.json").read_text())  # the front measured on the test split
    assert set(final["summary"]) == {"evolution"} and final["test_images"] > 0
    assert "Final measurement (test split)" in (out / "report" / "report.md").read_text()
