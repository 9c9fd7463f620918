"""Diagnostics of an SMC run: ArviZ export, a three-panel plot, a text summary.

Every function takes the result of :func:`smcdiff.sample` (a :class:`~smcdiff.sampling.SampleResult`)
or of :func:`smcdiff.engine.run` (an :class:`~smcdiff.engine.SMCResult`) and only reads it.

* :func:`to_arviz` — an ArviZ 0.23 ``InferenceData`` that round-trips through NetCDF
  (``idata.to_netcdf(path)``, ``arviz.from_netcdf(path)``); the layout is below.
* :func:`plot` — one PNG with (a) ESS/K against the noise level σ, one line per group, resampling
  events marked; (b) the final normalised weights, sorted, as K·w (1 = uniform); (c) the genealogy
  of one group: which particle each particle descends from, showing how lineages coalesce.
* :func:`summary` — a few lines of text: final ESS, resampling events, log-evidence over groups.

Layout of :func:`to_arviz` (G groups = ArviZ *chains*, K particles = *draws*, T steps)::

    posterior
        x                        (chain, draw, x_dim_0, ...)  final particles (a dict state gives
                                                              one variable per entry)
    sample_stats
        log_weight               (chain, draw)   unnormalised final log-weights (-inf = weight 0)
        log_marginal_likelihood  (chain,)        log-evidence estimate of each run (PyMC's name)
    log_likelihood                               absent when the run has no potential
        <name>                   (chain, draw)   final value of each named potential term
                                                 (``named_potentials``), else ``potential``
    smc_diagnostics
        ess                      (step, chain)   effective sample size after step t, before
                                                 resampling, in particles (divide by K for ESS/K)
        log_evidence_increment   (step, chain)   log Z_t - log Z_{t-1}; sums over the steps to
                                                 log_marginal_likelihood
        resampled                (step, chain)   int8: 1 if the group was resampled after step t
        ancestors                (step, chain, draw)  int64: ancestors[t, g, k] is the index (after
                                                 step t's move) of particle k's parent; identity
                                                 where not resampled
        sigma                    (step,)         noise level reached by step t (sigmas[1:]), when
                                                 the result has a schedule
        accept_rate              (step, chain)   acceptance rate of rejection control, when used

NetCDF has no boolean type, so ``resampled`` is stored as int8 (0/1) in memory and on disk alike,
with the CF attributes ``flag_values = [0, 1]`` and ``flag_meanings = "kept resampled"``;
``idata.smc_diagnostics.resampled.astype(bool)`` gives the flags.

Coordinates are ``chain = 0..G-1``, ``draw = 0..K-1``, ``step = 0..T-1``. Every group carries
ArviZ's attributes (``created_at``, ``arviz_version``, ``inference_library``) and ``created_by =
"smcdiff <version>"``; the root attributes add ``num_groups``, ``num_particles``, ``num_steps``
and, for a diffusion run, ``nfe`` (network evaluations per particle) and ``nfe_total``.

Example::

    >>> import torch, smcdiff
    >>> from smcdiff.models import GaussianMixture
    >>> from smcdiff.resampling import Resampler
    >>> from smcdiff.diagnostics import to_arviz, plot, summary
    >>> gmm = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-2.0, 0.0], [2.0, 0.0]]),
    ...                       torch.tensor([0.1, 0.1]))
    >>> res = smcdiff.sample(gmm.denoise, smcdiff.karras_sigmas(16), smcdiff.kernels.EDMHeun(S_churn=10),
    ...                      potential=lambda x, sigma, x0_hat: -0.5 * (x0_hat[:, 0] - 1.0) ** 2,
    ...                      resampler=Resampler("systematic", 0.5),
    ...                      num_groups=4, num_particles=64, shape=(2,),
    ...                      generator=torch.Generator().manual_seed(0))
    >>> idata = to_arviz(res)
    >>> idata.posterior["x"].dims
    ('chain', 'draw', 'x_dim_0')
    >>> idata.smc_diagnostics["ess"].shape          # (step, chain)
    (16, 4)
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = idata.to_netcdf(os.path.join(folder, "run.nc"))   # read back with arviz.from_netcdf
    >>> plot(res, os.path.join(folder, "run.png"), title="two-mode mixture, tilted towards x = 1")
    >>> print(summary(res))                         # doctest: +ELLIPSIS
    smcdiff run: 4 groups x 64 particles, 16 steps...

``to_arviz`` imports ArviZ only when called (ArviZ 0.23 prints a ``FutureWarning`` about its
coming refactor on the first import of the day); ``plot`` draws on a standalone Agg figure and
never touches pyplot's global state or backend.
"""

from smcdiff.diagnostics.plots import plot
from smcdiff.diagnostics.text_summary import summary
from smcdiff.engine.export import to_arviz

__all__ = ["to_arviz", "plot", "summary"]
