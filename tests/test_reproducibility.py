"""A group's output depends on its seed alone: group g run among 8 groups equals the same seed run alone,
for every resampling scheme (through the engine, rejection control included) and every method that
takes one generator per output (DiffRS takes one generator: its continuous batching is the documented
exception; the text-to-image methods are tested in tests/methods/test_text_to_image.py). Float arithmetic on a batch of 8 vs 1 may differ in the last bits (BLAS blocking), so
states are compared to 1e-10 and every discrete choice (ancestors, selections) exactly."""

from __future__ import annotations

import pytest
import torch

import smcdiff
from smcdiff.engine import RejectionControl
from smcdiff.kernels import EDMHeun, karras_sigmas
from smcdiff.methods import registry
from smcdiff.methods.particle_filtering import LogRatioPotential
from smcdiff.models.pairs import mixture_pair_1d
from smcdiff.resampling import SCHEMES, Resampler

SEEDS = list(range(8))
PICK = 5  # the group compared


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("rc", [False, True], ids=["plain", "rejection-control"])
def test_every_scheme_gives_a_group_the_same_run_alone_or_among_eight(scheme, rc):
    _, model, ell = mixture_pair_1d()

    def run(seeds):
        return smcdiff.sample(model.denoise, karras_sigmas(10), EDMHeun(S_churn=5.0, resample_gamma=0.4),
                              LogRatioPotential(ell, 1e-4), Resampler(scheme, 0.8), len(seeds), 16, (1,),
                              gens(seeds), rejection_control=RejectionControl(0.5) if rc else None)

    many, one = run(SEEDS), run([SEEDS[PICK]])
    assert many.resampled[:, PICK].any()  # the comparison covers resampling
    assert torch.equal(many.ancestors[:, PICK], one.ancestors[:, 0])
    _close(many.particles[PICK], one.particles[0])
    _close(many.log_weights[PICK], one.log_weights[0])
    if rc:
        _close(many.accept_rate[:, PICK], one.accept_rate[:, 0])


def _calls():
    _, model, ell = mixture_pair_1d()
    sig = karras_sigmas(10)
    return {
        "edm": dict(S_churn=2.0),
        "dg": dict(log_ratio=ell, boosting=True, S_churn=2.0),
        "sedm": dict(log_ratio=ell),
        "pf": dict(log_ratio=ell, num_particles=4, S_churn=2.0, select="weighted"),
        "restart": dict(),
        "d-select": dict(log_ratio=ell, num_particles=3, S_churn=1.0),
        "best-of-n": dict(score=lambda x: -x[:, 0] ** 2, num_particles=3, S_churn=1.0),
        "fk-steering": dict(reward=lambda x: -x[:, 0] ** 2, num_particles=4, ess_threshold=0.9),
        "tds": dict(reward=lambda x: -x[:, 0] ** 2, num_particles=4, ess_threshold=0.9),
        "das": dict(reward=lambda x: -x[:, 0] ** 2, num_particles=4),
        "fkc": dict(reward=lambda x: -x[:, 0] ** 2, num_particles=4, ess_threshold=0.9),
        "dts": dict(reward=lambda x: -x[:, 0] ** 2, num_particles=4),
        "dts*": dict(reward=lambda x: -x[:, 0] ** 2, num_particles=4),
        "noise-search": dict(reward=lambda x: -x[:, 0] ** 2, num_particles=3),
    }, model, sig


@pytest.mark.parametrize("name", [n for n, s in registry.METHODS.items() if not (s.one_generator or s.pipeline_only)])
def test_every_method_gives_a_seed_the_same_output_alone_or_among_eight(name):
    calls, model, sig = _calls()
    assert name in calls, f"{name}: add its parameters to _calls()"
    spec = registry.method(name)
    sigmas = karras_sigmas(18) if name == "restart" else sig

    def run(seeds):
        return spec(model.denoise, sigmas, num_samples=len(seeds), shape=(1,), generator=gens(seeds), **calls[name])

    many, one = run(SEEDS), run([SEEDS[PICK]])
    _close(many.x[PICK], one.x[0])
    if many.selected is not None:
        assert int(many.selected[PICK]) == int(one.selected[0])
