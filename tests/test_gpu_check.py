"""``experiments/gpu_check.py`` runs end to end on the CPU (``--device cpu --quick`` on the tests' tiny space) in a
fresh interpreter that never imports Ray or Optuna, as on the GPU machine that lacks them; its import step finds
the modules that need them from their import-time imports only."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from automq.numerics.formats import format_names

from _spaces import SpaceFactory

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "gpu_check.py"
SPACE_CHANGES = {
    "dataset": {"val_size": 64},
    "training": {"batch_size": 32, "num_random": 1, "train_size": 96},
    "search": {"eval_size": 64, "calib_size": 32},
}
# Runs the script's main() and then reports which of the optional packages the interpreter has loaded.
RUNNER = """
import json, runpy, sys
script = runpy.run_path(sys.argv[1])
code = script["main"](sys.argv[2:])
print(json.dumps({"code": code, "loaded": sorted({"ray", "optuna"} & {m.split(".")[0] for m in sys.modules})}))
"""


def _load_script() -> dict:
    import runpy

    return runpy.run_path(str(SCRIPT))


@pytest.fixture(scope="module")
def summary(tiny_space: SpaceFactory, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    folder = tmp_path_factory.mktemp("gpu_check")
    space = tiny_space(SPACE_CHANGES, folder=folder)
    out = folder / "summary.json"
    argv = [SCRIPT, "--device", "cpu", "--quick", "--space", space.source, "--out", out]
    result = subprocess.run([sys.executable, "-c", RUNNER, *map(str, argv)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                                          "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), json.loads(out.read_text())


def test_the_check_passes_on_the_cpu_without_importing_ray_or_optuna(summary: tuple[dict, dict]) -> None:
    runner, report = summary
    assert runner == {"code": 0, "loaded": []}, report.get("error")
    assert report["ok"] and report["device"] == "cpu" and report["space"] == "tiny"


def test_the_import_step_imports_every_module_that_needs_neither(summary: tuple[dict, dict]) -> None:
    imports = summary[1]["imports"]
    assert imports["failed"] == {}
    need = set(imports["need_ray_or_optuna"])
    # pareto imports optuna itself, the driver through pareto, every strategy through the package's __init__
    assert {"automq.search.pareto", "automq.search.driver", "automq.strategies", "automq.strategies.clado"} <= need
    assert not need & {"automq.oneshot.train", "automq.oneshot.evaluate", "automq.data", "automq.device",
                       "automq.numerics.formats", "automq.model.supernet"}
    modules = [p for p in (ROOT / "automq").rglob("*.py")] + list((ROOT / "strategies").glob("*.py"))
    assert imports["imported"] + len(need) == len(modules)


def test_every_step_reports_its_measurement(summary: tuple[dict, dict]) -> None:
    report = summary[1]
    assert report["formats"] == {"formats": len(format_names()), "differ": {}}
    for where in ("device", "cpu"):
        assert report["training"][where]["timed_steps"] >= 1 and report["training"][where]["images_per_s"] > 0
        assert report["estimator"][where]["candidates"] >= 1 and report["estimator"][where]["val_images"] == 64
    # the same weights on the same device: a deep copy estimates exactly what the original does
    assert len(report["agreement"]) == 2
    for row in report["agreement"]:
        assert row["agree"] and row["difference"] == 0 and row["images_classified_differently"] == 0
        assert row["loss_device"] == row["loss_cpu"]
        # the binomial standard error of the accuracy on the 64 validation images (0 when a barely trained
        # network gets all or none of them right, which the quick run can do)
        accuracy = row["accuracy_cpu"]
        assert row["accuracy_se"] == pytest.approx(math.sqrt(accuracy * (1 - accuracy) / 64), rel=1e-12)


def test_import_time_imports_skip_function_bodies_and_type_checking_blocks(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text(
        "import numpy\n"
        "from typing import TYPE_CHECKING\n"
        "try:\n    import ray\nexcept ImportError:\n    import json\n"
        "if TYPE_CHECKING:\n    import optuna\n"
        "def later():\n    import scipy\n"
        "class Holder:\n    from automq.data import DataSplits\n"
    )
    found = _load_script()["import_time_imports"](source, {"automq.data"})
    assert found == {"numpy", "typing", "ray", "json", "automq.data"}
