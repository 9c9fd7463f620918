"""The asymptotically exact steering methods recover closed-form tilted mixtures (smcdiff.models.tilted).

Each run is G independent groups of K particles; a group gives a self-normalised estimate of the
tilted mean and component weights (mean responsibilities under the exact target) and an estimate
Ẑ_g = exp(log_evidence_g) of the normaliser (unbiased for the discretised chain). The estimates are
compared with the closed form within 5 standard errors, the s.e. being the standard deviation over
groups / sqrt(G) (groups are independent; the self-normalisation bias is O(1/K), K = 128, well
below it). The base chain is Euler–Maruyama on 100 Karras steps, whose own bias on these problems
(measured with 100 000 importance-weighted draws) is under 1.5 of these standard errors.
"""

import math

import pytest
import torch

from smcdiff.kernels import karras_sigmas
from smcdiff.methods.tempered_smc import das
from smcdiff.methods.tree_search import dts
from smcdiff.methods.reward_steering import fk_steering
from smcdiff.methods.fk_correctors import fkc
from smcdiff.methods.twisted_smc import tds
from smcdiff.models.tilted import (
    component_weights,
    example_2d,
    example_8d,
    quadratic_tilt,
)

G, K, STEPS = 32, 128, 100


def problem(name):
    return {"2d-quadratic": lambda: example_2d("quadratic"), "2d-linear": lambda: example_2d("linear"),
            "8d-quadratic": lambda: example_8d("quadratic"), "8d-linear": lambda: example_8d("linear")}[name]()


def group_estimates(res, tilt):
    """Per group: weighted mean (G, d), component weights (G, C), Ẑ (G,)."""
    w = torch.softmax(res.log_weights, 1)
    means = torch.einsum("gk,gkd->gd", w, res.particles.flatten(2))
    comps = torch.stack([component_weights(tilt.target, p, lw) for p, lw in zip(res.particles, res.log_weights)])
    return means, comps, res.log_evidence.exp()


def assert_exact(res, tilt, check_z=True, z_factor=1.0):
    means, comps, z = group_estimates(res, tilt)
    n = means.shape[0]
    # A rare component may appear in no group, making the spread over groups ~0: no estimate from
    # the run can be more precise than its ESS i.i.d. draws of the target, so the s.e. is floored
    # at the exact sd / sqrt(total ESS).
    ess = float(res.ess[-1].sum()) if res.ess.shape[0] else 1.0
    w = tilt.target.weights
    floors = (tilt.target.cov.diagonal() / ess).sqrt(), (w * (1 - w) / ess).sqrt()
    for est, exact, floor, what in ((means, tilt.target.mean, floors[0], "mean"),
                                    (comps, w, floors[1], "weights")):
        err, se = est.mean(0) - exact, torch.maximum(est.std(0) / math.sqrt(n), floor)
        assert (err.abs() < 5 * se).all(), f"{what}: error {err.tolist()} vs 5 s.e. {(5 * se).tolist()}"
        assert (err.abs() > 0).any()  # not a copy of the answer
    if check_z:
        exact = float(tilt.log_z.exp()) * z_factor
        err, se = float(z.mean()) - exact, float(z.std()) / math.sqrt(n)
        assert abs(err) < 5 * se, f"Z: {float(z.mean())} vs {exact} (5 s.e. {5 * se})"


def run(method, tilt, seed=0, **params):
    return method(tilt.prior.denoise, karras_sigmas(STEPS), reward=tilt.reward, num_samples=G,
                  shape=(tilt.prior.dim,), generator=torch.Generator().manual_seed(seed), num_particles=K,
                  final="all", **params)


@pytest.mark.parametrize("name", ["2d-quadratic", "8d-quadratic", pytest.param("2d-linear", marks=pytest.mark.slow),
                                  pytest.param("8d-linear", marks=pytest.mark.slow)])
def test_fk_steering_difference_potential(name):
    tilt = problem(name)
    assert_exact(run(fk_steering, tilt, ess_threshold=0.5), tilt)


def test_fk_steering_resampling_at_every_step():
    tilt = problem("2d-quadratic")
    assert_exact(run(fk_steering, tilt, seed=10), tilt)


def test_fk_steering_adaptive_interval_keeps_the_weights():
    """Resampling only when ESS < 0.5 K, every 7th step in a window: the skipped steps carry their
    weights (FK steering's issue #12), so the target is unchanged."""
    tilt = problem("2d-quadratic")
    assert_exact(run(fk_steering, tilt, seed=1, interval=7, window=(10, 90), ess_threshold=0.5), tilt)


