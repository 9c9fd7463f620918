"""Every method keeps the one calling convention of issue 3 and returns what it promises."""

import inspect

import pytest
import torch

from smcdiff import methods
from smcdiff.kernels import karras_sigmas
from smcdiff.methods import MethodResult
from tests.methods.problems import pair_2d

NAMES = ["dg", "sedm", "diffrs", "particle_filter", "best_of_n", "discriminator_select"]
PARTICLE = {"particle_filter", "best_of_n", "discriminator_select"}


@pytest.mark.parametrize("name", NAMES)
def test_signature(name):
    params = inspect.signature(getattr(methods, name)).parameters
    names = list(params)
    assert names[:2] == ["denoiser", "sigmas"]
    for key in ("log_ratio", "num_samples", "shape", "generator", "x_init"):
        assert params[key].kind is inspect.Parameter.KEYWORD_ONLY, key
    assert params["log_ratio"].default is None and params["x_init"].default is None


@pytest.mark.parametrize("name", NAMES)
def test_result(name):
    data, model, ell = pair_2d()
    n, K = 6, 3
    kwargs = {"num_particles": K} if name in PARTICLE else {}
    out = getattr(methods, name)(model.denoise, karras_sigmas(5), log_ratio=ell, num_samples=n, shape=(2,),
                                 generator=torch.Generator().manual_seed(0), **kwargs)
    assert isinstance(out, MethodResult)
    assert out.x.shape == (n, 2) and torch.isfinite(out.x).all()
    assert out.nfe >= 2 * 5 - 1 and out.disc_calls > 0
    if name in PARTICLE:
        assert out.particles.shape == (n, K, 2) and out.log_weights.shape == (n, K)
        assert out.nfe == K * 9
