"""DiffRS (REFERENCE §3, §7.5): reduction to the base sampler, exact tilting, bookkeeping, bad input.

Closed-form facts used below. With a deterministic Heun sampler, ``max_iter = 2N − 1`` (any
rejected proposal restarts the trajectory) and M at least the largest ratio, DiffRS is plain
rejection sampling of whole paths: the acceptance telescopes to r_N(x_N)/(M_0 ΠM^trans_k), so the
output law is the base sampler's law tilted by r_N = q/p. For Gaussians (model N(0, s_m²),
data N(0, s_d²)) the Heun map is linear, so that tilt has variance 1/(1/v + 1/s_d² − 1/s_m²) with v
the base sampler's own variance.
"""

import math

import pytest
import torch

from smcdiff.kernels import EDMHeun, karras_sigmas
from smcdiff.methods.rejection_sampling import (accept, diffrs, estimate_log_M, heun_step_per_slot, log_M_from_ratios,
                                                needs_restart, renoise)
from smcdiff.models import GaussianMixture
from tests.methods.problems import pair_1d, pair_2d, zero_ratio

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def gen(seed):
    return torch.Generator().manual_seed(seed)


def base_sampler(denoiser, sigmas, z, generator, **churn):
    """EDM Heun from σ_0·z with the kernel's own noise draws (the reference for bit-exactness)."""
    kernel, x = EDMHeun(**churn), z * sigmas[0]
    for i in range(len(sigmas) - 1):
        x = kernel(denoiser, x, sigmas, i, generator).x
    return x


def gaussians(s_m=0.6, s_d=0.5):
    def g(s):
        return GaussianMixture(torch.ones(1, dtype=F64), torch.zeros(1, 1, dtype=F64), torch.tensor([s * s], dtype=F64))

    data, model = g(s_d), g(s_m)
    return data, model, lambda x, sigma, **c: data.log_ratio(model, x, sigma)


def zero_denoiser(x, sigma, **cond):
    return torch.zeros_like(x)


def level_ratio(sigmas, values):
    """A stub ℓ that depends on σ only: ℓ(x, t_k) = values[k]."""

    def log_ratio(x, sigma, **cond):
        k = (sigma[:, None] == sigmas[None, :]).to(torch.long).argmax(1)
        assert bool((sigmas[k] == sigma).all())
        return values[k]

    return log_ratio


# ----------------------------------------------------------------------------- ℓ ≡ 0: the base sampler
@pytest.mark.parametrize("churn", [{}, {"S_churn": 5.0, "S_min": 0.05, "S_max": 50.0}])
@pytest.mark.parametrize("given_latents", [True, False])
def test_zero_ratio_is_the_base_sampler_bit_for_bit(churn, given_latents):
    _, model, _ = pair_2d()
    sig, n, N = karras_sigmas(18), 64, 18
    z = torch.randn((n, 2), generator=gen(11), dtype=F64) if given_latents else None
    g_ref, g = gen(3), gen(3)
    z_ref = z if given_latents else torch.randn((n, 2), generator=g_ref, dtype=F64)
    ref = base_sampler(model.denoise, sig, z_ref, g_ref, **churn)
    res = diffrs(model.denoise, sig, log_ratio=zero_ratio, num_samples=n, shape=(2,), generator=g, x_init=z,
                 num_warmup=32, **churn)
    assert torch.equal(res.x, ref)
    assert torch.equal(g.get_state(), g_ref.get_state())  # same draws from the caller's stream
    assert res.nfe == 2 * N - 1 and res.disc_calls == N + 1  # one initial test + one per step
    d = res.diagnostics
    assert d["restarts"] == 0 and d["iterations"] == N
    assert bool((d["accept_rate_transition"][1:] == 1).all()) and d["accept_rate_marginal"][0] == 1
    assert bool((d["log_M_marginal"] == 0).all()) and bool((d["log_M_transition"] == 0).all())
    assert d["nfe_warmup"] == 32 * (2 * N - 1) and d["disc_calls_warmup"] == 32 * (N + 1)


