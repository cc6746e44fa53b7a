"""Layer 2: evaluation. ``attacks`` (FGSM, PGD, AutoAttack), ``evaluator`` (clean, PGD-20, AutoAttack with the
per-example worst case, the feature gap; always on a private fp32 eval-mode copy), ``indicators`` (the indicators
of attack failure measured with every L-inf evaluation), ``l2`` (PGD and AutoAttack in L2, the evaluator under
them), ``corruption_accuracy`` (accuracy per common corruption and severity), ``threats`` (which threat models an
evaluation measures beyond its own, and measuring them), ``standalone`` (``bench eval``: any
checkpoint, resumable, under the threat models asked for). Imports ``bench.core``, ``bench.data`` and
``bench.models``.
"""
