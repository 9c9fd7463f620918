"""The shared frame of the quality-against-NFE figures (``smcdiff compare``, ``smcdiff table``)."""

from __future__ import annotations

from collections.abc import Sequence

#: Marker cycle for one-point-per-method scatter plots.
MARKERS = "osD^vPX*hp<>"


def finish_nfe_figure(fig, axes: Sequence, ylabels: Sequence[str], title: str, path, dpi: int = 100) -> None:
    """Log NFE x-axes, y labels and grids on ``axes``, one legend (from the first axis) outside on
    the right, the title; save to ``path`` and close ``fig``."""
    import matplotlib.pyplot as plt

    for ax, label in zip(axes, ylabels):
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per output (NFE)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
