"""The time-dependent discriminator of Discriminator Guidance (Kim et al. 2023), also used by DiffRS
and the particle filter of Liu et al.: a frozen ADM classifier encoder followed by a small ADM
encoder head (REFERENCE §2a, §2b, §5a).

For an EDM-scale noisy image x at noise level σ: VP time τ(σ) and scale α(τ) = 1/√(1 + σ²)
(:func:`vp_tau_alpha`), x_vp = α·x, time fed to both networks τ (or the cosine-schedule time t_cos
for 64×64 classifiers), features F = classifier(x_vp, τ, feature=True), logit = head(F, τ, y),
d = sigmoid(logit) = P(real | x_σ) and ℓ = log(d_c/(1 − d_c)) with d_c = clip(d, 1e−5, 1 − 1e−5),
all in float32 exactly as the reference computes it. ℓ ≈ log q_σ(x)/p^θ_σ(x), differentiable in x.

::

    import torch, smcdiff
    from smcdiff.models.discriminator import DGDiscriminator

    disc = DGDiscriminator.load("32x32_classifier.pt", "discriminator_60.pt")   # local files
    ell = disc(x, sigma)                       # (N,) log-ratio ℓ in the EDM scale
    res = smcdiff.methods.dg(net, smcdiff.karras_sigmas(18), log_ratio=disc, num_samples=64,
                             shape=(3, 32, 32), generator=torch.Generator().manual_seed(0))

The object is a ``torch.nn.Module`` whose call is :meth:`DGDiscriminator.log_ratio`, so it plugs
into every method as ``log_ratio=disc`` (condition key ``class_labels``: one-hot (N, classes) or
(N,) indices; ignored by an unconditional head). Both networks are frozen (``requires_grad`` off,
eval mode): autograd builds a graph only when x requires a gradient.

Variants: :meth:`~DGDiscriminator.guidance` is DG's guidance term with its batch time window;
:meth:`~DGDiscriminator.logit` the raw head logit (DiffRS uses it as ℓ, unclipped);
:meth:`~DGDiscriminator.ratio_pf` the particle filter's ratio d/(1 − d) with d clipped to
[1e−6, 1 − 1e−6]. For PF-style log-weights use ``DGDiscriminator(..., clip=1e-6)``.

Precision: σ is cast to float32 before τ and α (the reference sampler holds σ̂ in float32); the
product α·x is formed in x's dtype (float64 in the samplers) and then cast to float32; the
networks, the sigmoid, the clip and the log run in float32. ℓ is returned in float32.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from smcdiff.checks import check_int, check_real
from smcdiff.kernels.guidance import OUTSIDE_WINDOW
from smcdiff.models.adm import create_classifier
from smcdiff.models.file_formats import FileFormatError, torch_load_file
from smcdiff.types import Tensor
from smcdiff.weights.ratio import DG_CLIP, PF_CLIP, check_clip, log_ratio_from_prob

__all__ = ["DGDiscriminator", "vp_tau_alpha", "cosine_time", "widen_state_dict"]

_BETA_MIN, _BETA_MAX = 0.1, 20.0
_COSINE_S = 0.008


def vp_tau_alpha(sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(τ, α) of the VP-SDE (β0 = 0.1, β1 = 20) for EDM noise levels σ, in σ's dtype.

    τ = (−β0 + √(β0² + 2(β1 − β0)·ln(1 + σ²)))/(β1 − β0), α = exp(−¼τ²(β1 − β0) − ½τβ0), with
    ln(1 + σ²) evaluated as written (not log1p), like the reference.
    """
    bd = _BETA_MAX - _BETA_MIN
    tau = (-_BETA_MIN + torch.sqrt(_BETA_MIN**2 + 2 * bd * torch.log(1 + sigma**2))) / bd
    alpha = torch.exp(-0.25 * tau**2 * bd - 0.5 * tau * _BETA_MIN)
    return tau, alpha


def cosine_time(alpha: Tensor) -> Tensor:
    """The improved-DDPM cosine-schedule time with ᾱ_cos(t) = α²: (1+s)(2/π)·arccos(√f0·α) − s, s = 0.008."""
    f0 = math.cos(_COSINE_S / (1 + _COSINE_S) * math.pi / 2) ** 2
    return (1 + _COSINE_S) * (2 / math.pi) * torch.arccos(math.sqrt(f0) * alpha) - _COSINE_S


def widen_state_dict(state_dict) -> dict:
    """A copy of ``state_dict`` with float16 tensors widened to float32 (``ValueError`` unless a
    mapping of names to tensors)."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        got = type(state_dict).__name__ if not isinstance(state_dict, dict) else "a dict with non-tensor values"
        raise ValueError(f"expected a state dict (a dict of name -> tensor), got {got}")
    return {k: (v.float() if v.dtype == torch.float16 else v) for k, v in state_dict.items()}


def _per_sample(sigma, x: Tensor) -> Tensor:
    """σ as a float32 (N,) vector on x's device (a scalar is broadcast)."""
    s = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1)
    if s.numel() == 1:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or one value per sample ({x.shape[0]},), got shape {tuple(s.shape)}")
    return s


