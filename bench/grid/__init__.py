"""Layer 5: what to run and where. ``runs`` (a run with its paper recipe and parents, a grid as a dependency
graph), ``gridfile`` (grids from TOML), ``grids`` (the paper's grids and the CPU-scale ones), ``runner`` (one
machine), ``slurm`` (a cluster, through submitit), ``plan`` (what a grid costs). Imports ``bench.train`` and
everything below it.
"""