def test_zero_ratio_with_fewer_slots_keeps_row_i_on_latent_i():
    # Continuous batching (3 slots, 10 outputs): deterministic Heun, so row i is the base path of x_init[i].
    _, model, _ = pair_1d()
    sig = karras_sigmas(18)
    z = torch.randn((10, 1), generator=gen(0), dtype=F64)
    res = diffrs(model.denoise, sig, log_ratio=zero_ratio, num_samples=10, shape=(1,), generator=gen(1), x_init=z,
                 batch_size=3, log_M=(torch.zeros(19), torch.zeros(19)))
    torch.testing.assert_close(res.x, base_sampler(model.denoise, sig, z, gen(2)), rtol=0, atol=1e-12)
    assert res.nfe == 35 and res.diagnostics["nfe_warmup"] == 0


# ----------------------------------------------------------------------------- statistics (exact ratio)
def tilted_weights(data, model, sigmas, n, seed):
    """Component-0 frequency of the base sampler's law tilted by r = q/p (self-normalised), and its draws."""
    x = base_sampler(model.denoise, sigmas, torch.randn((n, 1), generator=gen(seed), dtype=F64), gen(seed + 1))
    w = torch.softmax(data.log_ratio(model, x, 0.0), 0)
    return float((w * data.responsibilities(x)[:, 0]).sum()), x


def test_path_rejection_on_pair_1d_reaches_the_data_weights():
    # max_iter = 2N − 1 and γ = 1: exact rejection of whole paths (module docstring), so the output
    # follows the base law tilted by r = q/p. Its component-0 frequency must sit within 5 SE of that
    # target (estimated from 50k base draws, SE ≈ 0.003: measured 0.713 with 200k) and of the data
    # weight 0.7 plus the discretisation allowance |target − 0.7| (Heun, N = 18), and far from the
    # base sampler (≈ 0.40).
    data, model, log_ratio = pair_1d()
    sig, n = karras_sigmas(18), 600
    res = diffrs(model.denoise, sig, log_ratio=log_ratio, num_samples=n, shape=(1,), generator=gen(4),
                 rej_percentile=1.0, max_iter=35)
    r = data.responsibilities(res.x)[:, 0]
    se = float(r.std()) / math.sqrt(n)
    target, x_base = tilted_weights(data, model, sig, 50000, 100)
    base_w = float(data.responsibilities(x_base)[:, 0].mean())
    w, w_data = float(r.mean()), float(data.weights[0])
    assert abs(w - target) < 5 * se
    assert abs(w - w_data) < 5 * se + abs(target - w_data)
    assert abs(w - w_data) < 0.25 * abs(base_w - w_data)
    assert res.diagnostics["restarts"] > 0 and res.nfe > 35  # abandoned paths are counted


def test_default_rejection_on_pair_1d_moves_toward_the_data():
    # No max_iter cap, γ < 1: DiffRS as the README runs it. Rejected samples are re-noised and retried
    # from nearby, and M caps the ratio, so the correction is partial: measured (n = 4000) ≈ 0.57 at
    # γ = 0.75 and ≈ 0.66 at γ = 0.99, from the base sampler's 0.404 (data weight 0.70).
    data, model, log_ratio = pair_1d()
    sig, n = karras_sigmas(18), 800
    for gamma, least in ((0.75, 0.48), (0.99, 0.58)):
        res = diffrs(model.denoise, sig, log_ratio=log_ratio, num_samples=n, shape=(1,), generator=gen(5),
                     rej_percentile=gamma, num_warmup=4000)
        w = float(data.responsibilities(res.x)[:, 0].mean())
        assert least < w < float(data.weights[0]) + 5 * 0.5 / math.sqrt(n), (gamma, w)
        assert 35 < res.nfe < 60


def test_gaussian_variance_reference_7_5():
    # Model N(0, 0.6²), data N(0, 0.5²). Path rejection gives the closed-form tilt of the base law;
    # the README setting (γ = 0.75, no cap) moves the variance from the base value toward 0.25.
    data, model, log_ratio = gaussians()
    sig, n = karras_sigmas(18), 4000
    v = float(base_sampler(model.denoise, sig, torch.ones(1, 1, dtype=F64), gen(0))[0, 0]) ** 2  # linear map
    assert abs(v - 0.3986) < 1e-3  # Heun's own error with N = 18 (exact: 0.36)
    expect = 1 / (1 / v + 1 / 0.25 - 1 / 0.36)  # ≈ 0.268
    exact = diffrs(model.denoise, sig, log_ratio=log_ratio, num_samples=n, shape=(1,), generator=gen(6),
                   rej_percentile=1.0, max_iter=35, num_warmup=4000)
    se = expect * math.sqrt(2 / (n - 1))
    assert abs(float(exact.x.var()) - expect) < 5 * se
    readme = diffrs(model.denoise, sig, log_ratio=log_ratio, num_samples=n, shape=(1,), generator=gen(7),
                    num_warmup=4000)
    assert expect - 5 * se < float(readme.x.var()) < v - 5 * v * math.sqrt(2 / (n - 1))


