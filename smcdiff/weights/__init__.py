"""Potentials: callables ``V(x, sigma, x0_hat, **cond) -> (N,)`` giving a log-weight per sample.

Any Python function with that signature is a potential; the classes here are the built-in ones.
"""

from smcdiff.weights.gaussian import GaussianLikelihood

__all__ = ["GaussianLikelihood"]
