"""Sample-quality metrics: FID (Fréchet Inception Distance) and sample-based distances.

:mod:`smcdiff.metrics.samples` holds sliced Wasserstein, MMD, KL (exact or k-NN) and k-NN
precision/recall.

See :mod:`smcdiff.metrics.fid` for the protocol and the ``.npz`` statistics format, and
:mod:`smcdiff.models.inception` for the feature extractor (local weights only)::

    from smcdiff.metrics import InceptionFeatures, fid

    score = fid("out/", "cifar10-32x32.npz", InceptionFeatures("pt_inception-2015-12-05-6726825d.pth"))
"""

from smcdiff.metrics.fid import (
    compute_statistics,
    feature_statistics,
    fid,
    frechet_distance,
    load_statistics,
    save_statistics,
)
from smcdiff.metrics.samples import (
    kl_from_samples_knn,
    kl_to_density,
    mmd,
    precision_recall,
    sliced_wasserstein,
)
from smcdiff.models.inception import InceptionFeatures

__all__ = [
    "fid", "frechet_distance", "feature_statistics", "compute_statistics", "save_statistics",
    "load_statistics", "InceptionFeatures", "sliced_wasserstein", "mmd", "kl_to_density",
    "kl_from_samples_knn", "precision_recall",
]
