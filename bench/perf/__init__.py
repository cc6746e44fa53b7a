"""Layer 6: ``bench speed``: training steps (``speed``) and evaluation (``speed_eval``) timed as the loop and the
evaluator run them; ``bench doctor`` (``doctor``): the machine, and whether the suite's promises hold on it.
Imports ``bench.grid`` and everything below it (not ``bench.report``).
"""
