"""Denoisers, discriminators and exact models."""

from smcdiff.models.gmm import GaussianMixture

__all__ = ["GaussianMixture"]