# ----------------------------------------------------------------------------- bookkeeping
def test_pure_pieces():
    u = torch.tensor([0.0, 0.5, 0.999])
    ell = torch.log(torch.tensor([0.2, 0.6, 0.999])) + 0.3
    assert accept(ell, torch.tensor(0.3), u).tolist() == [True, True, False]
    assert accept(ell + 1.0, torch.tensor(0.3), u, ell_prev=torch.ones(3)).tolist() == [True, True, False]
    near_one = torch.tensor([1 - 1e-6, 1 - 5e-8], dtype=F64)  # rejecting ℓ = log M needs U > 1 − 1e−7
    assert accept(torch.zeros(2, dtype=F64), torch.tensor(0.0, dtype=F64), near_one).tolist() == [True, False]
    x, eps = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, -1.0]])
    torch.testing.assert_close(renoise(x, torch.tensor([3.0]), torch.tensor([5.0]), eps), x + 4.0 * eps)
    nfe, k = torch.tensor([0, 4, 5, 36, 35]), torch.tensor([0, 2, 2, 17, 18])
    assert needs_restart(nfe, k, 18, 35).tolist() == [False, False, True, True, False]
    assert needs_restart(nfe, k, 18, None).tolist() == [False] * 5


def trace_run(N=6, tickets=120, max_iter=None, seed=0, shape=(48,)):
    """One slot, D ≡ 0 and ℓ(x, t_k) = a_k, with every call logged as (kind, k, x)."""
    sig = karras_sigmas(N)
    a = -0.25 * torch.arange(N + 1, dtype=F64)
    log_M = (a + 0.5, torch.full((N + 1,), 0.1, dtype=F64))  # marginal p = e^-0.5, transition p = e^-0.35
    log, stub = [], level_ratio(sig, a)

    def net(x, sigma, **c):
        log.append(("net", None, None))
        return zero_denoiser(x, sigma)

    def disc(x, sigma, **c):
        log.append(("ell", int((sig == sigma[0]).nonzero()), x[0].clone()))
        return stub(x, sigma)

    res = diffrs(net, sig, log_ratio=disc, num_samples=tickets, shape=shape, generator=gen(seed), batch_size=1,
                 log_M=log_M, max_iter=max_iter)
    return sig, log, res


def classify(log, N):
    """Each test: (kind, k, accepted, x, next x); kinds 'init', 'trans' (after a proposal) or 'marg'."""
    events, prev = [], "net"
    for i, (kind, k, x) in enumerate(log):
        if kind == "net":
            prev = "net"
            continue
        nxt = log[i + 1] if i + 1 < len(log) else ("end", None, None)
        test = "init" if k == 0 else ("trans" if prev == "net" else "marg")
        if k == 0:
            ok = nxt[0] == "net"
        else:
            ok = nxt[0] in ("net", "end") or (k == N and nxt[1] == 0)
        events.append((test, k, ok, x, nxt[2]))
        prev = "ell"
    return events


def test_acceptance_probabilities_and_back_steps_from_a_call_trace():
    N = 6
    sig, log, res = trace_run(N)
    events = classify(log, N)
    p = {"trans": math.exp(-0.35), "marg": math.exp(-0.5), "init": math.exp(-0.5)}
    for test in ("init", "trans", "marg"):
        for k in range(N + 1):
            oks = [ok for t, kk, ok, _, _ in events if t == test and kk == k]
            if len(oks) < 30:
                continue
            rate = sum(oks) / len(oks)
            assert abs(rate - p[test]) < 5 * math.sqrt(p[test] * (1 - p[test]) / len(oks)), (test, k, rate)
    # The marginal tests happen only after a rejection; the diagnostics count exactly these events.
    d = res.diagnostics
    for test, name in (("trans", "transition_tested"), ("marg", "marginal_tested")):
        counted = torch.zeros(N + 1, dtype=torch.long)
        for t, k, _, _, _ in events:
            counted[k] += int(t == test or (name == "marginal_tested" and t == "init"))
        assert torch.equal(counted, d[name]), test
    assert d["marginal_tested"][1:N].sum() > 100
    # A rejected sample at k is re-noised to level k−1: x' − x ~ N(0, (t_{k−1}² − t_k²) I).
    z = torch.cat([(nx - x) / math.sqrt(sig[k - 1] ** 2 - sig[k] ** 2)
                   for t, k, ok, x, nx in events if k > 0 and t in ("trans", "marg") and not ok])
    assert z.numel() > 5000
    assert abs(float(z.mean())) < 5 / math.sqrt(z.numel())
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / z.numel())
    assert res.nfe > 2 * N - 1