class DGDiscriminator(nn.Module):
    """Classifier encoder → head, composed as in DG; ``disc(x, sigma, class_labels=None) -> ℓ (N,)``.

    Args:
        classifier: the frozen feature extractor (an :class:`~smcdiff.models.adm.EncoderUNetModel`
            or any module with its ``forward(x, t, feature=True)``).
        head: the discriminator head (same call convention, ``condition=`` for the class).
        img_resolution: 64 selects the cosine-time conversion (OpenAI 64×64 classifier).
        time_min, time_max: DG's VP-time window (only :meth:`guidance` applies it).
        clip: probability clipping of ``log_ratio`` (DG: 1e−5).

    Shapes: ``x : (N, C, R, R)`` EDM scale (any float dtype), ``sigma : (N,)`` or a scalar.
    """

    def __init__(self, classifier: nn.Module, head: nn.Module, *, img_resolution: int = 32, time_min: float = 0.01,
                 time_max: float = 1.0, clip: float = DG_CLIP):
        super().__init__()
        time_min, time_max = check_real(time_min, "time_min", low=0.0), check_real(time_max, "time_max", low=0.0)
        if not time_min <= time_max:
            raise ValueError(f"expected 0 <= time_min <= time_max, got {time_min}, {time_max}")
        img_resolution, clip = check_int(img_resolution, "img_resolution", minimum=1), check_clip(clip)
        self.classifier, self.head = classifier, head
        self.img_resolution, self.time_min, self.time_max, self.clip = img_resolution, time_min, time_max, clip
        self.requires_grad_(False)
        self.eval()

    # -- construction from checkpoint files -------------------------------------------------

    @classmethod
    def from_state_dicts(cls, classifier_state_dict, head_state_dict, *, img_resolution: int = 32,
                         classifier_depth: int = 4, attention_resolutions: str = "32,16,8", **kwargs) -> DGDiscriminator:
        """Build the published architectures around two state dicts and load them strictly.

        The widths, input/output channels and conditioning are read from the tensors; the
        classifier's depth and attention resolutions are the published ones unless given; the
        head is an 8×8 encoder with a single level whose depth (2 for DG, 4 for DiffRS FFHQ) is
        read from its keys. float16 tensors are widened to float32. ``kwargs`` go to the
        constructor. ``ValueError`` when a state dict does not fit.
        """
        classifier, head = _encoders(classifier_state_dict, head_state_dict, img_resolution, classifier_depth,
                                     attention_resolutions)
        return cls(classifier, head, img_resolution=img_resolution, **kwargs)

    @classmethod
    def load(cls, classifier_path, head_path, *, map_location="cpu", img_resolution: int = 32,
             classifier_depth: int = 4, attention_resolutions: str = "32,16,8", **kwargs) -> DGDiscriminator:
        """:meth:`from_state_dicts` on two local ``torch.save(state_dict)`` files (read with
        ``weights_only=True``; nothing is downloaded), e.g. ``32x32_classifier.pt`` and
        ``discriminator_60.pt`` (pass ``img_resolution=64`` for ``64x64_classifier.pt``).
        A file that is not such a checkpoint raises
        :class:`~smcdiff.models.file_formats.FileFormatError` naming it."""
        sds = []
        for p, what in ((classifier_path, "classifier"), (head_path, "discriminator head")):
            p = Path(p)
            if not p.is_file():
                raise FileNotFoundError(f"no checkpoint at {p} (smcdiff never downloads weights; pass a local file)")
            sds.append(torch_load_file(p, f"an ADM {what} checkpoint (a torch.save state dict)",
                                       map_location=map_location))
        try:
            classifier, head = _encoders(*sds, img_resolution, classifier_depth, attention_resolutions)
        except ValueError as err:
            raise FileFormatError(f"{classifier_path}, {head_path}: not a DG classifier + discriminator head "
                                  f"pair ({err})") from err
        return cls(classifier, head, img_resolution=img_resolution, **kwargs)

    # -- the composed network -----------------------------------------------------------------

    def times(self, sigma, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(σ, α, t_model) as float32 (N,) vectors: t_model = τ(σ), or t_cos at 64×64."""
        s = _per_sample(sigma, x)
        tau, alpha = vp_tau_alpha(s)
        return s, alpha, (cosine_time(alpha) if self.img_resolution == 64 else tau)

    def vp_logit(self, x_vp: Tensor, t_model: Tensor, class_labels=None) -> Tensor:
        """Raw logit (N,) of an already VP-scaled float32 input ``x_vp`` at model time ``t_model`` (N,)."""
        features = self.classifier(x_vp, t_model, feature=True)
        cond = None
        if getattr(self.head, "condition", False):
            if class_labels is None:
                raise ValueError("this discriminator head is class-conditional: pass class_labels (N, classes) one-hot or (N,) indices")
            cond = torch.as_tensor(class_labels, device=x_vp.device)
        return self.head(features, t_model, condition=cond).reshape(-1)

    def _vp_input(self, x: Tensor, alpha: Tensor) -> Tensor:
        """x_vp = (α·x) formed in x's dtype (α widened), then cast to float32."""
        return (alpha.reshape(-1, *([1] * (x.dim() - 1))) * x).to(torch.float32)

    def logit(self, x: Tensor, sigma, class_labels=None) -> Tensor:
        """The head's raw logit (N,) float32 — DiffRS's ℓ (no sigmoid, no clipping)."""
        _, alpha, t_model = self.times(sigma, x)
        return self.vp_logit(self._vp_input(x, alpha), t_model, class_labels)

    def prob(self, x: Tensor, sigma, class_labels=None) -> Tensor:
        """d = sigmoid(logit) = P(real | x_σ), (N,) float32, unclipped."""
        return torch.sigmoid(self.logit(x, sigma, class_labels))

    def log_ratio(self, x: Tensor, sigma, class_labels=None) -> Tensor:
        """ℓ = log(d_c/(1 − d_c)), d_c = clip(d, clip, 1 − clip), (N,) float32, differentiable in x."""
        return log_ratio_from_prob(self.prob(x, sigma, class_labels), self.clip)

    def forward(self, x: Tensor, sigma, class_labels=None) -> Tensor:
        return self.log_ratio(x, sigma, class_labels)

    def ratio_pf(self, x: Tensor, sigma, class_labels=None, clip: float = PF_CLIP) -> Tensor:
        """The particle filter's ratio d_c/(1 − d_c), d_c = clip(d, 1e−6, 1 − 1e−6), (N,) float32."""
        d = self.prob(x, sigma, class_labels).clamp(clip, 1.0 - clip)
        return d / (1.0 - d)

    def guidance(self, x: Tensor, sigma, class_labels=None) -> tuple[Tensor, Tensor]:
        """DG's guidance term and log-ratio, ``-> (G : (N, C, R, R) float32, ℓ : (N,) float32)``.

        G = g·(−σ²α) with g = ∂(Σ ℓ)/∂x_vp (= −σ²∇ₓℓ); the sampler adds w·G/σ to the ODE
        direction. Batch window as in the reference: if the *minimum* τ over the batch is below
        ``time_min`` (or above ``time_max``) the whole batch gets G = 0 and ℓ = 1e7.
        """
        s, alpha, t_model = self.times(sigma, x)
        tau_min = float(vp_tau_alpha(s)[0].min())
        if tau_min < self.time_min or tau_min > self.time_max:
            return (torch.zeros(x.shape, dtype=torch.float32, device=x.device),
                    torch.full((x.shape[0],), OUTSIDE_WINDOW, dtype=torch.float32, device=x.device))
        with torch.enable_grad():
            x_vp = self._vp_input(x.detach(), alpha).requires_grad_(True)
            d = torch.sigmoid(self.vp_logit(x_vp, t_model, class_labels))
            ell = log_ratio_from_prob(d, self.clip)
            (g,) = torch.autograd.grad(ell.sum(), x_vp)
        G = g * -(s**2 * alpha).reshape(-1, *([1] * (x.dim() - 1)))
        return G, ell.detach()

    def extra_repr(self) -> str:
        return f"img_resolution={self.img_resolution}, time_min={self.time_min}, time_max={self.time_max}, clip={self.clip}"


def _encoders(classifier_state_dict, head_state_dict, img_resolution, classifier_depth,
              attention_resolutions) -> tuple[nn.Module, nn.Module]:
    """The classifier and head encoders built around two state dicts and loaded strictly."""
    csd, hsd = widen_state_dict(classifier_state_dict), widen_state_dict(head_state_dict)
    classifier = create_classifier(img_resolution, **_encoder_shape(csd), classifier_depth=classifier_depth,
                                   classifier_attention_resolutions=attention_resolutions)
    head_blocks = {int(k.split(".")[1]) for k in hsd if k.startswith("input_blocks.")}
    head = create_classifier(8, **_encoder_shape(hsd), classifier_depth=max(head_blocks, default=0),
                             classifier_attention_resolutions=attention_resolutions)
    for what, net, sd in (("classifier", classifier, csd), ("head", head, hsd)):
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as err:
            raise ValueError(f"the {what} state dict does not fit the published ADM encoder built from it: "
                             f"{str(err)[:400]}") from err
    return classifier, head


def _encoder_shape(sd) -> dict:
    """create_classifier arguments readable from an encoder state dict: width, channels, conditioning."""
    try:
        width, w = sd["time_embed.0.weight"].shape[1], sd["input_blocks.0.0.weight"]
        out = sd["out.2.c_proj.weight"]
    except KeyError as e:
        raise ValueError(f"not an ADM encoder state dict with an attention-pool head (missing {e.args[0]!r})") from None
    return {"classifier_width": int(width), "in_channels": int(w.shape[1]), "out_channels": int(out.shape[0]),
            "condition": "label_emb.weight" in sd}
