"""Layer 0, the ground every other layer stands on; imports nothing else of afd-bench.

``config`` (run configs, their canonical JSON and run ids), ``store`` (result files, locks, atomic writes),
``runtime`` (paths, device, threads: what does not change a run's meaning), ``checkpoints`` (reading a user's
checkpoint formats), ``schedules`` (learning-rate and momentum schedules), ``numerics`` (exact fp32, the TF32
policy, autocast, the gradient scaler's helpers, what the CPU runs natively), ``compilation`` (torch.compile),
``distributed`` (the world of a data-parallel run and its collectives), ``provenance`` (what produced a result).
"""
