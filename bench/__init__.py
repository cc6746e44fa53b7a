"""afd-bench: adversarial fine-tuning methods, trained, evaluated and reported the same way.

The package is in layers. A module imports only from its own package and from the layers below it (a test,
``tests/test_layers.py``, reads every import and fails on an upward import or a cycle):

====  =================  ==========================================================================================
rank  package            what it holds
====  =================  ==========================================================================================
0     ``bench.core``     run configs and their identity, the result store, runtime settings, checkpoint formats,
                         lr schedules, numerics (TF32 policy, autocast, the CPU), torch.compile, data-parallel
                         collectives, provenance
1     ``bench.data``     data sets and the device-side loader
1     ``bench.models``   architectures and RobustBench zoo models
2     ``bench.eval``     attacks, the evaluator, ``bench eval`` of any checkpoint
3     ``methods``        the method interface, the registry and one plugin per method (a separate top-level
                         package: methods stand on core, data, models and eval, and nothing below knows them)
4     ``bench.train``    the one training loop, what a method may do at a precision, EMA, parents, resume
5     ``bench.grid``     runs and grids (the paper's, grid files), the local runner, SLURM, ``bench plan``
6     ``bench.perf``     ``bench speed`` (training and evaluation throughput), ``bench doctor`` (the self-check)
6     ``bench.report``   tables, figures, the claims
7     ``bench.cli``      the command line (``python -m bench``)
====  =================  ==========================================================================================

Packages of the same rank do not import each other. No module below ``methods`` imports it; above it, modules
ask methods what they can do through the registry and the declarations of ``methods.base.Method`` and import
no concrete method module. Method names appear only where they are the paper's own content: its grids
(``bench.grid.grids``), its tables' rows and its claims (``bench.report``).
"""
