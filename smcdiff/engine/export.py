"""ArviZ export of SMC results (layout in :mod:`smcdiff.diagnostics`); every result type's ``to_arviz``."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import arviz

from smcdiff.engine.records import read_run, smcdiff_version


def to_arviz(result) -> arviz.InferenceData:
    """Export a run to an ArviZ 0.23 ``InferenceData`` (layout in the module docstring).

    ``result`` : an :class:`~smcdiff.engine.SMCResult` or :class:`~smcdiff.sampling.SampleResult`
    with ``x : (G, K, ...)`` (or a dict of such), ``log_weights : (G, K)``, ``log_evidence : (G,)``,
    ``ess``, ``resampled``, ``log_evidence_increments : (T, G)`` and ``ancestors : (T, G, K)``;
    optional ``sigmas : (T + 1,)``, ``potential : (G, K)``, ``named_potentials`` (name → (G, K)),
    ``accept_rate : (T, G)``, ``nfe``, ``nfe_total``. G groups become chains, K particles draws.
    The arrays are copies: the InferenceData does not share memory with the result's tensors.
    Raises ``TypeError`` when a required field is missing, ``ValueError`` when a shape disagrees.
    """
    run = read_run(result)
    import arviz as az
    import xarray as xr

    version = smcdiff_version()
    group_attrs = {
        "created_at": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "arviz_version": az.__version__,
        "inference_library": "smcdiff",
        "inference_library_version": version,
        "created_by": f"smcdiff {version}",
    }
    chain = np.arange(run.G)
    draw = np.arange(run.K)
    step = np.arange(run.T)

    def particles(name: str, arr: np.ndarray) -> xr.DataArray:
        dims = ("chain", "draw") + tuple(f"{name}_dim_{i}" for i in range(arr.ndim - 2))
        return xr.DataArray(arr, dims=dims)

    event_coords = {f"{name}_dim_{i}": np.arange(n) for name, arr in run.x.items() for i, n in enumerate(arr.shape[2:])}
    posterior = xr.Dataset({name: particles(name, arr) for name, arr in run.x.items()},
                           coords={"chain": chain, "draw": draw, **event_coords}, attrs=group_attrs)
    sample_stats = xr.Dataset(
        {
            "log_weight": xr.DataArray(run.log_weights, dims=("chain", "draw"),
                                       attrs={"long_name": "unnormalised final log-weight"}),
            "log_marginal_likelihood": xr.DataArray(run.log_evidence, dims=("chain",),
                                                    attrs={"long_name": "log-evidence estimate of the run"}),
        },
        coords={"chain": chain, "draw": draw}, attrs=group_attrs,
    )
    diag = {
        "ess": xr.DataArray(run.ess, dims=("step", "chain"),
                            attrs={"long_name": "effective sample size after the step, before resampling",
                                   "units": "particles"}),
        "log_evidence_increment": xr.DataArray(run.increments, dims=("step", "chain"),
                                               attrs={"long_name": "increment of the log-evidence estimate"}),
        "resampled": xr.DataArray(run.resampled.astype(np.int8), dims=("step", "chain"),
                                  attrs={"long_name": "resampled after the step",
                                         "flag_values": np.array([0, 1], dtype=np.int8),
                                         "flag_meanings": "kept resampled"}),
        "ancestors": xr.DataArray(run.ancestors, dims=("step", "chain", "draw"),
                                  attrs={"long_name": "parent index of each particle after the step's resampling"}),
    }
    if run.sigma is not None:
        diag["sigma"] = xr.DataArray(run.sigma, dims=("step",), attrs={"long_name": "noise level reached by the step"})
    if run.accept_rate is not None:
        diag["accept_rate"] = xr.DataArray(run.accept_rate, dims=("step", "chain"),
                                           attrs={"long_name": "acceptance rate of rejection control"})
    smc_diagnostics = xr.Dataset(diag, coords={"step": step, "chain": chain, "draw": draw}, attrs=group_attrs)

    groups = {"posterior": posterior, "sample_stats": sample_stats}
    if run.potentials:
        groups["log_likelihood"] = xr.Dataset(
            {name: xr.DataArray(arr, dims=("chain", "draw")) for name, arr in run.potentials.items()},
            coords={"chain": chain, "draw": draw}, attrs=group_attrs,
        )
    groups["smc_diagnostics"] = smc_diagnostics

    attrs: dict[str, Any] = {"created_by": f"smcdiff {version}", "num_groups": run.G,
                             "num_particles": run.K, "num_steps": run.T}
    if run.nfe is not None:
        attrs["nfe"] = run.nfe
    if run.nfe_total is not None:
        attrs["nfe_total"] = run.nfe_total
    return az.InferenceData(attrs=attrs, **groups)


