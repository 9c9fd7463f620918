"""Diffusion Rejection Sampling — DiffRS (Na et al., ICML 2024).

DiffRS corrects an imperfect diffusion model step by step with a time-dependent density ratio
ℓ_σ(x) ≈ log q_σ(x)/p_σ(x) (data over model; in the paper the logit of DG's discriminator).
Every sampler step t_{k−1} → t_k is a proposal; it is accepted with probability

    A_k = min(1, exp(ℓ_k(x_k) − ℓprev) / M^trans_k),

where ℓprev is the ratio at the slot's current accepted state. A rejected sample is re-noised one
level up, x ← x + sqrt(t_{k−1}² − t_k²)·ε, and tested against the *marginal* ratio,
min(1, exp(ℓ_{k−1}(x)) / M^marg_{k−1}); rejected again, it climbs one more level, and so on up to
t_0, where rejection means fresh noise. The constants log M^marg_k, log M^trans_k are the
γ-quantiles (γ = ``rej_percentile``) of ℓ_k and of ℓ_k − ℓ_{k−1} over a warm-up run of the plain
sampler, floored at 0 unless ``no_zero``. With ℓ ≡ 0 every proposal is accepted (a rejection needs
U > 1 − 1e−7) and DiffRS is the base EDM Heun sampler, bit for bit.

What to expect. A rejected sample is retried from a nearby point, and M caps the ratio at the γ
quantile, so the README setting (γ = 0.75, no cap) corrects only part of the model's error. With
``max_iter = 2N − 1`` every rejection restarts the path, and the path acceptances telescope to
r_N(x_N)/(M_0·ΠM^trans_k): when the M bound the ratios (γ = 1 approximates this) DiffRS is exact
rejection sampling of whole paths, and its output follows the base sampler's law tilted by
r_N = q/p, i.e. the data up to the sampler's discretisation error (the tests check both regimes).

Mapping to the reference ``generate_diffrs.py`` (REFERENCE §3a): phase 1 is :func:`estimate_log_M`
(``iter_warmup`` × ``batch`` trajectories; pass ``log_M`` to reuse cached constants, as the pickles
do); phase 2 is :func:`diffrs` with ``backsteps = 1``, ``min_backsteps = 0``,
``max_backsteps = N``. Its ``batch_size`` slots sit at different steps (continuous batching) and
share one network call per proposal with a per-slot σ vector. One deliberate difference: each
slot works on a *ticket*, the output row it will fill (row i starts from ``x_init[i]`` and uses
row i of ``cond``); a restarted or re-drawn trajectory keeps its ticket. The reference keeps the
first samples to finish, which favours quickly accepted trajectories when few samples are drawn
per slot; tickets give every output the same law. When tickets run out, finished slots retire.

Random streams (one ``torch.Generator``; a list of per-sample generators is refused, since slots
are refilled with new trajectories at run-time and no per-seed stream can be kept):

* ``generator`` itself: the initial latents ``(num_samples, *shape)`` when ``x_init`` is None,
  then one churn noise ``(n_active, *shape)`` per proposal (drawn even when γ = 0, as EDM does) —
  exactly the base sampler's draws when all slots move in lockstep;
* ``derive(generator, "diffrs.uniform")``: the uniforms U of every acceptance test;
* ``derive(generator, "diffrs.noise")``: the re-noising ε after a rejection, fresh latents for
  rejected initial states and ``max_iter`` restarts;
* ``derive(generator, "diffrs.warmup")``: everything in the warm-up.

Counting: the denoiser and ``log_ratio`` are wrapped in :class:`~smcdiff.methods.base.CallCounter`.
``nfe`` = all network evaluations of the sampling loop, abandoned trajectories included, divided
by ``num_samples``; ``disc_calls`` likewise for ℓ. The warm-up is reported apart, as totals, in
``diagnostics["nfe_warmup"]`` and ``diagnostics["disc_calls_warmup"]``.

    >>> import torch, smcdiff
    >>> from smcdiff.models import GaussianMixture
    >>> from smcdiff.methods import diffrs
    >>> f64 = torch.float64                       # the mixtures of smcdiff.models.pairs.mixture_pair_1d
    >>> data = GaussianMixture(torch.tensor([0.7, 0.3], dtype=f64), torch.tensor([[-1.0], [1.5]], dtype=f64),
    ...                        torch.tensor([0.09, 0.16], dtype=f64))
    >>> model = GaussianMixture(torch.tensor([0.4, 0.6], dtype=f64), torch.tensor([[-0.8], [1.3]], dtype=f64),
    ...                         torch.tensor([0.09, 0.16], dtype=f64))
    >>> res = diffrs(model.denoise, smcdiff.karras_sigmas(18),
    ...              log_ratio=lambda x, sigma, **c: data.log_ratio(model, x, sigma),
    ...              num_samples=500, shape=(1,), generator=torch.Generator().manual_seed(0),
    ...              rej_percentile=0.9)
    >>> res.x.shape, res.nfe > 35
    (torch.Size([500, 1]), True)
    >>> w0 = data.responsibilities(res.x)[:, 0].mean()   # model 0.4 -> data 0.7: ≈ 0.6 here
    >>> bool(0.5 < w0 < 0.75)
    True
    >>> lm = res.diagnostics["log_M"]             # reuse: diffrs(..., log_M=lm) skips the warm-up
"""

