"""experiments/compare_all.py: configs are checked before anything runs, every strategy gets the same evaluation
budget, a failing strategy is recorded while the others finish, and a rerun keeps finished searches."""

from __future__ import annotations

import importlib.util
import json
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


def test_per_level_strategies_get_the_levels_as_bitops(compare_all: ModuleType, tmp_path: Path,
                                                       tiny_space: SpaceFactory) -> None:
    space = tiny_space(folder=tmp_path)
    config = compare_all.load_config(write_config(tmp_path, space.path))
    largest = cost_range(space)["bitops"][1]
    assert compare_all.level_options(config, space, "ssps", {})["levels"] == [0.5 * largest, 0.9 * largest]
    assert compare_all.level_options(config, space, "fliqs", {})["targets"] == [0.5 * largest, 0.9 * largest]
    assert compare_all.level_options(config, space, "ssps", {"levels": [7.0]}) == {"levels": [7.0]}
    assert compare_all.level_options(config, space, "random", {}) == {}


def test_run_records_a_failure_reports_the_rest_and_keeps_finished_searches(
        compare_all: ModuleType, tmp_path: Path, tiny_space: SpaceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    space = tiny_space({"dataset": {"val_size": 32}, "search": {"eval_size": 32, "calib_size": 16}}, folder=tmp_path)
    config = write_config(tmp_path, space.path)
    work, results = tmp_path / "work", tmp_path / "results"
    argv = ["--config", str(config), "--work", str(work), "--results", str(results)]
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
    assert len(load_trials(work / "searches" / "uniform")) == 3  # the same evaluation budget for everyone
    ssps_levels = status["ssps"]["options"]["levels"]
    assert len(ssps_levels) == 2 and 1 <= len(load_trials(work / "searches" / "ssps")) <= 2  # a search per level
    assert len(load_trials(results / "searches" / "limpq")) == len(load_trials(work / "searches" / "limpq")) > 0
    report = (results / "report.md").read_text()
    assert "uniform" in report and "limpq" in report and (results / "report.html").is_file()
    assert "random" not in {p.name for p in (results / "searches").iterdir()}

    monkeypatch.setattr(compare_all, "run_search", real_search)
    trained = (work / "supernet" / "supernet.pt").stat().st_mtime_ns
    assert compare_all.main(argv) == 0
    rerun = {run["label"]: run["status"] for run in json.loads((results / "compare_all.json").read_text())["strategies"]}
    assert rerun == {"uniform": "kept", "random": "ran", "ssps": "kept", "limpq": "kept"}
    assert (work / "supernet" / "supernet.pt").stat().st_mtime_ns == trained
    assert "| random | random | ran | 3/0/0 |" in (results / "compare_all.md").read_text()
