"""The search machinery strategies plug into: the fourth stage of the pipeline.

:mod:`~automq.search.trial` is the trial record, :mod:`~automq.search.strategy` the :class:`Strategy` interface
and registry, :mod:`~automq.search.results` the search directory (``trials.jsonl``, ``pareto.json``),
:mod:`~automq.search.pareto` non-dominated sorting and hypervolume, and :mod:`~automq.search.driver`
:func:`run_search`, the driver behind ``automq search``. The strategies themselves live in ``automq.strategies``.
"""

from automq.search.trial import Trial
from automq.search.strategy import (
    Budget, Evaluator, Strategy, create_strategy, evaluate_candidate, register_strategy, strategy_names,
)
from automq.search.results import SearchLog, SearchResult, load_search_dir, load_trials
from automq.search.pareto import Objective, hypervolume, pareto_mask
from automq.search.driver import run_search

__all__ = [
    "Budget", "Evaluator", "Objective", "SearchLog", "SearchResult", "Strategy", "Trial", "create_strategy",
    "evaluate_candidate", "hypervolume", "load_search_dir", "load_trials", "pareto_mask", "register_strategy",
    "run_search", "strategy_names",
]
