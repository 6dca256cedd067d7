"""Search strategies, installed as ``automq.strategies`` (one module per strategy)."""
