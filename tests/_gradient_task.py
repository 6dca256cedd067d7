"""A tiny search task with a known answer, shared by the tests of the gradient strategies.

The space searches width, depth, kernels, expansions and per-layer weight formats between ``int8`` and
``fp8_e4m3``, which cost exactly the same (8 bits per element, a learned per-channel scale each). After a short
one-shot training on the synthetic dataset, :func:`break_format` sets one layer's ``int8`` weight scale so
large that every weight rounds to zero: that choice destroys the signal at equal cost, so a working search must
pick ``fp8_e4m3`` there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from automq.data import DataSplits, make_loader
from automq.oneshot.evaluate import OneShotEstimator
from automq.space.space import SearchSpace
from automq.model.supernet import Supernet
from automq.oneshot.train import load_space_data

from _spaces import DS_STAGE, IR_STAGE, tiny_space

TASK = {
    "name": "gradient_task",
    "dataset": {"val_size": 200},
    "network": {"stages": [DS_STAGE, {**IR_STAGE, "expand_ratio": [2, 4]}]},
    "formats": {
        "weights": ["int8", "fp8_e4m3"],
        "activations": ["int8"],
        "overrides": [{"layers": "conv_stem|classifier", "weights": ["int8"]}],
    },
    "search": {"eval_size": 200, "calib_size": 128},
}
BROKEN_LAYER, BROKEN_FORMAT, GOOD_FORMAT = "conv_head", "int8", "fp8_e4m3"


def task_space(**overrides: Any) -> SearchSpace:
    """The task's space, with ``overrides`` (budgets, other menus) merged in as by :func:`_spaces.tiny_space`."""
    return tiny_space(TASK, **overrides)


def trained_supernet(space: SearchSpace, data: DataSplits, *, epochs: int = 4, seed: int = 0) -> Supernet:
    """A few epochs of uniform single-path supernet training, enough for the task to be learnt on any CPU: after 2
    epochs random candidates scored 0.17-0.27 on one machine (chance 0.1), too close to chance for the tests'
    margins, and 0.52-0.68 after 4."""
    torch.manual_seed(seed)
    supernet = Supernet(space).train()
    optimizer = torch.optim.SGD(supernet.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        for images, labels in make_loader(data.train, 64, shuffle=True, seed=epoch, drop_last=True):
            supernet.set_active(space.sample(rng))
            optimizer.zero_grad()
            F.cross_entropy(supernet(images), labels).backward()
            optimizer.step()
    return supernet


@torch.no_grad()
def break_format(supernet: Supernet, layer: str, fmt: str) -> None:
    """Make ``fmt`` round every weight of ``layer`` to zero (a scale far above any weight)."""
    supernet.quant_layers()[layer].w_quant.scales[fmt].fill_(1e6)


def task_estimator() -> OneShotEstimator:
    """The shared one-shot estimator of the task, with the broken format in place."""
    space = task_space()
    data = load_space_data(space)
    supernet = trained_supernet(space, data)
    break_format(supernet, BROKEN_LAYER, BROKEN_FORMAT)
    estimator = OneShotEstimator(space, supernet, data)
    return estimator
