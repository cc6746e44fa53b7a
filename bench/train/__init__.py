"""Layer 4, above ``methods``: the one training loop (``loop.execute``) and what it needs: ``precision`` (what
a method may do at a training precision, the per-batch step), ``ema``, ``parents`` (the models fine-tuning
starts from), ``resume`` (end-of-epoch checkpoints), ``tblog`` (TensorBoard curves). Imports ``methods`` and
everything below it.
"""
