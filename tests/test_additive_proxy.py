"""experiments/additive_proxy.py on a tiny format study: a candidate that differs from the all-top-precision one in
one layer is predicted the loss change a plain forward pass of the supernet measures (the oracle), the reference
itself 0; the judged figures are scipy's and the counts' of the proxy written; a study of several architectures is
refused with one line."""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from automq.data import fixed_batches
from automq.model.supernet import recalibrate_bn
from automq.numerics.formats import get_format
from automq.oneshot.train import load_space_data, load_supernet
from automq.space.candidate import Candidate
from _spaces import FORMATS_ONLY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the scripts import their siblings
import additive_proxy  # noqa: E402
import oneshot_fidelity  # noqa: E402

SPACE_CHANGES = {
    "dataset": {"val_size": 200},
    "training": {"epochs": 1, "batch_size": 32, "lr": 0.05, "train_size": 512, "num_random": 1},
    "search": {"eval_size": 60, "calib_size": 32},
}
IMAGES = 64


@pytest.fixture(scope="module")
def format_study(tmp_path_factory, tiny_space) -> tuple[dict, Path]:
    folder = tmp_path_factory.mktemp("format_study")
    space = tiny_space(SPACE_CHANGES, FORMATS_ONLY, folder=folder)
    oneshot_fidelity.main(["--scale", "tiny_formats", "--space", str(space.path), "--out", str(folder / "out")])
    return space, folder / "out" / "oneshot_fidelity_tiny_formats.json"


def _mean_loss(model: torch.nn.Module, batches: list) -> float:
    with torch.inference_mode():
        return sum(float(F.cross_entropy(model(x), y, reduction="sum")) for x, y in batches) / IMAGES


def test_one_layer_changed_is_predicted_the_measured_loss_change(format_study) -> None:
    space, study = format_study
    supernet = load_supernet(json.loads(study.read_text())["supernet"], space)
    top = space.largest()  # every layer at the top of its menus
    layer, (w_fmt, a_fmt) = next((name, formats) for name, formats in top.layer_formats().items()
                                 if len(space.layer_menu(name)[0]) > 1)
    lowest = min(space.layer_menu(layer)[0], key=lambda f: get_format(f).bits_per_element)
    changed = dataclasses.replace(top, formats=tuple((n, lowest if n == layer else w, a) for n, w, a in top.formats))
    data = load_space_data(space, train_subset=256)
    batches = fixed_batches(data.train, IMAGES, 32)
    predicted, cost = additive_proxy.predicted_loss_changes(supernet, space, [top, changed], batches)
    net = copy.deepcopy(supernet)
    net.set_active(top)
    recalibrate_bn(net, batches)  # the reference's statistics serve every variant, as in CLADO
    net.eval()
    reference = _mean_loss(net, batches)
    net.set_active(changed)
    measured = _mean_loss(net, batches) - reference
    # per-image losses summed in float32 in batches of 32: a few ulps of each batch's sum of about 32 * 2.3
    tolerance = 4 * IMAGES * 2.3 * float(np.finfo(np.float32).eps)
    assert predicted[0] == 0.0 and cost["loss_evaluations"] > 1
    assert predicted[1] == pytest.approx(measured, abs=tolerance) and abs(measured) > 10 * tolerance


def test_the_judged_figures_are_those_of_the_proxy_written(format_study, tmp_path) -> None:
    _, study = format_study
    result = additive_proxy.main(["--study", str(study), "--calib-images", str(IMAGES), "--out", str(tmp_path),
                                  "--name", "proxy"])
    rows = json.loads(study.read_text())["candidates"]
    truth = [r["standalone_accuracy"] for r in rows]
    block0, block1 = (np.asarray(b["loss_changes"]) for b in result["blocks"])
    assert result["proxy"] == pytest.approx(list(-(block0 + block1) / 2), abs=1e-12)
    assert result["blocks"][1]["images"][0] == result["blocks"][0]["images"][1]  # disjoint, one after the other
    proxy = result["figures"]["additive proxy"]
    assert proxy["kendall_tau"] == pytest.approx(stats.kendalltau(result["proxy"], truth).statistic, abs=1e-12)
    ours, bitops = proxy, result["figures"]["BitOps alone"]
    assert result["proxy_minus"]["BitOps alone"]["kendall_tau"] == pytest.approx(
        ours["kendall_tau"] - bitops["kendall_tau"], abs=1e-12)
    text = (tmp_path / "proxy.md").read_text()
    assert "- command: `" in text and "- machine: " in text and "| additive proxy |" in text


def test_a_study_of_several_architectures_is_refused(tiny_space, tmp_path) -> None:
    space = tiny_space(SPACE_CHANGES, folder=tmp_path)
    archs = [space.largest(), space.smallest()]
    with pytest.raises(SystemExit, match="2 architectures"):
        additive_proxy.the_architecture(archs)
    assert additive_proxy.the_architecture([Candidate.from_dict(archs[0].to_dict())]) == archs[0]
