"""automq: joint neural-architecture and per-layer numeric-format search.

Importing ``automq`` is cheap: it pulls in neither Ray nor CUDA. Submodules are imported on use, e.g.
``from automq.space.space import SearchSpace``.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
