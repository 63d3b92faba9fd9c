"""Speed benchmarks (not tests): train-step, pipeline and OOD-detector throughput; see ``benchmarks/README.md``.

Run from the repository root as modules, e.g. ``python -m benchmarks.run_all --device cuda --size full``.
"""
