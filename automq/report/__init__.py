"""What a user reads: the last stage of the pipeline.

:mod:`~automq.report.comparison` analyses finished searches (fronts, hypervolume, baselines, budgets, fidelity),
:mod:`~automq.report.plots` draws the figures and :mod:`~automq.report.report` writes the self-contained HTML,
Markdown and CSV report.
"""

from automq.report.report import build_report
from automq.report.comparison import analyse_runs, find_baselines

__all__ = ["analyse_runs", "build_report", "find_baselines"]