def test_max_iter_restarts_every_rejected_path():
    # With max_iter = 2N − 1 every rejected proposal makes the path unfinishable: one restart each.
    N = 6
    _, log, res = trace_run(N, tickets=60, max_iter=2 * N - 1, shape=(1,))
    events = classify(log, N)
    rejected = sum(1 for t, _, ok, _, _ in events if t == "trans" and not ok)
    d = res.diagnostics
    assert d["restarts"] == rejected > 0
    assert rejected == int((d["transition_tested"] - d["transition_accepted"]).sum())
    # Honest NFE: every network call, abandoned paths included.
    assert res.nfe == sum(1 for kind, _, _ in log if kind == "net") / 60 > 2 * N - 1


def test_estimate_log_M_matches_quantiles_of_the_recorded_ratios():
    sig, N, W = karras_sigmas(5), 5, 50
    calls = []

    def stub(x, sigma, **c):
        out = (x[:, 0] + 0.1 * x[:, 1]) / (1 + sigma) - 1.0
        calls.append(out)
        return out

    _, model, _ = pair_2d()
    for no_zero in (False, True):
        calls.clear()
        marg, trans = estimate_log_M(model.denoise, sig, stub, num_warmup=W, shape=(2,), generator=gen(9),
                                     rej_percentile=0.6, no_zero=no_zero, batch_size=20)
        # chunks of 20, 20, 10 trajectories, N + 1 calls each
        chunks = [torch.stack(calls[i * (N + 1):(i + 1) * (N + 1)], 1) for i in range(3)]
        L0 = torch.cat(chunks)
        assert L0.shape == (W, N + 1)
        L1 = torch.cat([torch.zeros(W, 1, dtype=F64), L0[:, 1:] - L0[:, :-1]], 1)
        qm, qt = torch.quantile(L0, 0.6, dim=0), torch.quantile(L1, 0.6, dim=0)
        if not no_zero:
            qm, qt = qm.clamp_min(0), qt.clamp_min(0)
        torch.testing.assert_close(marg, qm, rtol=0, atol=0)
        torch.testing.assert_close(trans, qt, rtol=0, atol=0)
        assert trans[0] == 0
        assert bool((marg < 0).any()) == no_zero  # the floor matters for this stub


def test_log_M_from_ratios_by_hand():
    ratios = torch.tensor([[0.0, -1.0, 1.0], [0.0, -2.0, 3.0], [0.0, -3.0, 0.0]], dtype=F64)
    marg, trans = log_M_from_ratios(ratios, 0.5)
    assert marg.tolist() == [0.0, 0.0, 1.0] and trans.tolist() == [0.0, 0.0, 3.0]
    marg, trans = log_M_from_ratios(ratios, 0.75, no_zero=True)
    assert marg.tolist() == [0.0, -1.5, 2.0] and trans.tolist() == [0.0, -1.5, 4.0]


def test_cached_log_M_reproduces_the_run_without_warm_up():
    data, model, log_ratio = pair_1d()
    kw = dict(log_ratio=log_ratio, num_samples=50, shape=(1,), batch_size=16, rej_percentile=0.9)
    first = diffrs(model.denoise, karras_sigmas(10), generator=gen(2), **kw)
    again = diffrs(model.denoise, karras_sigmas(10), generator=gen(2), log_M=first.diagnostics["log_M"], **kw)
    assert torch.equal(first.x, again.x) and first.nfe == again.nfe
    assert first.diagnostics["nfe_warmup"] == 160 * 19 and again.diagnostics["nfe_warmup"] == 0


