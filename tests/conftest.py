"""Shared test set-up: one torch thread per test process, and the factory of the tiny search spaces.

The CI machine has two cores; tiny tensors run faster single-threaded, and it keeps parallel helpers and Ray
workers from oversubscribing the machine.
"""

import pytest
import torch

from _spaces import SpaceFactory
from _spaces import tiny_space as build_tiny_space

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_space() -> SpaceFactory:
    """``tiny_space(*changes, folder=None, **overrides)``: the tests' tiny space with a module's differences
    merged in (see ``tests/_spaces.py``)."""
    return build_tiny_space
