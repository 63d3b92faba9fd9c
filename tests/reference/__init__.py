"""Plain reference implementations, written from the reference's formulas as per-sample loops.

Tests compare every fast path of ``src`` with these (forward values and gradients), and the
benchmarks time the fast paths against them. Nothing here is imported by ``src``.
"""
