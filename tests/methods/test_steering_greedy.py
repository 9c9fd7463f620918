"""The greedy steering choices do what they claim (pick the best reward they saw) and are biased
towards the reward's mode, as their docs say; plus the shared calling convention and NFE counts."""

import math

import pytest
import torch

from smcdiff.kernels import EDMEuler, karras_sigmas
from smcdiff.methods import best_of_n
from smcdiff.methods.tempered_smc import das
from smcdiff.methods.tree_search import dts
from smcdiff.methods.reward_steering import evaluation_steps, fk_steering, lineage_sum
from smcdiff.methods.fk_correctors import fkc
from smcdiff.methods.search_over_noise import neighbours, noise_search
from smcdiff.methods.twisted_smc import tds
from smcdiff.models.tilted import example_2d

TILT = example_2d("linear")  # r = 1.5·bᵀx: E_π[r] = 1.5·bᵀ mean_π in closed form
EXPECTED_REWARD = float(TILT.reward(TILT.target.mean[None]))
SIGMAS = karras_sigmas(16)


def call(method, seed=0, num_samples=256, **params):
    return method(TILT.prior.denoise, SIGMAS, reward=TILT.reward, num_samples=num_samples, shape=(2,),
                  generator=torch.Generator().manual_seed(seed), **params)


def mean_se(v):
    return float(v.mean()), float(v.std()) / math.sqrt(v.shape[0])


def test_argmax_choices_pick_the_best_reward_seen_and_are_biased_upwards():
    for res in (call(fk_steering, num_particles=16, final="argmax"), call(tds, num_particles=16, final="argmax"),
                call(dts, num_particles=16, selection="greedy")):
        rewards = TILT.reward(res.particles.flatten(0, 1)).reshape(res.particles.shape[:2])
        rewards = torch.where(torch.isfinite(res.log_weights), rewards, -math.inf)  # DTS: leaves only
        assert torch.allclose(TILT.reward(res.x), rewards.max(1).values)
        m, se = mean_se(TILT.reward(res.x))
        assert m > EXPECTED_REWARD + 5 * se  # the mode-seeking bias the docs state


def test_best_of_n_reward_grows_with_n():
    means = []
    for n in (1, 4, 16):
        res = best_of_n(TILT.prior.denoise, SIGMAS, score=TILT.reward, num_samples=512, shape=(2,),
                        generator=torch.Generator().manual_seed(1), num_particles=n)
        assert torch.allclose(TILT.reward(res.x), res.log_weights.max(1).values)
        means.append(mean_se(TILT.reward(res.x)))
    assert means[0][0] + 5 * means[0][1] < means[1][0] < means[2][0]
    assert means[2][0] > EXPECTED_REWARD + 5 * means[2][1]


def test_random_and_path_search_return_their_best_candidate():
    for mode in ("random", "paths"):
        res = call(noise_search, seed=2, num_particles=4, mode=mode, rounds=3, kernel=None)
        assert torch.allclose(TILT.reward(res.x), res.diagnostics["best"][-1])
        assert (res.diagnostics["best"][1:] >= res.diagnostics["best"][:-1]).all()
    res = call(noise_search, seed=2, num_particles=4, mode="random", rounds=3, kernel=EDMEuler())
    assert res.nfe == 3 * 4 * 16 and res.disc_calls == 12


def test_zero_order_neighbours_and_monotone_search():
    pivot = torch.randn(5, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    nb = neighbours(pivot, 7, 0.95, torch.Generator().manual_seed(1))
    p, q = pivot.reshape(5, 1, -1), nb.reshape(5, 7, -1)
    assert torch.allclose(q.norm(dim=2), p.norm(dim=2).expand(5, 7))
    assert torch.allclose((q * p).sum(2) / (q.norm(dim=2) * p.norm(dim=2)), torch.full((5, 7), 0.95, dtype=torch.float64))
    res = call(noise_search, seed=3, num_particles=4, mode="zero_order", rounds=5)
    best = res.diagnostics["best"]
    assert (best[1:] >= best[:-1]).all() and (best[-1] > best[0]).any()
    assert torch.allclose(TILT.reward(res.x), best[-1])


def test_evaluation_steps_and_lineage_sum():
    assert sorted(evaluation_steps(10, 3, (2, 8))) == [2, 5, 8, 9]
    assert sorted(evaluation_steps(10)) == list(range(10))
    with pytest.raises(ValueError, match="window"):
        evaluation_steps(10, 1, (5, 12))
    # Two steps, two particles: after step 0 both descend from particle 1.
    values = torch.tensor([[[1.0, 10.0]], [[100.0, 1000.0]]], dtype=torch.float64)
    ancestors = torch.tensor([[[1, 1]], [[0, 1]]])
    assert lineage_sum(values, ancestors, {0, 1}).tolist() == [[110.0, 1010.0]]
    assert lineage_sum(values, ancestors, {0}).tolist() == [[10.0, 10.0]]


@pytest.mark.parametrize("method, nfe, rewards", [
    (fk_steering, 8 * 16, 8 * 16),       # K × N; K × |S| rewards (S = every step)
    (tds, 8 * 16, 8 * (16 + 16)),        # 16 denoiser forward+backward; 16 twist + 16 potential rewards
    (das, 8 * 16, 8 * (16 + 16)),
    (fkc, 8 * 16, 8 * 16),               # reward mode: one reward per step on the noisy state
    (dts, None, 8),                      # 8 rollouts, one reward each
])
def test_calling_convention_and_cost(method, nfe, rewards):
    res = call(method, seed=4, num_samples=3, num_particles=8)
    assert res.x.shape == (3, 2) and torch.isfinite(res.x).all()
    if nfe is not None:
        assert res.nfe == nfe
    else:
        assert 0 < res.nfe <= 8 * 16
    assert res.disc_calls == rewards
    with pytest.raises(TypeError, match="reward"):
        method(TILT.prior.denoise, SIGMAS, reward=None, num_samples=2, shape=(2,), generator=torch.Generator())
    with pytest.raises(ValueError, match="num_particles|max_children"):
        method(TILT.prior.denoise, SIGMAS, reward=TILT.reward, num_samples=2, shape=(2,),
               generator=torch.Generator(), num_particles=0)


def test_bad_options():
    with pytest.raises(ValueError, match="potential"):
        call(fk_steering, potential="add")
    with pytest.raises(ValueError, match="selection"):
        call(dts, selection="ucb")
    with pytest.raises(ValueError, match="mode"):
        call(noise_search, mode="beam")
    with pytest.raises(ValueError, match="threshold"):
        call(noise_search, mode="zero_order", threshold=1.0)


@pytest.mark.parametrize("method, params", [
    (fk_steering, {"potential": "max", "final": "argmax"}), (tds, {}), (das, {}), (fkc, {}), (dts, {}),
    (noise_search, {"mode": "zero_order"}), (noise_search, {"mode": "paths"}),
])
def test_results_export_plot_and_summarise(method, params, tmp_path):
    import arviz as az

    from smcdiff.diagnostics import plot, summary

    res = call(method, seed=5, num_samples=3, num_particles=4, **params)
    res.to_arviz().to_netcdf(str(tmp_path / "r.nc"))
    back = az.from_netcdf(str(tmp_path / "r.nc"))
    assert back.posterior["x"].shape[:2] == tuple(res.particles.shape[:2])
    assert back.smc_diagnostics["ess"].shape == tuple(res.ess.shape)
    plot(res, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000 and "groups" in summary(res)
