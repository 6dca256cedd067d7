"""Search strategies, installed as ``automq.strategies`` (one module per strategy).

Importing this package registers every built-in strategy with :func:`automq.search.strategy.register_strategy`.
"""

from automq.strategies import baselines, clado, differentiable, fliqs, limpq, ssps, tune  # noqa: F401  (registration)
