"""Denoisers, discriminators and exact models.

* :class:`GaussianMixture` and :mod:`smcdiff.models.pairs` — exact mixtures for testing and demos.
* :mod:`smcdiff.models.precond` — EDM/VP/VE/iDDPM preconditioning around :mod:`~smcdiff.models.song_unet`
  (DDPM++/NCSN++) and :mod:`~smcdiff.models.dhariwal_unet` (ADM-style), clean-room.
* :func:`load_edm` — reads published EDM network pickles (safe mode by default, executes no code).
* :mod:`smcdiff.models.adm`, :class:`~smcdiff.models.discriminator.DGDiscriminator` — the ADM noisy
  classifier and the DG time-dependent discriminator (ℓ, ∇ℓ, guidance, PF ratio).
* :func:`from_diffusers`, :func:`from_flow_matching`, :func:`from_k_diffusion` — the models people
  use (diffusers ε/v/x0 and flow-matching pipelines, k-diffusion wrappers) as EDM denoisers
  ``D(x, σ, **cond)``; diffusers is imported only when one is called (extra ``smcdiff[diffusers]``).
"""

from smcdiff.models.diffusers_adapter import from_diffusers, from_k_diffusion
from smcdiff.models.file_formats import FileFormatError
from smcdiff.models.flow_adapter import from_flow_matching
from smcdiff.models.gmm import GaussianMixture
from smcdiff.models.pickle_loader import load_edm

__all__ = ["GaussianMixture", "load_edm", "FileFormatError", "from_diffusers", "from_flow_matching", "from_k_diffusion"]
