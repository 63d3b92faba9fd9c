"""Plain reference implementations, written from the reference's formulas as per-sample loops.

Tests compare every fast path of ``src`` with these (forward values and gradients), and the
benchmarks time the fast paths against them. Nothing here is imported by ``src``.

* :mod:`tests.reference.losses`: Barlow Twins and VICReg per pair of views, the MC losses as a loop
  over the M sample pairs, keyed by loss registry name (``REFERENCES``);
* :mod:`tests.reference.priors`: the priors' log densities per MC sample, the KL-style term;
* :mod:`tests.reference.ssl_step`: the Gaussian head, the projector per MC slice and a whole SSL step.
"""
