"""Layer 6: the paper's tables (``tables``), figures (``plots``) and claims (``claims``) from a results folder.
Imports ``bench.grid`` and everything below it.

``bench.report.load(grid, results)`` (one row per run, a pandas DataFrame) and ``bench.report.report`` are the
Python entry points.
"""
from bench.report.tables import load, load_paper, report

__all__ = ["load", "load_paper", "report"]
