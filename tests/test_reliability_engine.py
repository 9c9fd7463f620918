"""Bad inputs to the engine, smcdiff.sample, the kernels and the methods: each raises a clear error
(the rows of docs/reliability.md, section "engine, sampler, kernels, methods")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import smcdiff
from smcdiff import engine
from smcdiff.engine import RejectionControl, SMCFailedError
from smcdiff.kernels import (
    CorrectedEulerMaruyama, DiscriminatorGuidance, EDMHeun, EulerMaruyama, Guided, Restart, heun_step, karras_sigmas,
)
from smcdiff.methods import best_of_n, dg, particle_filter, registry
from smcdiff.models.pairs import mixture_pair_1d
from smcdiff.resampling import Resampler

_, MODEL, ELL = mixture_pair_1d()
SIG = karras_sigmas(8)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def sample(**kw):
    args = dict(denoiser=MODEL.denoise, sigmas=SIG, kernel=EDMHeun(S_churn=1.0), num_groups=2, num_particles=3,
                shape=(1,), generator=gen())
    args.update(kw)
    return smcdiff.sample(**args)


def nan_denoiser(x, sigma):
    return torch.full_like(x, math.nan)


def nan_potential(x, sigma, x0_hat):
    return torch.full((x.shape[0],), math.nan, dtype=torch.float64)


class Walk:
    num_steps = 3

    def init(self, G, K, generator):
        return torch.zeros(G, K, dtype=torch.float64)

    def move(self, t, x, generator):
        return x + 1

    def log_potential(self, t, x_prev, x):
        return torch.zeros_like(x)


ROWS = [
    # (row id, call, exception, message regex)
    ("E1", lambda: sample(generator=None), TypeError, "needs generator"),
    ("E2", lambda: sample(kernel="heun"), TypeError, "kernel must be callable"),
    ("E3", lambda: sample(resampler="systematic"), TypeError, "resampler must be a smcdiff.Resampler"),
    ("E4", lambda: sample(final="best"), ValueError, "final must be one of"),
    ("E5", lambda: sample(final="argmax"), ValueError, "picks by the last potential value"),
    ("E6", lambda: sample(x_init=torch.full((2, 3, 1), math.nan)), ValueError, "x_init contains NaN"),
    ("E7", lambda: sample(num_particles=True), ValueError, "num_particles must be an int"),
    ("E8", lambda: sample(num_particles=2.0), ValueError, "num_particles must be an int"),
    ("E9", lambda: sample(potential=lambda x, s, x0: x0[:, 0], potential_steps=[99]), ValueError,
     r"potential_steps must lie in \[0, 7\]"),
    ("E10", lambda: sample(resampler=Resampler(), resample_steps=[-1]), ValueError, "resample_steps must lie"),
    ("E11", lambda: sample(denoiser=nan_denoiser), SMCFailedError, "denoiser returned non-finite values at step 0"),
    ("E12", lambda: sample(denoiser=lambda x, s: x[:, :0]), ValueError, "denoiser must return x0_hat of the input's shape"),
    ("E13", lambda: sample(potential=nan_potential), SMCFailedError, "potential 'nan_potential' returned NaN"),
    ("E14", lambda: sample(potential=lambda x, s, x0: x0), ValueError, "one log-value per sample"),
    ("E15", lambda: sample(cond={"y": torch.zeros(3, 2)}), ValueError, r"cond\['y'\] must have leading dims"),
    ("E16", lambda: EDMHeun(S_noise=math.inf), ValueError, "finite S_noise"),
    ("E17", lambda: EDMHeun(S_churn=math.nan), ValueError, "S_churn must be a number, got NaN"),
    ("E18", lambda: EDMHeun(S_churn="10"), TypeError, "S_churn must be a number"),
    ("E19", lambda: EDMHeun(resample_gamma=1.0), ValueError, "resample_gamma must be in"),
    ("E20", lambda: Restart(restart_gamma=-1.0), ValueError, "restart_gamma must be finite and >= 0"),
    ("E21", lambda: CorrectedEulerMaruyama("dg"), TypeError, "is not a denoiser transform"),
    ("E22", lambda: Guided("heun"), TypeError, "kernel must be callable"),
    ("E23", lambda: DiscriminatorGuidance(ELL, w1=math.nan), ValueError, "must be finite"),
    ("E24", lambda: DiscriminatorGuidance(ELL, double_every=0), ValueError, "double_every must be None or an int"),
    ("E25", lambda: engine.run(Walk(), 2, 3, None, gen(), check_every=0), ValueError, "check_every must be an int"),
    ("E26", lambda: engine.step(Walk(), engine.init(Walk(), 2, 3, gen()), 0, None, rejection_control=RejectionControl()),
     ValueError, "rejection_control=True"),
    ("E27", lambda: engine.run(object(), 2, 3, None, gen()), TypeError, "is not a Feynman–Kac model"),
    ("E28", lambda: heun_step(MODEL.denoise, torch.zeros(2, 1, dtype=torch.float64),
                              torch.tensor([1.0, 1.0], dtype=torch.float64), torch.tensor([0.5, 0.0], dtype=torch.float64)),
     ValueError, "heun_step_per_slot"),
    ("E29", lambda: dg(MODEL.denoise, SIG, log_ratio=lambda x, s: torch.zeros(x.shape[0], dtype=torch.float64),
                       num_samples=2, shape=(1,), generator=gen()), ValueError, "no gradient path"),
    ("E30", lambda: dg(MODEL.denoise, SIG, log_ratio=lambda x, s: math.nan * x.sum(1), num_samples=2, shape=(1,),
                       generator=gen()), SMCFailedError, "guidance term .* non-finite"),
    ("E31", lambda: dg(MODEL.denoise, SIG, num_samples=2, shape=(1,), generator=[gen()]), ValueError,
     "one torch.Generator per group"),
    ("E32", lambda: particle_filter(MODEL.denoise, karras_sigmas(12), log_ratio=lambda x, s: torch.full(
        (x.shape[0],), -math.inf, dtype=torch.float64) + 0 * x.sum(1), num_samples=2, shape=(1,), generator=gen()),
     SMCFailedError, "every particle has weight zero"),
    ("E33", lambda: particle_filter(MODEL.denoise, karras_sigmas(12), log_ratio=lambda x, s: math.nan * x.sum(1),
                                    num_samples=2, shape=(1,), generator=gen()), SMCFailedError, "returned NaN"),
    ("E34", lambda: best_of_n(MODEL.denoise, SIG, score=lambda x: torch.where(x[:, 0] > 0, math.nan, 0.0).double(),
                              num_samples=4, shape=(1,), generator=gen()), SMCFailedError, "potential 'score'"),
    ("E35", lambda: registry.method("ddim"), ValueError, "unknown method 'ddim'"),
    ("E36", lambda: particle_filter(MODEL.denoise, SIG, log_ratio=ELL, num_samples=2, shape=(1,), generator=gen(),
                                    final_sigma=math.inf), ValueError, "final_sigma must be finite"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_raises_a_clear_error(row):
    _, call, exc, match = row
    with pytest.raises(exc, match=match):
        call()


def test_numpy_integers_are_accepted_where_ints_are():
    res = sample(num_groups=np.int64(2), num_particles=np.int32(3))
    assert res.x.shape == (2, 3, 1)
    assert dg(MODEL.denoise, SIG, num_samples=np.int64(2), shape=(1,), generator=gen()).x.shape == (2, 1)


def test_a_deferred_check_still_names_the_first_bad_step():
    with pytest.raises(SMCFailedError, match="at step 0"):
        sample(denoiser=nan_denoiser, kernel=EulerMaruyama(), check_every=100)
