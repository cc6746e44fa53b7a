"""Layer 6: the paper's tables (``tables``), figures (``plots``) and claims (``claims``) from a results folder.
Imports ``bench.grid`` and everything below it.

A table is read (``frame``: the results as one DataFrame), declared (``declarations``: the paper's tables), built
(``build``: runs aggregated into cells, the paper's numbers beside them) and rendered (``render``: Markdown, LaTeX,
CSV); ``tables.report`` does all four for a grid. ``html`` puts a grid's tables, figures (drawn by ``svg``), claims
and runs on one page. Labels and marks the three share are in ``labels``; the noise rule that the tables' bold and
the claims' verdicts apply is in ``noise``; the columns and breakdown tables of the threat models beyond L-inf
(L2, common corruptions) are added in ``threat_tables``. ``evals`` tabulates the results of
``bench eval`` (``bench report --evals``).

``bench.report.load(grid, results)`` (one row per run, a pandas DataFrame) and ``bench.report.report`` are the
Python entry points.
"""
from bench.report.build import load_paper
from bench.report.frame import load
from bench.report.tables import report

__all__ = ["load", "load_paper", "report"]
