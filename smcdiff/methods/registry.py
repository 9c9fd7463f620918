"""The one method registry: each method's name, function, kind and parameters (defaults, checks).

``smcdiff generate``, ``smcdiff table``, ``smcdiff compare``, the CLI's options and the examples
all read :data:`METHODS`; adding a method is one entry. A :class:`Param` is what a front-end may
set (its command-line flag is ``--<name with _ as ->>`` unless ``flag`` says otherwise); the
method function itself owns its defaults and checks them before spending any network evaluation.

    >>> from smcdiff.methods.registry import METHODS, method
    >>> [name for name in sorted(METHODS) if METHODS[name].needs == "log_ratio"]
    ['d-select', 'dg', 'diffrs', 'pf', 'pf-discriminator']
    >>> method("pf").needs == "log_ratio"
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from smcdiff.methods.discriminator_guidance import dg, sedm
from smcdiff.methods.fk_correctors import fkc
from smcdiff.methods.particle_filtering import particle_filter
from smcdiff.methods.rejection_sampling import diffrs
from smcdiff.methods.restart_sampling import restart_sampler
from smcdiff.methods.reward_steering import fk_steering
from smcdiff.methods.search_over_noise import noise_search
from smcdiff.methods.selection import best_of_n, discriminator_select
from smcdiff.methods.tempered_smc import das
from smcdiff.methods.text_to_image import (
    object_select,
    pf_detector,
    pf_discriminator,
    pf_hybrid,
)
from smcdiff.methods.tree_search import dts
from smcdiff.methods.twisted_smc import tds

__all__ = ["Param", "MethodSpec", "METHODS", "method", "register", "method_params"]


@dataclass(frozen=True)
class Param:
    """A parameter a front-end may set: ``type`` parses a command-line string; ``help`` says what
    it is (the default is the method function's own)."""

    name: str
    type: Callable[[str], Any]
    help: str
    flag: str | None = None

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


CHURN = (Param("S_churn", float, "stochasticity strength", "--S_churn"),
         Param("S_min", float, "churn window low end", "--S_min"),
         Param("S_max", float, "churn window high end", "--S_max"),
         Param("S_noise", float, "churn noise inflation", "--S_noise"))
_DG = (Param("w1", float, "DG weight on the Euler evaluation (dg: 2.0, sedm: 1.67)"),
       Param("w2", float, "DG weight on the Heun correction (dg: 0.0)"),
       Param("eps_scaler", float, "epsilon scaling b (sedm: 1.004)"),
       Param("boosting", bool, "DG boosting (dg/sedm)"))
_PARTICLES = (Param("num_particles", int, "particles per seed (K)", "--particles"),)
_STEER = (Param("ess_threshold", float, "resample where ESS < threshold * K (steering methods)"),
          Param("scheme", str, "resampling scheme (steering methods)"))
_T2I = (Param("sampler", str, "text-to-image PF base sampler: restart (paper) or edm"),
        Param("select", str, "PF final pick: argmax (paper) or weighted"),
        Param("prior", float, "object prior pi of the caption term (paper 0.2)"),
        Param("resample_at", _ints, "PF resampling steps with sampler=edm, e.g. 10,13,16,19"))
_PF = (Param("resample_at", _ints, "PF resampling steps, e.g. 15,19,23,27"),
       Param("sampler", str, "PF base sampler: edm or restart"),
       Param("select", str, "PF final pick: argmax or weighted"))


@dataclass(frozen=True)
class MethodSpec:
    """One method: ``fn`` with the calling convention; ``needs`` what must be loaded besides the
    denoiser — "log_ratio", "reward", "score", "detector" (joined by "+") or None; ``particles``
    whether ``x_init``/``cond`` carry a particle axis ``(num_samples, K, ...)``; ``fixed`` keywords
    always passed (e.g. "edm" is ``dg`` without a discriminator); ``one_generator`` for methods that
    take a single generator (DiffRS's continuous batching); ``pipeline_only`` for the text-to-image
    methods (a latent model with prompts: ``smcdiff generate --pipeline``)."""

    name: str
    fn: Callable
    summary: str
    needs: str | None = None
    params: tuple[Param, ...] = ()
    particles: bool = False
    fixed: dict = field(default_factory=dict)
    one_generator: bool = False
    pipeline_only: bool = False

    @property
    def requires(self) -> tuple[str, ...]:
        """What ``needs`` lists, one name each (``"detector+log_ratio"`` → both)."""
        return tuple(self.needs.split("+")) if self.needs else ()

    def __call__(self, denoiser, sigmas, **kwargs):
        return self.fn(denoiser, sigmas, **{**kwargs, **self.fixed})


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to :data:`METHODS` (names are unique)."""
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is already registered")
    METHODS[spec.name] = spec
    return spec


def method(name: str) -> MethodSpec:
    """The registered method ``name``, or a ``ValueError`` listing the names."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; expected one of {sorted(METHODS)}") from None


