"""Files shipped with smcdiff: the trained digits networks (``digits/``; see
:mod:`smcdiff.models.pretrained`)."""
