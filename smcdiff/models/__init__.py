"""Denoisers, discriminators and exact models.

* :class:`GaussianMixture` and :mod:`smcdiff.models.pairs` — exact mixtures for testing and demos.
* :mod:`smcdiff.models.precond` — EDM/VP/VE/iDDPM preconditioning around :mod:`~smcdiff.models.song_unet`
  (DDPM++/NCSN++) and :mod:`~smcdiff.models.dhariwal_unet` (ADM-style), clean-room.
* :func:`load_edm` — reads published EDM network pickles (safe mode by default, executes no code).
* :mod:`smcdiff.models.adm`, :class:`~smcdiff.models.discriminator.DGDiscriminator` — the ADM noisy
  classifier and the DG time-dependent discriminator (ℓ, ∇ℓ, guidance, PF ratio).
"""

from smcdiff.models.gmm import GaussianMixture
from smcdiff.models.pickle_loader import load_edm

__all__ = ["GaussianMixture", "load_edm"]
