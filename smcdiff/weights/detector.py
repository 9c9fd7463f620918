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
log-probability path needs no clamp. A detector output that is not a probability (outside
[0, 1], or a log-probability above 0, e.g. logits) or NaN raises a ``ValueError`` naming the
potential; ``clip_range=True`` clamps out-of-range values into range instead (NaN is refused
either way). ``terms`` gives one term per object, named
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

from collections.abc import Callable, Sequence

import torch

from smcdiff.checks import check_int, check_real
from smcdiff.types import Tensor
from smcdiff.weights.values import check_probabilities, log_values, num_samples

__all__ = ["DetectorLikelihood"]


class DetectorLikelihood:
    """Σ_c [log p_c − log((1 − p_c)·q̃_c + p_c)] over the prompt's objects, on x̂0 (see module doc).

    ``DetectorLikelihood(detector, objects, occurrence=None, prior=0.2, *, eps=1e-6,
    threshold=0.5, group_size=None, log_probs=False, clip_range=False, name="detector")``:
    ``detector(x0_hat) -> (N, C)`` (``clip_range=True`` clamps values out of range, see the module doc); ``objects`` distinct class indices; ``occurrence`` None, ``(len(objects),)`` rates in
    [0, 1], or ``occurrence(sigma) -> (len(objects),) | (N, len(objects))``; ``prior`` π in (0, 1).
    Call: ``(x, sigma : (N,), x0_hat : (N, *event), **cond) -> (N,)`` float64.
    """

    def __init__(self, detector: Callable, objects: Sequence[int], occurrence=None, prior: float = 0.2, *,
                 eps: float = 1e-6, threshold: float = 0.5, group_size: int | None = None,
                 log_probs: bool = False, clip_range: bool = False, name: str = "detector"):
        if not callable(detector):
            raise TypeError(f"detector must be callable as detector(x0_hat) -> (N, C) probabilities, got {detector!r}")
        try:
            objs = [check_int(c, "object") for c in (objects.tolist() if isinstance(objects, torch.Tensor) else objects)]
        except TypeError:
            objs = []
        if not objs or any(c < 0 for c in objs):
            raise ValueError(f"objects must be a non-empty list of class indices (ints >= 0), got {objects!r}")
        if len(set(objs)) != len(objs):
            raise ValueError(f"objects must be distinct class indices, got {objs}")
        prior, eps, threshold = (check_real(v, n, low=0.0, high=1.0, low_open=True, high_open=True)
                                 for v, n in ((prior, "prior"), (eps, "eps"), (threshold, "threshold")))
        if group_size is not None:
            group_size = check_int(group_size, "group_size (None or an int >= 1)", minimum=1)
        for flag, value in (("log_probs", log_probs), ("clip_range", clip_range)):
            if not isinstance(value, bool):
                raise TypeError(f"DetectorLikelihood: {flag} must be True or False, got {value!r}")
        if occurrence is not None and not callable(occurrence):
            occurrence = self._check_occurrence(occurrence, None, len(objs))
        self.detector, self.objects, self.occurrence = detector, objs, occurrence
        self.prior, self.eps, self.threshold = prior, eps, threshold
        self.group_size, self.log_probs, self.clip_range, self.name = group_size, log_probs, clip_range, name
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
        N = num_samples(x0_hat)
        out = self.detector(x0_hat)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != N:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"detector must return (N, C) = ({N}, C) per-class probabilities, got {got}")
        if out.shape[1] <= max(self.objects):
            raise ValueError(
                f"detector returned C = {out.shape[1]} classes but objects include index {max(self.objects)}")
        if not out.is_floating_point():
            raise TypeError(f"detector of {self.name!r} must return floating-point (N, C) probabilities, got {out.dtype}")
        sel = out.to(torch.float64)[:, self._index.to(out.device)]
        who = f"detector of {self.name!r}"
        if self.log_probs:
            log_p = check_probabilities(sel, who, clip_range=self.clip_range, log=True,
                                        hint="pass log_probs=False if it returns probabilities")
            p = log_p.exp()
        else:
            p = check_probabilities(sel, who, clip_range=self.clip_range,
                                    hint="pass log_probs=True if it returns log-probabilities")
            p = p.clamp(self.eps, 1.0)
            log_p = p.log()
        m = self._missing_rate(p, sigma)
        q = m * (1 - self.prior) / (self.prior + m * (1 - self.prior))
        Q = (1 - p) * q + p
        # q = 0 (an object never missed): term_c = log p - log p = 0, also at p = 0 (not -inf + inf).
        terms = torch.where(q == 0, torch.zeros_like(log_p), log_p - Q.log())
        log_values(terms.sum(1), N, f"potential {self.name!r}")
        return terms

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
        return f"DetectorLikelihood(objects={self.objects}, prior={self.prior}, clip_range={self.clip_range}, name={self.name!r})"
