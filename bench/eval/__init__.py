"""Layer 2: evaluation. ``attacks`` (FGSM, PGD, AutoAttack), ``evaluator`` (clean, PGD-20, AutoAttack with the
per-example worst case, the feature gap; always on a private fp32 eval-mode copy), ``indicators`` (the indicators
of attack failure measured with every evaluation), ``standalone`` (``bench eval``: any checkpoint, resumable).
Imports ``bench.core``, ``bench.data`` and ``bench.models``.
"""
