"""A short text summary of an SMC result."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    pass

from smcdiff.engine.records import read_run


def summary(result) -> str:
    """A short text table of a run: final ESS/K (mean/min/max over groups), resampling events per
    group, NFE per particle, the log-evidence mean ± sd over groups and, when present, the mean
    acceptance rate of rejection control."""
    run = read_run(result, with_x=False)
    final = run.ess[-1] / run.K
    events = run.resampled.sum(axis=0)
    head = f"smcdiff run: {run.G} groups x {run.K} particles, {run.T} steps"
    if run.nfe is not None:
        head += f", NFE/particle {run.nfe:g}"
    logz = run.log_evidence.astype(float)
    spread = f"   (sd over groups {logz.std(ddof=1):.4f})" if run.G > 1 else ""
    lines = [
        head,
        f"{'':22s}{'mean':>10s}{'min':>10s}{'max':>10s}",
        f"{'final ESS / K':22s}{final.mean():10.3f}{final.min():10.3f}{final.max():10.3f}",
        f"{'resampling events':22s}{events.mean():10.2f}{events.min():10d}{events.max():10d}",
        f"{'log-evidence':22s}{logz.mean():10.4f}{logz.min():10.4f}{logz.max():10.4f}{spread}",
    ]
    if run.accept_rate is not None:
        acc = run.accept_rate.mean(axis=0)
        lines.append(f"{'accept rate':22s}{acc.mean():10.3f}{acc.min():10.3f}{acc.max():10.3f}")
    return "\n".join(lines)