def test_cond_rows_follow_the_output_rows_under_continuous_batching():
    # D ≡ y: the last Euler step lands on y, so row i must end at y_i whatever slot it ran in.
    N, n = 8, 10
    sig = karras_sigmas(N)
    y = torch.arange(n, dtype=F64)

    def net(x, sigma, y):
        return y[:, None].expand_as(x).clone()

    def disc(x, sigma, y):
        return -1.0 * (sigma == 0).to(F64) + 0.1 * y / n

    res = diffrs(net, sig, log_ratio=disc, num_samples=n, shape=(1,), generator=gen(0), batch_size=3,
                 cond={"y": y}, num_warmup=12)
    torch.testing.assert_close(res.x[:, 0], y, rtol=0, atol=1e-9)
    assert res.diagnostics["accept_rate_transition"][N] < 1  # some paths were rejected and retried


# ----------------------------------------------------------------------------- bad input, termination
def test_bad_input():
    _, model, log_ratio = pair_1d()
    sig = karras_sigmas(4)
    kw = dict(num_samples=4, shape=(1,), generator=gen(0))
    with pytest.raises(ValueError, match="discriminator"):
        diffrs(model.denoise, sig, log_ratio=None, **kw)
    with pytest.raises(ValueError, match="num_samples"):
        diffrs(model.denoise, sig, log_ratio=log_ratio, num_samples=0, shape=(1,), generator=gen(0))
    for bad in (-0.1, 1.5, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="rej_percentile"):
            diffrs(model.denoise, sig, log_ratio=log_ratio, rej_percentile=bad, **kw)
    with pytest.raises(ValueError, match="max_iter"):
        diffrs(model.denoise, sig, log_ratio=log_ratio, max_iter=6, **kw)
    with pytest.raises(ValueError, match="log_M"):
        diffrs(model.denoise, sig, log_ratio=log_ratio, log_M=(torch.zeros(4), torch.zeros(5)), **kw)
    with pytest.raises(ValueError, match="batch_size"):
        diffrs(model.denoise, sig, log_ratio=log_ratio, batch_size=0, **kw)
    with pytest.raises(NotImplementedError, match="one torch.Generator"):
        diffrs(model.denoise, sig, log_ratio=log_ratio, num_samples=2, shape=(1,), generator=[gen(0), gen(1)])
    with pytest.raises(ValueError, match="one value per sample"):
        diffrs(model.denoise, sig, log_ratio=lambda x, s: torch.zeros(x.shape[0], 1), **kw)


def test_termination_guard():
    _, model, _ = pair_1d()
    sig = karras_sigmas(4)
    kw = dict(log_ratio=zero_ratio, num_samples=4, shape=(1,), generator=gen(0), max_rounds=5)
    never = (torch.tensor([50.0, 0, 0, 0, 0]), torch.zeros(5))  # initial test cannot pass
    with pytest.raises(RuntimeError, match="initial-state"):
        diffrs(model.denoise, sig, log_M=never, **kw)
    with pytest.raises(RuntimeError, match="max_rounds=3"):
        diffrs(model.denoise, sig, log_M=(torch.zeros(5), torch.zeros(5)), **{**kw, "max_rounds": 3})


def gauss_denoiser(x, sigma):
    # exact denoiser of N(0, 1) data (moved with the test from tests/kernels/test_edm.py)
    return x / (1.0 + sigma.reshape(-1, *([1] * (x.dim() - 1))) ** 2)


def test_heun_mixed_final_step_counts_nfe_per_sample():
    # Per-sample sigma: samples whose next level is 0 take the Euler step (1 NFE), others Heun (2).
    calls = []

    def counting(x, sigma):
        calls.append(x.shape[0])
        return gauss_denoiser(x, sigma)

    x = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    t_cur = torch.tensor([1.0, 0.5, 0.2], dtype=torch.float64)
    t_next = torch.tensor([0.5, 0.0, 0.1], dtype=torch.float64)
    out = heun_step_per_slot(counting, x, t_cur, t_next)
    assert out.nfe.tolist() == [2, 1, 2] and calls == [3, 2]
    for j in range(3):
        ref = heun_step_per_slot(gauss_denoiser, x[j:j + 1], t_cur[j:j + 1], t_next[j:j + 1])
        torch.testing.assert_close(out.x[j:j + 1], ref.x, rtol=0, atol=1e-15)
