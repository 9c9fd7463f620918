"""The digits table: every method on the shipped 8x8-digits model and discriminator at matched NFE.

    python examples/digits_table.py            # the full table -> docs/results.md (about 20 min on one CPU core)
    python examples/digits_table.py --quick --out /tmp/table

Same as ``smcdiff table`` (see ``smcdiff table --help``); the weights it uses ship in
``smcdiff/assets/digits`` and were made by ``smcdiff train digits-models --out smcdiff/assets/digits``.
"""

import sys

from smcdiff.apps.cli import main

if __name__ == "__main__":
    sys.exit(main(["table", *sys.argv[1:]]))
