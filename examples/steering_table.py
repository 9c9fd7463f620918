"""Both steering benchmarks of docs/steering.md from a fresh clone, one command each:

    python examples/steering_table.py            # benchmark A (exact mixtures) and B (digits), full
    python examples/steering_table.py --quick    # the quick versions the test suite runs (< 2 min)

The tables, figures and raw rows go to docs/steering/ (or --out DIR). Same as
``python -m smcdiff.apps.steer exact --out DIR`` and ``... digits --out DIR``.
"""

import argparse

from smcdiff.apps.steer import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="docs/steering")
    args = parser.parse_args()
    extra = ["--quick"] if args.quick else []
    for benchmark in ("exact", "digits"):
        main([benchmark, "--out", args.out, *extra])