@pytest.mark.parametrize("form", ["rt", "max", "sum"])
def test_fk_steering_incremental_potentials_with_the_final_correction(form):
    """Exact with few evaluation steps (S = {0, 50, 99}). With many (every 10th step) the
    intermediate targets p·exp(Σ_s r_s) over-tilt by |S|·r and the final correction's weights
    degenerate: the "rt"/"sum" group estimates were then 13 s.e. off at K = 128 (see fk_steering)."""
    tilt = problem("2d-linear")
    assert_exact(run(fk_steering, tilt, seed=2, potential=form, interval=50), tilt)


@pytest.mark.parametrize("name", ["2d-quadratic", "8d-quadratic", pytest.param("2d-linear", marks=pytest.mark.slow)])
def test_tds(name):
    tilt = problem(name)
    assert_exact(run(tds, tilt, seed=3), tilt)


@pytest.mark.parametrize("name", ["2d-quadratic", pytest.param("8d-linear", marks=pytest.mark.slow)])
def test_das(name):
    tilt = problem(name)
    assert_exact(run(das, tilt, seed=4), tilt)


@pytest.mark.parametrize("name", ["2d-quadratic", pytest.param("8d-quadratic", marks=pytest.mark.slow)])
def test_fkc_cfg_on_prior_and_tilt_targets_the_doubled_tilt(name):
    """CFG with w = 2 between the prior p and the tilted π = p·e^r/Z targets p^(1−w)·π^w ∝ p·e^{2r}:
    again a closed-form tilt (λ doubled). Z of the unnormalised p^(−1)·π^2 is Z(2r)/Z(r)^2."""
    tilt = problem(name)
    r = tilt.reward
    double = quadratic_tilt(tilt.prior, r.A, r.y, r.s, 2 * r.lam)
    res = run(fkc, double, seed=5, expert=tilt.target.denoise, a=-1.0, b=2.0)
    assert_exact(res, double, z_factor=math.exp(-2 * float(tilt.log_z)))


def test_fkc_reward_on_the_noisy_state():
    tilt = problem("2d-linear")
    assert_exact(run(fkc, tilt, seed=6), tilt, check_z=False)  # log Ẑ converges as O(step), slowly


@pytest.mark.parametrize("name", ["2d-linear", pytest.param("8d-quadratic", marks=pytest.mark.slow)])
def test_dts_uniform_tree_is_exact(name):
    """A tree grown without looking at values (uniform selection) is a nested importance sampler:
    its weighted leaves are exact for any budget."""
    tilt = problem(name)
    res = dts(tilt.prior.denoise, karras_sigmas(STEPS), reward=tilt.reward, num_samples=256, shape=(tilt.prior.dim,),
              generator=torch.Generator().manual_seed(7), num_particles=16, selection="uniform", final="all")
    assert_exact(res, tilt)


def test_dts_boltzmann_is_exact_once_the_tree_is_complete():
    """With 3 steps and 2 children per node the tree has 2³ leaves; 8 iterations complete it whatever
    the Boltzmann choices, so DTS's weighted leaves are then exact for the 3-step chain. Reference:
    plain EM on the same chain weighted by exp r (200 000 draws), compared within 5 combined s.e."""
    tilt, sigmas = problem("2d-quadratic"), karras_sigmas(3)
    res = dts(tilt.prior.denoise, sigmas, reward=tilt.reward, num_samples=2000, shape=(2,),
              generator=torch.Generator().manual_seed(8), num_particles=8, max_children=2, final="all")
    assert (res.diagnostics["leaves"] == 8).all()
    from smcdiff.kernels import EulerMaruyama

    g, n = torch.Generator().manual_seed(9), 200_000
    x = sigmas[0] * torch.randn(n, 2, dtype=torch.float64, generator=g)
    for i in range(3):
        x = EulerMaruyama()(tilt.prior.denoise, x, sigmas, i, g).x
    w = tilt.reward(x).exp()
    ref_z, ref_z_se = float(w.mean()), float(w.std()) / math.sqrt(n)
    ref_m = (w[:, None] * x).sum(0) / w.sum()
    ref_m_se = ((w[:, None] ** 2 * (x - ref_m) ** 2).mean(0) / n).sqrt() / w.mean()
    means, _, z = group_estimates(res, tilt)
    m_se = means.std(0) / math.sqrt(means.shape[0])
    assert ((means.mean(0) - ref_m).abs() < 5 * (m_se**2 + ref_m_se**2).sqrt()).all()
    assert abs(float(z.mean()) - ref_z) < 5 * math.hypot(float(z.std()) / math.sqrt(z.shape[0]), ref_z_se)
    # The chain is crude: its tilt is far from the closed form, so this test is not the one above.
    assert (ref_m - tilt.target.mean).abs().max() > 0.1
