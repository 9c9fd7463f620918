"""Reward potentials on x̂0 for FK steering (Singhal et al., "A general framework for inference-time
scaling and steering of diffusion models").

``RewardPotential(reward, form, lam)`` scores each particle by a reward of its predicted clean
sample, V = λ·r(x̂0), ``reward(x0_hat, **cond) -> (N,)``. The value is the same for every form;
``form`` says how the sampler must accumulate it, and :attr:`RewardPotential.potential_form` is the
matching ``potential_form`` of :func:`smcdiff.sample`:

* ``form="difference"`` → ``potential_form="difference"``: log w_t += λ(r(x̂0_t) − r(x̂0_{t−1})),
  FK steering's "difference" potential. Along a lineage the weights telescope to λ·r(x̂0) at the
  last step, which is the final sample for a last step to σ = 0 (EDM Euler/Heun, Euler–Maruyama),
  so the target is p_θ(x0)·exp(λ r(x0)) and ``log_evidence`` estimates log E[exp(λ r(x0))].
* ``form="current"`` → ``potential_form="incremental"``: log w_t += λ·r(x̂0_t), the current reward
  as the step's potential. A lineage accumulates exp(λ Σ_t r(x̂0_t)), a tilt of the whole path
  rather than of x0 alone.

* ``form="max"`` → ``potential_form="incremental"``: log w_t += λ·max_{s≤t} r(x̂0_s), FK
  steering's "max" potential (s runs over the steps taken so far, i.e. diffusion times ≥ t).
* ``form="sum"`` → ``potential_form="incremental"``: log w_t += λ·Σ_{s≤t} r(x̂0_s), FK steering's
  "sum" potential (``"current"`` adds r_t alone; "sum" adds the running sum).

"max" and "sum" need a running statistic of the particle's own reward history, which must follow
the particle through resampling. Such potentials set ``uses_previous = True``, and
:func:`smcdiff.sample` passes ``previous=`` the particle's last potential value (None at the
first step), which it keeps in the particle's state. Use them directly, not inside
:class:`~smcdiff.weights.Sum`, which does not forward ``previous``.

    >>> import torch, smcdiff
    >>> from smcdiff.models import GaussianMixture
    >>> from smcdiff.weights import RewardPotential
    >>> gmm = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-2.0], [2.0]]), torch.tensor([0.1, 0.1]))
    >>> V = RewardPotential(lambda x0_hat: x0_hat[:, 0], form="difference", lam=2.0)
    >>> res = smcdiff.sample(gmm.denoise, smcdiff.karras_sigmas(8), smcdiff.kernels.EDMHeun(S_churn=5), V,
    ...                      resampler=smcdiff.Resampler("systematic", 0.5), num_particles=64, shape=(1,),
    ...                      potential_form=V.potential_form, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from smcdiff.types import Tensor
from smcdiff.weights.values import check_factor, log_values, num_samples

__all__ = ["RewardPotential"]

_FORMS = {"difference": "difference", "current": "incremental", "max": "incremental", "sum": "incremental"}


class RewardPotential:
    """V = λ·reward(x0_hat, **cond) with an accumulation ``form`` (see the module doc).

    ``RewardPotential(reward, form="difference", lam=1.0, *, name="reward")``; ``form`` one of
    ``"difference"``, ``"current"``, ``"max"``, ``"sum"``; ``lam`` a finite float (0 gives exactly 0
    without calling ``reward``). A reward that gives NaN, or a λ·reward of +inf, raises a
    ``ValueError`` naming the potential (a reward of −inf with λ > 0 is a weight of zero). Call: ``(x, sigma : (N,), x0_hat : (N, *event), previous=None,
    **cond) -> (N,)`` float64, ``previous : (N,)`` the particle's last value ("max"/"sum" only).
    """

    def __init__(self, reward: Callable, form: str = "difference", lam: float = 1.0, *, name: str = "reward"):
        if not callable(reward):
            raise TypeError(f"reward must be callable as reward(x0_hat, **cond) -> (N,), got {reward!r}")
        if form not in _FORMS:
            raise ValueError(f"form must be one of {tuple(_FORMS)}, got {form!r}")
        self.reward, self.form, self.lam, self.name = reward, form, check_factor(lam), name

    @property
    def uses_previous(self) -> bool:
        """Whether the sampler must pass the particle's previous value (forms "max" and "sum")."""
        return self.form in ("max", "sum")

    @property
    def potential_form(self) -> str:
        """The ``potential_form`` of :func:`smcdiff.sample` this form needs."""
        return _FORMS[self.form]

    def __call__(self, x: Tensor, sigma: Tensor, x0_hat: Tensor, previous: Tensor | None = None, **cond) -> Tensor:
        N = num_samples(x0_hat)
        if self.lam == 0:
            value = torch.zeros(N, dtype=torch.float64, device=x0_hat.device)
        else:
            r = log_values(self.reward(x0_hat, **cond), N, f"reward of {self.name!r}", allow_pos_inf=True)
            value = log_values(self.lam * r, N, f"lam * reward of {self.name!r} (lam = {self.lam})")
        if previous is None or not self.uses_previous:
            return value
        previous = previous.to(value)
        return torch.maximum(previous, value) if self.form == "max" else previous + value

    def __repr__(self) -> str:
        return f"RewardPotential({self.reward!r}, form={self.form!r}, lam={self.lam}, name={self.name!r})"
