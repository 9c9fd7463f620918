"""Object-detector likelihood ratio (Liu et al., "Correcting Diffusion Generation through Resampling").

For a prompt that mentions the object classes c ∈ ``objects``, a detector run on the predicted
clean sample x̂0 gives p_c = P(object c present | x̂0). The potential is a likelihood ratio that
rewards particles showing the mentioned objects, corrected for how often the base sampler already
produces them:

* m_c = 1 − occ_c, the rate at which generated samples *miss* object c (occ_c its occurrence rate);
* q̃_c = m_c(1 − π) / (π + m_c(1 − π)), with π the prior ``prior`` (the reference's c0_prior = 0.2);
* Q_c = (1 − p_c)·q̃_c + p_c;
* term_c = log p_c − log Q_c, and V = Σ_c term_c.

Limits that follow from the formula: an object the sampler never misses (m_c = 0) gives q̃_c = 0,
Q_c = p_c and term_c = 0 — no correction; π → 1 also gives q̃_c → 0 and term_c → 0; π → 0 (with
m_c > 0) gives q̃_c → 1, Q_c → 1 and term_c → log p_c, the plain detector log-probability. Since
Q_c ≥ p_c, every term is ≤ 0.

``occurrence`` gives occ_c: a tensor ``(len(objects),)``, a callable ``occurrence(sigma) ->
(len(objects),)`` or ``(N, len(objects))`` (the reference precomputes one row per resampling event),
or None: then m_c is the fraction of the current particles with p_c < ``threshold`` (0.5), as the
reference does — over the whole batch, or per block of ``group_size`` consecutive rows (one SMC
group each, as :func:`smcdiff.sample` lays them out) when ``group_size`` is given.

``detector(x0_hat) -> (N, C)`` returns per-class probabilities (any callable on x̂0, e.g. the max
over DETR queries of the softmax class probabilities), or log-probabilities with
``log_probs=True``. Probabilities are clamped to [``eps``, 1] with ``eps = 1e-6`` before taking
logs, so a missed object costs at most log(1e-6) ≈ −13.8 per object instead of −∞; the
log-probability path needs no clamp. ``terms`` gives one term per object, named
``"object:<class index>"``.

    >>> import torch
    >>> from smcdiff.weights import DetectorLikelihood
    >>> def detector(x0_hat):                      # 3 classes; class c "present" when x0_hat[:, c] > 0
    ...     return torch.sigmoid(4 * x0_hat[:, :3])
    >>> V = DetectorLikelihood(detector, objects=[0, 2], occurrence=torch.tensor([0.3, 0.9]))
    >>> x0_hat = torch.tensor([[1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]], dtype=torch.float64)
    >>> sigma = torch.ones(2, dtype=torch.float64)
    >>> V(x0_hat, sigma, x0_hat).shape
    torch.Size([2])
    >>> sorted(V.terms(x0_hat, sigma, x0_hat))
    ['object:0', 'object:2']
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

import torch

from smcdiff.types import Tensor
from smcdiff.weights.compose import _num

__all__ = ["DetectorLikelihood"]


class DetectorLikelihood:
    """Σ_c [log p_c − log((1 − p_c)·q̃_c + p_c)] over the prompt's objects, on x̂0 (see module doc).

    ``DetectorLikelihood(detector, objects, occurrence=None, prior=0.2, *, eps=1e-6,
    threshold=0.5, group_size=None, log_probs=False, name="detector")``: ``detector(x0_hat) ->
    (N, C)``; ``objects`` distinct class indices; ``occurrence`` None, ``(len(objects),)`` rates in
    [0, 1], or ``occurrence(sigma) -> (len(objects),) | (N, len(objects))``; ``prior`` π in (0, 1).
    Call: ``(x, sigma : (N,), x0_hat : (N, *event), **cond) -> (N,)`` float64.
    """

    def __init__(self, detector: Callable, objects: Sequence[int], occurrence=None, prior: float = 0.2, *,
                 eps: float = 1e-6, threshold: float = 0.5, group_size: int | None = None,
                 log_probs: bool = False, name: str = "detector"):
        if not callable(detector):
            raise TypeError(f"detector must be callable as detector(x0_hat) -> (N, C) probabilities, got {detector!r}")
        try:
            objs = [operator.index(c) for c in (objects.tolist() if isinstance(objects, torch.Tensor) else objects)]
        except TypeError:
            objs = []
        if not objs or any(c < 0 for c in objs):
            raise ValueError(f"objects must be a non-empty list of class indices (ints >= 0), got {objects!r}")
        if len(set(objs)) != len(objs):
            raise ValueError(f"objects must be distinct class indices, got {objs}")
        if not (0.0 < prior < 1.0):
            raise ValueError(f"prior must be in (0, 1), got {prior!r}")
        if not (0.0 < eps < 1.0):
            raise ValueError(f"eps must be in (0, 1), got {eps!r}")
        if not (0.0 < threshold < 1.0):
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        if group_size is not None and (not isinstance(group_size, int) or group_size < 1):
            raise ValueError(f"group_size must be None or an int >= 1, got {group_size!r}")
        if occurrence is not None and not callable(occurrence):
            occurrence = self._check_occurrence(occurrence, None, len(objs))
        self.detector, self.objects, self.occurrence = detector, objs, occurrence
        self.prior, self.eps, self.threshold = float(prior), float(eps), float(threshold)
        self.group_size, self.log_probs, self.name = group_size, bool(log_probs), name
        self._index = torch.tensor(objs, dtype=torch.long)

    @staticmethod
    def _check_occurrence(occ, N: int | None, n: int) -> Tensor:
        occ = torch.as_tensor(occ, dtype=torch.float64)
        shapes = [(n,)] if N is None else [(n,), (N, n)]
        if tuple(occ.shape) not in shapes:
            want = " or ".join(map(str, shapes))
            raise ValueError(f"occurrence must have shape {want} (one rate per object), got {tuple(occ.shape)}")
        if bool(((occ < 0) | (occ > 1) | torch.isnan(occ)).any()):
            raise ValueError("occurrence rates must lie in [0, 1]")
        return occ

    def _missing_rate(self, p: Tensor, sigma: Tensor) -> Tensor:
        """m_c: ``(n,)`` or ``(N, n)`` rate at which samples miss each object."""
        N, n = p.shape
        if self.occurrence is None:
            undetected = (p < self.threshold).to(torch.float64)
            if self.group_size is None:
                return undetected.mean(0)
            if N % self.group_size:
                raise ValueError(f"group_size={self.group_size} does not divide the batch size N={N}")
            m = undetected.reshape(N // self.group_size, self.group_size, n).mean(1)
            return m.repeat_interleave(self.group_size, dim=0)
        occ = self.occurrence(sigma) if callable(self.occurrence) else self.occurrence
        return 1.0 - self._check_occurrence(occ, N, n).to(p.device)

    def object_terms(self, x0_hat: Tensor, sigma: Tensor) -> Tensor:
        """``(N, len(objects))`` float64: term_c = log p_c − log Q_c for each object."""
        N = _num(x0_hat)
        out = self.detector(x0_hat)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != N:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"detector must return (N, C) = ({N}, C) per-class probabilities, got {got}")
        if out.shape[1] <= max(self.objects):
            raise ValueError(
                f"detector returned C = {out.shape[1]} classes but objects include index {max(self.objects)}")
        sel = out.to(torch.float64)[:, self._index.to(out.device)]
        if self.log_probs:
            log_p = sel
            p = log_p.exp()
        else:
            p = sel.clamp(self.eps, 1.0)
            log_p = p.log()
        m = self._missing_rate(p, sigma)
        q = m * (1 - self.prior) / (self.prior + m * (1 - self.prior))
        Q = (1 - p) * q + p
        return log_p - Q.log()

    def __call__(self, x: Tensor, sigma: Tensor, x0_hat: Tensor, **cond) -> Tensor:
        return self.object_terms(x0_hat, sigma).sum(1)

    def terms(self, x: Tensor, sigma: Tensor, x0_hat: Tensor, **cond) -> dict[str, Tensor]:
        t = self.object_terms(x0_hat, sigma)
        return {name: t[:, j] for j, name in enumerate(self.term_names)}

    @property
    def term_names(self) -> tuple[str, ...]:
        """``("object:<c>", ...)``, the names of :meth:`terms`, in the order of ``objects``."""
        return tuple(f"object:{c}" for c in self.objects)

    def __repr__(self) -> str:
        return f"DetectorLikelihood(objects={self.objects}, prior={self.prior}, name={self.name!r})"