from __future__ import annotations

import math

import torch

from smcdiff import _rng
from smcdiff.kernels.counting import CallCounter
from smcdiff.kernels.edm import EDMHeun
from smcdiff.kernels.steps import churn
from smcdiff.methods.base import initial_latents, validate_common
from smcdiff.methods.rejection_parts import (
    accept,
    check_cond_rows,
    check_percentile,
    estimate_log_M,
    heun_step_per_slot,
    log_M_from_ratios,
    log_ratio_values,
    needs_restart,
    renoise,
    rows_of,
    single_generator,
)
from smcdiff.results import Result
from smcdiff.types import Denoiser, LogRatio, Tensor

__all__ = ["diffrs", "estimate_log_M", "log_M_from_ratios", "accept", "renoise", "needs_restart",
           "heun_step_per_slot"]

# --------------------------------------------------------------------------- phase 2: sampling
def diffrs(denoiser: Denoiser, sigmas, *, log_ratio: LogRatio | None = None, num_samples: int, shape, generator, x_init=None,
           rej_percentile: float = 0.75, max_iter: int | None = None, batch_size: int | None = None,
           num_warmup: int | None = None, log_M=None, no_zero: bool = False, S_churn: float = 0.0,
           S_min: float = 0.0, S_max: float = math.inf, S_noise: float = 1.0, cond=None,
           max_rounds: int | None = None) -> Result:
    """Diffusion Rejection Sampling with continuous batching (REFERENCE §3a).

    Args:
        denoiser: ``D(x, sigma, **cond) -> x0_hat``, ``x : (n, *shape)``, ``sigma : (n,)``.
        sigmas: schedule t_0 > … > t_N = 0 (e.g. ``karras_sigmas(18)``); ℓ_k is ℓ at σ = t_k.
        log_ratio: ``ℓ(x, sigma, **cond) -> (n,)``, log q_σ/p_σ; required (called at σ = 0 too).
        num_samples: outputs wanted; ``shape`` the event shape of one sample.
        generator: one ``torch.Generator`` (stream layout in the module docstring).
        x_init: ``(num_samples, *shape)`` unit-variance latents; row i starts ticket i at t_0·x_init[i].
        rej_percentile: γ, the warm-up quantile that sets M (reference README: 0.75).
        max_iter: per-trajectory NFE budget; a slot with nfe + 2N − 1 − 2k > max_iter restarts from
            fresh noise. None = no cap (reference default 999999; README 105 for N = 18).
        batch_size: number of slots (default ``num_samples``).
        num_warmup: warm-up trajectories (default 10·batch_size); ignored when ``log_M`` is given.
        log_M: precomputed ``(log_M_marginal, log_M_transition)``, each ``(N+1,)``; skips the warm-up.
        no_zero: do not floor log M at 0.
        S_churn, S_min, S_max, S_noise: EDM churn per slot, γ = min(S_churn/N, √2 − 1) where
            S_min ≤ t_k ≤ S_max.
        cond: mapping name → tensor with ``num_samples`` rows (row i for ticket i).
        max_rounds: hard cap on loop iterations (and on re-draw passes of the initial-state test);
            default 1000·N·ceil(num_samples / batch_size). Exceeding it raises RuntimeError.

    Returns:
        the :class:`~smcdiff.results.Result` (one particle per output, no weights; its per-step
        ``accept_rate : (N, num_samples)`` is the transition acceptance rate into each level, pooled
        over slots) with ``x : (num_samples, *shape)`` float64 (row i = ticket i; with all
        slots in lockstep, the order of the base sampler), ``nfe`` and ``disc_calls`` per output
        (sampling loop only), and ``diagnostics``: ``log_M`` (the pair, reusable),
        ``log_M_marginal``, ``log_M_transition``, ``accept_rate_transition`` ``(N+1,)`` (accepted /
        tested first-pass tests at level k; NaN where none), ``accept_rate_marginal`` ``(N+1,)`` (at
        k = 0 the initial-state tests), the counts ``transition_tested``, ``transition_accepted``,
        ``marginal_tested``, ``marginal_accepted``, ``restarts``,
        ``iterations``, ``nfe_warmup``, ``disc_calls_warmup`` (totals), ``nfe_total_per_output``.
    """
    if log_ratio is None:
        raise ValueError("DiffRS needs a discriminator: pass log_ratio(x, sigma, **cond) -> (N,) log q/p")
    sigmas, shape = validate_common(sigmas, num_samples, shape)
    check_percentile(rej_percentile)
    single_generator(generator)
    N = len(sigmas) - 1
    if max_iter is not None and (not isinstance(max_iter, int) or max_iter < 2 * N - 1):
        raise ValueError(f"max_iter must be None or an int >= 2N - 1 = {2 * N - 1} (one full trajectory), "
                         f"got {max_iter!r}")
    batch_size = num_samples if batch_size is None else batch_size
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if max_rounds is None:
        max_rounds = 1000 * N * -(-num_samples // batch_size)
    cond = check_cond_rows(cond, num_samples, "output sample")
    latents = initial_latents(x_init, (num_samples,), shape, generator)
    sig = sigmas.to(latents.device)
    net, disc = CallCounter(denoiser), CallCounter(log_ratio)

    # Phase 1: the acceptance constants M (warm-up) unless given.
    nfe_warmup = disc_warmup = 0
    if log_M is None:
        num_warmup = 10 * batch_size if num_warmup is None else num_warmup
        wnet, wdisc = CallCounter(denoiser), CallCounter(log_ratio)
        log_M = estimate_log_M(wnet, sig, wdisc, num_warmup=num_warmup, shape=shape,
                               generator=_rng.derive(generator, "diffrs.warmup"), rej_percentile=rej_percentile,
                               no_zero=no_zero, batch_size=batch_size, S_churn=S_churn, S_min=S_min,
                               S_max=S_max, S_noise=S_noise, cond=cond)
        nfe_warmup, disc_warmup = wnet.count, wdisc.count
    log_M_marg, log_M_trans = (torch.as_tensor(m, dtype=torch.float64).to(sig.device) for m in log_M)
    if log_M_marg.shape != (N + 1,) or log_M_trans.shape != (N + 1,):
        raise ValueError(f"log_M must be a pair of (N+1,) = ({N + 1},) tensors, got "
                         f"{tuple(log_M_marg.shape)} and {tuple(log_M_trans.shape)}")

    gen_u, gen_eps = _rng.derive(generator, "diffrs.uniform"), _rng.derive(generator, "diffrs.noise")
    kernel = EDMHeun(S_churn, S_min, S_max, S_noise)  # for its γ rule only
    gammas = torch.tensor([kernel.gamma(sig, i) for i in range(N)] + [0.0], dtype=torch.float64, device=sig.device)
    round_sigma = getattr(denoiser, "round_sigma", None)
    counts = {name: torch.zeros(N + 1, dtype=torch.long) for name in ("tt", "ta", "mt", "ma")}

    def fresh(n: int) -> Tensor:
        return _rng.randn((n,) + shape, gen_eps, device=sig.device) * sig[0]

    # Slot state: ticket (output row), x, level index k, ℓ at the accepted state, NFE of the trajectory.
    n0 = min(batch_size, num_samples)
    ticket = torch.arange(n0, device=sig.device)
    x = latents[:n0] * sig[0]
    k = torch.zeros(n0, dtype=torch.long, device=sig.device)
    ell_prev = torch.zeros(n0, dtype=torch.float64, device=sig.device)
    nfe = torch.zeros(n0, dtype=torch.long, device=sig.device)
    out = torch.empty((num_samples,) + shape, dtype=torch.float64, device=sig.device)
    next_ticket, done, rounds, restarts = n0, 0, 0, 0

    while done < num_samples:
        rounds += 1
        if rounds > max_rounds:
            raise RuntimeError(f"DiffRS did not finish within max_rounds={max_rounds} loop iterations "
                               f"({done}/{num_samples} samples); acceptance is too low (check log_M, rej_percentile)")
        # 1. Initial-state rejection: slots at t_0 until accepted (fresh noise when rejected).
        idx, passes = torch.nonzero(k == 0).flatten(), 0
        while idx.numel():
            passes += 1
            if passes > max_rounds:
                raise RuntimeError(f"initial-state test rejected for {max_rounds} passes; log M^marg_0 is too large")
            ell = log_ratio_values(disc, x[idx], sig[0].expand(len(idx)), rows_of(cond, ticket[idx]))
            ok = accept(ell, log_M_marg[0], _rng.rand((len(idx),), gen_u, device=sig.device))
            counts["mt"][0] += len(idx)
            counts["ma"][0] += int(ok.sum())
            ell_prev[idx[ok]] = ell[ok]
            idx = idx[~ok]
            x[idx] = fresh(len(idx))

        # 2. Proposal: one EDM Heun step t_k -> t_{k+1} per slot, one batched network call.
        noise = _rng.randn(x.shape, generator, device=sig.device)
        x_hat, t_hat = churn(x, sig[k], gammas[k], float(S_noise), noise, round_sigma)
        step = heun_step_per_slot(net, x_hat, t_hat, sig[k + 1], rows_of(cond, ticket))
        x, nfe, k = step.x, nfe + step.nfe, k + 1

        # 3. Transition test; rejected samples climb one level (re-noised) and take marginal tests.
        idx, first = torch.arange(len(k), device=sig.device), True
        while idx.numel():
            kk = k[idx]
            ell = log_ratio_values(disc, x[idx], sig[kk], rows_of(cond, ticket[idx]))
            u = _rng.rand((len(idx),), gen_u, device=sig.device)
            if first:
                ok = accept(ell, log_M_trans[kk], u, ell_prev[idx])
                counts["tt"].index_add_(0, kk.cpu(), torch.ones_like(kk.cpu()))
                counts["ta"].index_add_(0, kk.cpu(), ok.long().cpu())
            else:
                ok = accept(ell, log_M_marg[kk], u)
                counts["mt"].index_add_(0, kk.cpu(), torch.ones_like(kk.cpu()))
                counts["ma"].index_add_(0, kk.cpu(), ok.long().cpu())
            ell_prev[idx[ok]] = ell[ok]
            rej = idx[~ok]
            eps = _rng.randn((len(rej),) + shape, gen_eps, device=sig.device)
            x[rej] = renoise(x[rej], sig[k[rej]], sig[k[rej] - 1], eps)
            k[rej] -= 1
            idx, first = rej[k[rej] > 0], False  # slots back at t_0 wait for step 1

        # 4. NFE cap: slots that cannot finish within max_iter restart from fresh noise.
        r = torch.nonzero(needs_restart(nfe, k, N, max_iter)).flatten()
        if r.numel():
            restarts += r.numel()
            x[r], k[r], nfe[r] = fresh(len(r)), 0, 0

        # 5. Harvest finished slots; refill them with the next tickets, retire the rest.
        fin = torch.nonzero(k == N).flatten()
        if fin.numel():
            out[ticket[fin]] = x[fin]
            done += fin.numel()
            take = min(fin.numel(), num_samples - next_ticket)
            refill, retire = fin[:take], fin[take:]
            ticket[refill] = torch.arange(next_ticket, next_ticket + take, device=sig.device)
            next_ticket += take
            x[refill], k[refill], ell_prev[refill], nfe[refill] = latents[ticket[refill]] * sig[0], 0, 0.0, 0
            if retire.numel():
                keep = torch.ones(len(k), dtype=torch.bool, device=sig.device)
                keep[retire] = False
                ticket, x, k, ell_prev, nfe = ticket[keep], x[keep], k[keep], ell_prev[keep], nfe[keep]

    def rate(a: Tensor, t: Tensor) -> Tensor:
        return torch.where(t > 0, a / t.clamp_min(1), torch.full_like(a, math.nan, dtype=torch.float64))

    diagnostics = {
        "log_M": (log_M_marg, log_M_trans), "log_M_marginal": log_M_marg, "log_M_transition": log_M_trans,
        "accept_rate_transition": rate(counts["ta"].double(), counts["tt"]),
        "accept_rate_marginal": rate(counts["ma"].double(), counts["mt"]),
        "transition_tested": counts["tt"], "transition_accepted": counts["ta"],
        "marginal_tested": counts["mt"], "marginal_accepted": counts["ma"],
        "restarts": restarts, "iterations": rounds, "nfe_warmup": nfe_warmup, "disc_calls_warmup": disc_warmup,
        "nfe_total_per_output": (net.count + nfe_warmup) / num_samples,
    }
    return _as_result(out, sig, net.count, disc.count, diagnostics)


def _as_result(out: Tensor, sigmas: Tensor, calls: int, disc_calls: int, diagnostics: dict) -> Result:
    """DiffRS's outputs as the one result type: one particle per output, equal weights, one record per
    level with the pooled transition acceptance rate."""
    n, N = out.shape[0], len(sigmas) - 1
    zeros = torch.zeros(n, dtype=torch.float64, device=out.device)
    rate = diagnostics["accept_rate_transition"][1:].to(out.device)[:, None].expand(N, n)
    return Result(
        x=out, log_weights=zeros[:, None], log_evidence=zeros, ess=torch.ones(N, n, dtype=torch.float64),
        resampled=torch.zeros(N, n, dtype=torch.bool), ancestors=torch.zeros(N, n, 1, dtype=torch.long),
        log_evidence_increments=torch.zeros(N, n, dtype=torch.float64), accept_rate=rate, particles=out[:, None],
        selected=torch.zeros(n, dtype=torch.long, device=out.device),
        sigmas=sigmas, nfe=calls / n, nfe_total=calls, disc_calls=disc_calls / n, diagnostics=diagnostics)
