"""The exact test problems of the methods (see :mod:`smcdiff.models.pairs`)."""

from smcdiff.models.pairs import exact_log_ratio as ratio  # noqa: F401
from smcdiff.models.pairs import mixture_pair_1d as pair_1d  # noqa: F401
from smcdiff.models.pairs import mixture_pair_2d as pair_2d  # noqa: F401
from smcdiff.models.pairs import zero_log_ratio as zero_ratio  # noqa: F401
