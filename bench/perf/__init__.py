"""Layer 5: ``bench speed``: training steps (``speed``) and evaluation (``speed_eval``) timed as the loop and the
evaluator run them. Imports ``bench.train`` and everything below it (not ``bench.grid``).
"""
