"""Layer 4, above ``methods``: the one training loop (``loop.execute``) and what it needs: ``validation`` (the one
gate a run passes before anything is written), ``precision`` (the per-batch step at a training precision),
``compiling`` (a method's model compiled unless it declares a problem), ``ema``, ``parents`` (the models
fine-tuning starts from), ``resume`` (end-of-epoch checkpoints), ``result`` (the result file, a failed one
included), ``attempt`` (a run as a runner does it: a crash recorded as its failed result), ``threat_evals`` (the
threat models of ``bench run --threat`` measured beside a run's own evaluation, or on a finished run's saved model),
``tblog`` (TensorBoard curves). Imports ``methods`` and everything below it.
"""
