"""experiments/compare_all.py: configs are checked before anything runs, every strategy gets the same number of
evaluations (per-level strategies one level per evaluation), hypervolumes are also compared at equal trial counts,
the fronts are measured on the test split with intervals and a win needs two paired standard errors, a failing
strategy is recorded while the others finish, and a rerun keeps finished searches."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from automq.cost import cost_range
from automq.errors import AutomqError
from automq.search.results import load_trials

from _spaces import SpaceFactory

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "compare_all.py"
sys.path.insert(0, str(SCRIPT.parent))  # the scripts import their siblings


@pytest.fixture(scope="module")
def compare_all() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compare_all", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def write_config(folder: Path, space: Path, **changes: object) -> Path:
    config = {
        "description": "test", "space": str(space), "threads": 1, "supernet": {"epochs": 1, "subset": 64},
        "evaluations": 3, "levels": [0.5, 0.9],
        "strategies": {"uniform": {"strategy": "uniform"}, "random": {"strategy": "random"},
                       "ssps": {"strategy": "ssps", "steps": 2, "batch_size": 8},
                       "limpq": {"strategy": "limpq", "steps": 2, "batch_size": 8}},
        **changes,
    }
    path = folder / "compare_all_test.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("name", ["cpu-small", "gpu"])
def test_shipped_configs_name_registered_strategies_with_valid_options(compare_all: ModuleType, name: str) -> None:
    config = compare_all.load_config(name)
    assert config.space.is_file()
    assert {"uniform", "random", "limpq", "clado", "clado_diag", "ssps", "differentiable"} <= {
        strategy for strategy, _ in config.strategies.values()}


@pytest.mark.parametrize(("changes", "message"), [
    ({"evaluation": 3}, "unknown keys ['evaluation']"),
    ({"strategies": {"x": {"strategy": "nope"}}}, "strategies.x.strategy: unknown strategy 'nope'"),
    ({"strategies": {"limpq": {"strategy": "limpq", "stepz": 3}}}, "strategies.limpq: limpq rejects its options"),
    ({"levels": [0.5, 2.0]}, "levels must be fractions"),
])
def test_bad_config_names_the_field(compare_all: ModuleType, tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(AutomqError, match=re.escape(message)):
        compare_all.load_config(write_config(tmp_path, tmp_path / "space.yaml", **changes))


def test_unknown_config_name_lists_the_shipped_ones(compare_all: ModuleType) -> None:
    with pytest.raises(AutomqError, match="shipped configs: .*cpu-small"):
        compare_all.load_config("laptop")


@pytest.mark.parametrize(("levels", "count", "spread"), [
    ([0.2, 0.35, 0.5, 0.7], 6, [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]),  # one level per evaluation, evenly from 0.2 to 0.7
    ([0.7, 0.2], 2, [0.2, 0.7]),  # exactly as many as evaluations: the config's own
    ([0.2, 0.7], 1, [0.7]),
])
def test_levels_spread_to_one_per_evaluation(compare_all: ModuleType, levels: list[float], count: int,
                                             spread: list[float]) -> None:
    got = compare_all.spread_levels(levels, count)
    assert len(got) == count
    assert all(abs(a - b) <= 4 * math.ulp(1.0) for a, b in zip(got, spread))  # a few roundings of numbers <= 1


def test_per_level_strategies_get_one_bitops_level_per_evaluation(compare_all: ModuleType, tmp_path: Path,
                                                                  tiny_space: SpaceFactory) -> None:
    space = tiny_space(folder=tmp_path)
    config = compare_all.load_config(write_config(tmp_path, space.path))  # 3 evaluations, levels 0.5 .. 0.9
    largest = cost_range(space)["bitops"][1]
    expected = [0.5 * largest, 0.7 * largest, 0.9 * largest]
    for name, option in (("ssps", "levels"), ("fliqs", "targets")):
        got = compare_all.level_options(config, space, name, {})[option]
        assert all(abs(a - b) <= 4 * math.ulp(largest) for a, b in zip(got, expected, strict=True))
    assert compare_all.level_options(config, space, "ssps", {"levels": [7.0]}) == {"levels": [7.0]}
    assert compare_all.level_options(config, space, "random", {}) == {}


def test_hypervolumes_at_equal_evaluations_cut_every_curve_at_the_fewest_competing_trials(
        compare_all: ModuleType) -> None:
    runs = [{"run": "random", "strategy": "random", "hypervolume_curve": [0.1, 0.2, 0.3, 0.4]},
            {"run": "ssps", "strategy": "ssps", "hypervolume_curve": [0.5, 0.6]},
            {"run": "uniform", "strategy": "uniform", "hypervolume_curve": [0.7]},  # the reference sets no cut
            {"run": "broken", "strategy": "clado", "hypervolume_curve": []}]  # a failed search has no curve
    assert compare_all.equal_evaluation_hypervolumes(runs) == {
        "trials": 2, "hypervolume": {"random": 0.2, "ssps": 0.6, "uniform": 0.7}}


def test_the_test_split_table_gives_intervals_and_the_verdict(compare_all: ModuleType) -> None:
    difference, se = 0.012, 0.005
    final = {"status": "measured", "test_images": 2000, "margin_se": 2.0, "summary": {"dnas": {
        "win": 1, "tie": 0, "loss": 0, "none": 1, "budgets": 2}}, "comparisons": [
        {"run": "dnas", "budget": 2.5e7, "uniform": "int2/int4", "uniform_test_accuracy": 0.85,
         "searched_test_accuracy": 0.862, "difference": difference, "se": se,
         "ci95": [difference - 1.96 * se, difference + 1.96 * se], "verdict": "win"},
        {"run": "dnas", "budget": 1e7, "uniform": "int2/int2", "uniform_test_accuracy": 0.5, "verdict": "none"}]}
    lines = compare_all.final_section(final)
    # 95% half-widths by hand: 1.96 * sqrt(0.85 * 0.15 / 2000) = 1.565 points, 1.96 * sqrt(0.862 * 0.138 / 2000)
    # = 1.512, 1.96 * sqrt(0.25 / 2000) = 2.191
    assert "| 2.5e+07 | int2/int4 | 85.00% ± 1.56 | dnas | 86.20% ± 1.51 | +1.20 [+0.22, +2.18] | win |" in lines
    assert "| 1e+07 | int2/int2 | 50.00% ± 2.19 | dnas | - | - | no candidate |" in lines
    assert lines[-1] == "Budgets won / tied / lost / without a candidate: dnas 1/0/0/1."
    assert compare_all.final_section({"status": "not measured", "reason": "no test split"})[-1] == (
        "Not measured: no test split")


def test_evaluations_must_be_positive(compare_all: ModuleType, capsys: pytest.CaptureFixture) -> None:
    assert compare_all.main(["--evaluations", "0"]) == 2
    assert capsys.readouterr().err == "compare_all: error: --evaluations must be a positive integer, got 0\n"


def test_run_records_a_failure_reports_the_rest_and_keeps_finished_searches(
        compare_all: ModuleType, tmp_path: Path, tiny_space: SpaceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    space = tiny_space({"dataset": {"val_size": 32}, "search": {"eval_size": 32, "calib_size": 16}}, folder=tmp_path)
    config = write_config(tmp_path, space.path, evaluations=5)
    work, results = tmp_path / "work", tmp_path / "results"
    argv = ["--config", str(config), "--work", str(work), "--results", str(results), "--evaluations", "3"]
    real_search = compare_all.run_search

    def random_crashes(space, **kwargs):
        if kwargs["strategy"] == "random":
            raise RuntimeError("worker lost")
        return real_search(space, **kwargs)

    monkeypatch.setattr(compare_all, "run_search", random_crashes)
    assert compare_all.main(argv) == 1  # a failed strategy makes the exit status non-zero
    summary = json.loads((results / "compare_all.json").read_text())
    status = {run["label"]: run for run in summary["strategies"]}
    assert status["random"]["status"] == "failed" and "worker lost" in status["random"]["error"]
    assert {status[label]["status"] for label in ("uniform", "ssps", "limpq")} == {"ran"}
    assert len(load_trials(work / "searches" / "uniform")) == 3  # --evaluations 3 for everyone, not the config's 5
    assert len(status["ssps"]["options"]["levels"]) == 3  # a per-level strategy: one level per evaluation
    # on the tiny space all three levels give ssps the same candidate, which is scored once and reported as short
    assert status["ssps"]["evaluations"] == status["ssps"]["distinct"] == 1 == len(load_trials(work / "searches" /
                                                                                                "ssps"))
    assert len(load_trials(results / "searches" / "limpq")) == len(load_trials(work / "searches" / "limpq")) > 0
    report = (results / "report.md").read_text()
    assert "uniform" in report and "limpq" in report and (results / "report.html").is_file()
    final = json.loads((results / "final.json").read_text())  # the fronts measured on the test split
    assert summary["final"]["comparisons"] == final["comparisons"] and final["comparisons"]
    for comparison in final["comparisons"]:
        if comparison["verdict"] in ("win", "loss"):  # only beyond two paired standard errors
            assert abs(comparison["difference"]) > 2 * comparison["se"]
    assert "random" not in {p.name for p in (results / "searches").iterdir()}

    monkeypatch.setattr(compare_all, "run_search", real_search)
    trained = (work / "supernet" / "supernet.pt").stat().st_mtime_ns
    assert compare_all.main(argv) == 0
    rerun = {run["label"]: run["status"] for run in json.loads((results / "compare_all.json").read_text())["strategies"]}
    assert rerun == {"uniform": "kept", "random": "ran", "ssps": "kept", "limpq": "kept"}
    assert (work / "supernet" / "supernet.pt").stat().st_mtime_ns == trained
    record = (results / "compare_all.md").read_text()
    assert "| random | random | ran | 3 (3) | 3/0/0 |" in record
    assert "## Fronts on the test split" in record and "Budgets won / tied / lost" in record
    assert "evaluations asked (the strategy yields no more, or repeated a candidate): ssps 1." in record
