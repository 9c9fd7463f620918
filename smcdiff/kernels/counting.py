"""Honest network-evaluation counts: :class:`CallCounter` wraps a denoiser (or a discriminator).

Every sample sent to the wrapped callable counts (``x.shape[0]`` per call), including work on
trajectories a method later abandons or re-proposes, so ``nfe = count / outputs`` is the cost a
user pays. Reading ``count`` never touches the device.

    >>> import torch
    >>> D = CallCounter(lambda x, sigma: x)
    >>> _ = D(torch.zeros(5, 2), torch.ones(5))
    >>> D.count
    5
"""

from __future__ import annotations

__all__ = ["CallCounter"]


class CallCounter:
    """Wraps a callable ``f(x, ...)`` and counts the samples it evaluates (``x.shape[0]`` per call,
    times ``f.evaluations_per_sample`` when the callable declares it, e.g. 2 for a CFG-wrapped network).

    Attributes of the wrapped callable (``round_sigma``, ``sigma_min``, ...) stay reachable.
    """

    def __init__(self, fn):
        if not callable(fn):
            raise TypeError(f"expected a callable, got {type(fn).__name__}")
        self.fn = fn
        self.count = 0

    def __call__(self, x, *args, **kwargs):
        # a wrapped denoiser that runs the network more than once per sample (CFG: uncond + cond)
        # says so with ``evaluations_per_sample``
        self.count += int(x.shape[0]) * int(getattr(self.fn, "evaluations_per_sample", 1))
        return self.fn(x, *args, **kwargs)

    def __getattr__(self, name):
        if name == "fn":  # not yet set (copy / unpickling)
            raise AttributeError(name)
        return getattr(self.fn, name)