def method_params(name: str, values: dict) -> dict:
    """The keywords for method ``name`` from ``values`` (param name → value; None = the default)."""
    spec = method(name)
    return {p.name: values[p.name] for p in spec.params if values.get(p.name) is not None}


for _spec in (
    MethodSpec("edm", dg, "EDM's stochastic Heun sampler (no correction)", None, CHURN, fixed={"log_ratio": None}),
    MethodSpec("dg", dg, "Discriminator Guidance (EDM-G++, Kim et al. 2023)", "log_ratio", CHURN + _DG),
    MethodSpec("sedm", sedm, "SEDM-G++: DG + epsilon scaling (without a discriminator: EDM-ES)", None, CHURN + _DG),
    MethodSpec("diffrs", diffrs, "Diffusion Rejection Sampling (Na et al. 2024)", "log_ratio",
               CHURN + (Param("rej_percentile", float, "DiffRS quantile of M (default 0.75)"),
                        Param("max_iter", int, "DiffRS NFE cap per sample (README: 105)")), one_generator=True),
    MethodSpec("pf", particle_filter, "particle-filter resampling (Liu et al. 2024)", "log_ratio",
               CHURN + _PARTICLES + _PF, particles=True),
    MethodSpec("restart", restart_sampler, "the Restart sampler (Xu et al. 2023)", None, CHURN),
    MethodSpec("d-select", discriminator_select, "best of K by the discriminator (Liu et al.'s D-Select)",
               "log_ratio", CHURN + _PARTICLES, particles=True),
    MethodSpec("best-of-n", best_of_n, "best of K by a score (a verifier of the final sample)", "score",
               CHURN + _PARTICLES, particles=True),
    # steering toward p(x0)·exp(reward(x0)) (docs/steering.md)
    MethodSpec("fk-steering", fk_steering, "Feynman–Kac steering by a reward (Singhal et al. 2025)", "reward",
               _PARTICLES + _STEER + (Param("potential", str, "FK potential: diff, max, sum or rt"),
                                      Param("interval", int, "resample every this many steps")), particles=True),
    MethodSpec("tds", tds, "twisted diffusion sampler (Wu et al. 2023)", "reward", _PARTICLES + _STEER, particles=True),
    MethodSpec("das", das, "tempered SMC toward the tilted target (DAS, Kim et al. 2025)", "reward",
               _PARTICLES + _STEER, particles=True),
    MethodSpec("fkc", fkc, "Feynman–Kac correctors (Skreta et al. 2025)", "reward", _PARTICLES + _STEER,
               particles=True),
    MethodSpec("dts", dts, "diffusion tree sampling (Jain et al. 2025)", "reward", _PARTICLES, particles=True),
    MethodSpec("dts*", dts, "diffusion tree search, greedy (DTS*; biased toward the reward's mode)", "reward",
               _PARTICLES, particles=True, fixed={"selection": "greedy"}),
    MethodSpec("noise-search", noise_search, "search over initial noises (Ma et al. 2025)", "reward",
               _PARTICLES + (Param("mode", str, "random, zero-order or paths"),)),
    # text to image (docs/text_to_image.md): latent models with prompts
    MethodSpec("pf-hybrid", pf_hybrid, "text-to-image PF: detector + latent discriminator (Liu et al. 2024)",
               "detector+log_ratio", CHURN + _PARTICLES + _T2I, particles=True, pipeline_only=True),
    MethodSpec("pf-detector", pf_detector, "text-to-image PF weighted by the object detector alone", "detector",
               CHURN + _PARTICLES + _T2I, particles=True, pipeline_only=True),
    MethodSpec("pf-discriminator", pf_discriminator, "text-to-image PF weighted by a prompt-conditioned latent "
               "discriminator", "log_ratio", CHURN + _PARTICLES + _T2I, particles=True, pipeline_only=True),
    MethodSpec("object-select", object_select, "best of K by the detector's object log-probability (baseline)",
               "detector", CHURN + _PARTICLES + _T2I[:1], particles=True, pipeline_only=True),
):
    register(_spec)
