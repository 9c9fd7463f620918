"""The Diffusion Classifier (Li et al., ICCV 2023): a class-conditional diffusion model used as a
zero-shot classifier through its ELBO.

Each class ``c`` is scored by the denoising lower bound on ``log p(x | c)`` of
:mod:`smcdiff.likelihood.bound`, for the clean image ``x`` (noise level 0; the σ integral is cut
at ``sigma_min``, which changes the score by O(σ_min²)): with ``z = x + σε``,

    score_c(x) = E log π(x + σ_max ε) + E_{ln σ, ε}[ (d − ‖D(z; σ, c) − x‖²/σ²) / p(ln σ) ],

a Monte Carlo average over (σ, ε) draws (``ln σ`` from ``sigma_dist`` on ``[ln σ_min, ln σ_max]``,
randomised quasi-Monte Carlo, with the control variates of :func:`smcdiff.likelihood.elbo`; one
evaluation per draw and class, no antithetic pair: at noise level 0 the ``1/σ`` term is bounded).
Up to a constant shared by the classes this is Li et al.'s mean ε-prediction error
``‖ε − ε̂‖² = ‖D − x‖²/σ²`` with the ELBO's uniform-in-ln σ weighting; for an exact model it is
``log p(x | c)`` in expectation. The prediction is the class with the highest score (equal class
priors).

* **Same draws for every class.** Draw ``j`` of image ``i`` is one (σ, ε) pair, shared by all the
  classes evaluated on it, so class differences carry little noise.
* **Adaptive pruning.** ``stages = ((n_1, k_1), (n_2, k_2), ...)``: the classes still in the running
  are evaluated on draws up to ``n_s`` (cumulative), then only the ``k_s`` best are kept. Li et
  al.'s CIFAR-10 setting is ``((50, 5), (500, 1))``: 10·50 + 5·450 = 2 750 evaluations per image
  instead of 5 000. Scores of pruned classes are left as they were when pruned.
* **Conditioning.** The denoiser receives the class as ``class_labels``: a one-hot float32 row of
  length ``label_dim`` (EDM style; default: the denoiser's ``label_dim`` attribute, else
  ``max(classes) + 1``), with a 1 at the class value.
* **Cost.** ``nfe`` = denoiser evaluations per image = Σ_s (n_s − n_{s−1})·(classes alive in stage s).

    >>> import torch
    >>> from smcdiff.models import GaussianMixture
    >>> from smcdiff.methods.zero_shot_classifier import diffusion_classifier
    >>> per_class = [GaussianMixture(torch.tensor([1.0]), torch.tensor([[m, 0.0]]), torch.tensor([0.3]))
    ...              for m in (-1.0, 1.0)]
    >>> def denoiser(x, sigma, class_labels):
    ...     picks = class_labels.argmax(1)
    ...     return torch.where((picks == 1)[:, None], per_class[1](x, sigma), per_class[0](x, sigma))
    >>> x = torch.tensor([[-1.2, 0.1], [0.9, -0.3]], dtype=torch.float64)
    >>> res = diffusion_classifier(denoiser, x, [0, 1], generator=torch.Generator().manual_seed(0),
    ...                            stages=((16, 1),))
    >>> res.prediction.tolist(), res.scores.shape, res.nfe
    ([0, 1], torch.Size([2, 2]), 32.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from smcdiff import _rng
from smcdiff.likelihood.bound import baseline_integral, elbo_integrand, sigma_points
from smcdiff.likelihood.inputs import check_batch, check_sigma_range
from smcdiff.types import Tensor

__all__ = ["ClassifierResult", "diffusion_classifier"]


@dataclass(frozen=True)
class ClassifierResult:
    """What :func:`diffusion_classifier` returns.

    ``prediction : (N,)`` long, entries of ``classes``; ``scores : (N, C)`` float64 ELBO estimates
    of ``log p(x | classes[c])`` in nats (pruned classes: from the draws they got);
    ``num_draws : (N, C)`` the draws each class was evaluated on; ``nfe`` denoiser evaluations per
    image; ``classes : (C,)``; ``stages`` as run.
    """

    prediction: Tensor
    scores: Tensor
    num_draws: Tensor
    nfe: float
    classes: Tensor
    stages: tuple


def _check_classes(classes, label_dim) -> tuple[Tensor, int]:
    cls = torch.as_tensor(classes)
    if cls.ndim != 1 or cls.numel() < 1 or cls.is_floating_point() or cls.dtype == torch.bool:
        raise ValueError(f"classes must be a non-empty 1-D sequence of ints, got {classes!r}")
    cls = cls.to(torch.long)
    if (cls < 0).any() or cls.unique().numel() != cls.numel():
        raise ValueError(f"classes must be distinct non-negative ints, got {cls.tolist()}")
    dim = int(cls.max()) + 1 if label_dim is None else label_dim
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= int(cls.max()):
        raise ValueError(f"label_dim must be an int > max(classes) = {int(cls.max())}, got {label_dim!r}")
    return cls, dim


def _check_stages(stages, num_classes: int) -> tuple[tuple[int, int], ...]:
    try:
        stages = tuple((int(n), int(k)) for n, k in stages)
    except (TypeError, ValueError):
        raise ValueError(f"stages must be a sequence of (draws, keep) pairs, got {stages!r}") from None
    if not stages:
        raise ValueError("stages must hold at least one (draws, keep) pair")
    prev_n, prev_k = 0, num_classes
    for n, k in stages:
        if n <= prev_n or not 1 <= k <= prev_k:
            raise ValueError(f"stages need increasing cumulative draws and 1 <= keep <= classes still alive "
                             f"(non-increasing); got {stages} for {num_classes} classes")
        prev_n, prev_k = n, k
    return stages


@torch.no_grad()
def diffusion_classifier(denoiser, x: Tensor, classes: Sequence[int], *, generator,
                         stages: Sequence[tuple[int, int]] | None = None, sigma_min: float = 0.002,
                         sigma_max: float = 80.0, sigma_dist: str = "edm", label_dim: int | None = None,
                         sigma_data: float | None = None, batch_size: int = 4096) -> ClassifierResult:
    """Classify ``x : (N, *shape)`` among ``classes`` by the ELBO of each class (module docstring).

    Args:
        denoiser: class-conditional ``D(x, sigma, class_labels=onehot)``.
        x: ``(N, *shape)`` clean inputs (images in ``[-1, 1]``).
        classes: the candidate class values (distinct ints; one-hot positions).
        generator: ``torch.Generator`` or one per image; draws the σ shifts, then ε stage by stage.
        stages: ``((draws, keep), ...)`` cumulative draws per stage and classes kept after it;
            default ``((32, min(3, C)), (128, 1))`` for C classes.
        sigma_min, sigma_max: the σ range of the bound.
        sigma_dist: ``"edm"`` (default: EDM's training law of ln σ, where the classes' denoisers
            differ most; lower variance than ``"loguniform"`` on the tests' mixtures) or ``"loguniform"``.
        label_dim: length of the one-hot rows (default: ``denoiser.label_dim``, else max + 1).
        sigma_data: control-variate scale (default: ``denoiser.sigma_data``, else 0.5).
        batch_size: rows per denoiser call.
    """
    x = check_batch(x)
    lo, hi = check_sigma_range(sigma_min, sigma_max, denoiser)
    if label_dim is None:
        label_dim = getattr(denoiser, "label_dim", None)
        if isinstance(label_dim, int) and label_dim == 0:
            raise ValueError("the denoiser is unconditional (label_dim=0); the classifier needs class_labels")
        label_dim = label_dim if isinstance(label_dim, int) and not isinstance(label_dim, bool) else None
    cls, dim = _check_classes(classes, label_dim)
    N, shape, d, C = x.shape[0], tuple(x.shape[1:]), math.prod(x.shape[1:]), cls.numel()
    stages = _check_stages(((32, min(3, C)), (128, 1)) if stages is None else stages, C)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    sd = float(getattr(denoiser, "sigma_data", 0.5) if sigma_data is None else sigma_data)
    _rng.check_generator(generator, None if isinstance(generator, torch.Generator) else N)
    onehot = torch.nn.functional.one_hot(cls, dim).to(torch.float32)  # (C, label_dim)

    shift = _rng.rand((N,), generator)
    sums = torch.zeros(N, C, dtype=torch.float64)
    counts = torch.zeros(N, C, dtype=torch.long)
    alive = torch.ones(N, C, dtype=torch.bool)
    evaluations, done = 0, 0
    for n_draws, keep in stages:
        # This stage's (σ, ε) draws, shared by every class still alive.
        J = n_draws - done
        log_sigma, log_pdf = sigma_points(shift, torch.arange(done, n_draws), sigma_min=lo, sigma_max=hi,
                                          dist=sigma_dist)
        eps = _rng.randn((N, J, *shape), generator)
        pairs = alive.nonzero()  # (P, 2): (image, class)
        ii, cc = pairs[:, 0].repeat_interleave(J), pairs[:, 1].repeat_interleave(J)
        jj = torch.arange(J).repeat(pairs.shape[0])
        for start in range(0, ii.shape[0], batch_size):
            i, c, j = (t[start:start + batch_size] for t in (ii, cc, jj))
            value = elbo_integrand(denoiser, x[i], log_sigma[i, j], eps[i, j], sigma_level=0.0, sigma_data=sd,
                                   cond={"class_labels": onehot[c]})
            sums.index_put_((i, c), value * torch.exp(-log_pdf[i, j]), accumulate=True)
            evaluations += i.shape[0]
        counts[alive] += J
        done = n_draws
        # Keep the best classes.
        mean = torch.where(alive, sums / counts.clamp_min(1), -math.inf)
        top = mean.topk(keep, dim=1).indices
        alive = torch.zeros_like(alive).scatter_(1, top, True)
    # The prior term E log N(x + σ_max ε; 0, σ_max² I) is the same for every class.
    prior = -0.5 * (d * math.log(2 * math.pi * hi**2) + ((x * x).reshape(N, -1).sum(1) + d * hi**2) / hi**2)
    base = baseline_integral(d, sigma_lo=lo, sigma_hi=hi, sigma_level=0.0, sigma_data=sd)
    scores = sums / counts.clamp_min(1) + base + prior[:, None]
    best = torch.where(alive, scores, -math.inf).argmax(1)
    return ClassifierResult(cls[best], scores, counts, evaluations / N, cls, stages)
