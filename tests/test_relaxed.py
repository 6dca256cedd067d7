"""Tests for strategies/_relaxed.py: a one-hot relaxation computes exactly the candidate's subnet, a
straight-through sample gives a gradient to every active decision and only to those (batch norms included),
and multi-branch mixing equals the hand-mixed format branches."""

import pytest
import torch

from automq.strategies._archparams import ArchParams, DecisionTable
from automq.strategies._relaxed import RelaxedSupernet
from automq.model.supernet import Supernet

from _gradient_task import task_space


@pytest.fixture(scope="module")
def space():
    return task_space()


@pytest.fixture(scope="module")
def supernet(space):
    torch.manual_seed(0)
    net = Supernet(space).train()
    net(torch.randn(8, 1, 16, 16))  # initialise the largest candidate's quantizer scales
    return net


@pytest.fixture
def images():
    return torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("relaxation", ["single_path", "multi_branch"])
def test_one_hot_weights_compute_exactly_the_candidate(space, supernet, images, relaxation) -> None:
    table = DecisionTable(space)
    relaxed = RelaxedSupernet(supernet, table, relaxation=relaxation)
    for seed in range(4):
        candidate = space.sample(seed)
        supernet.set_active(candidate)
        expected = supernet(images)
        assert torch.equal(relaxed(images, table.one_hot(candidate).float()), expected)


def test_every_active_decision_gets_a_gradient_and_no_other(space, supernet, images) -> None:
    table = DecisionTable(space)
    arch = ArchParams(table)
    relaxed = RelaxedSupernet(supernet, table)
    weights = arch.sample(torch.Generator().manual_seed(3))
    candidate = table.candidate(weights.detach().argmax(dim=1))
    relaxed(images, weights).square().mean().backward()
    grad = arch.source.logits.grad.abs().sum(dim=1)
    active = set(table.active_rows(candidate))
    assert candidate.depths[1] == 1, "seed chosen so that block 1.1 is inactive"
    for row, name in enumerate(table.names):
        assert (grad[row] > 0) == (row in active), name


def test_multi_branch_output_is_the_probability_weighted_sum_of_format_branches(space, supernet, images) -> None:
    table = DecisionTable(space)
    relaxed = RelaxedSupernet(supernet, table, relaxation="multi_branch")
    candidate = space.largest()
    weights = table.one_hot(candidate).float()
    row = table.index["conv_head.w_fmt"]
    weights[row, :2] = torch.tensor([0.3, 0.7])
    mixed = relaxed(images, weights)
    branches = []
    for fmt in ("int8", "fp8_e4m3"):
        formats = tuple((n, fmt if n == "conv_head" else w, a) for n, w, a in candidate.formats)
        supernet.set_active(type(candidate)(candidate.width_mult, candidate.blocks, formats))
        branches.append(supernet(images))
    # conv_head feeds a batch norm, so the mixture happens before it: compare with the mixed pre-norm outputs
    head = supernet.quant_layers()["conv_head"]
    captured = {}
    hook = head.register_forward_pre_hook(lambda module, args: captured.update(x=args[0]))
    supernet.set_active(candidate)
    supernet(images)
    hook.remove()
    pre_norm = 0.3 * head.forward_formats(captured["x"], "int8", "int8") + \
        0.7 * head.forward_formats(captured["x"], "fp8_e4m3", "int8")
    after = supernet.classifier(torch.nn.functional.adaptive_avg_pool2d(supernet.bn2(pre_norm), 1).flatten(1))
    assert torch.allclose(mixed, after, atol=1e-6)
    assert not torch.allclose(mixed, branches[0]) and not torch.allclose(mixed, branches[1])


def test_rejects_unknown_relaxation(space, supernet) -> None:
    with pytest.raises(ValueError, match="relaxation"):
        RelaxedSupernet(supernet, DecisionTable(space), relaxation="soft")
