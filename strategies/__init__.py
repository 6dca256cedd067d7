"""Search strategies, installed as ``automq.strategies`` (one module per strategy).

Importing this package registers every built-in strategy with :func:`automq.search.strategy.register_strategy`.
"""

from automq.strategies import (  # noqa: F401  (registration)
    baselines, clado, differentiable, evolution, fliqs, limpq, ssps, tune,
)
