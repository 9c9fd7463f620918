"""The applications built on the library (the top layer; nothing in the library imports them):

* :mod:`smcdiff.apps.cli` — the ``smcdiff`` command;
* :mod:`smcdiff.apps.demo` — ``smcdiff demo``, SMC on a 2-D problem with an exact answer;
* :mod:`smcdiff.apps.compare` — ``smcdiff compare``, every method on the exact mixture pair;
* :mod:`smcdiff.apps.table` — ``smcdiff table``, the digits table;
* :mod:`smcdiff.apps.train` — ``smcdiff train``, the small networks;
* :mod:`smcdiff.apps.generate` — ``smcdiff generate``, images with EDM's conventions (and
  :mod:`smcdiff.apps.pipeline`, ``--pipeline``: a local diffusers folder with prompts);
* :mod:`smcdiff.apps.steer` — ``smcdiff steer``, the steering benchmarks;
* :mod:`smcdiff.apps.density_cli` — ``smcdiff likelihood`` and ``smcdiff classify``.
"""
