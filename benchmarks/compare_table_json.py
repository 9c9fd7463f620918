"""Compare two ``results.json`` files of ``smcdiff table`` run by run (all numbers but the seconds).

    python benchmarks/compare_table_json.py BEFORE/results.json AFTER/results.json

Prints the number of runs, how many agree exactly, and the largest absolute difference per field;
exits 1 when a run is missing or a number differs.
"""

from __future__ import annotations

import json
import sys


def compare(before: str, after: str) -> int:
    a, b = (json.load(open(p)) for p in (before, after))
    key = lambda r: (r["method"], r["steps"], r["seed"])  # noqa: E731
    ra, rb = {key(r): r for r in a["runs"]}, {key(r): r for r in b["runs"]}
    if ra.keys() != rb.keys():
        print("runs differ:", sorted(ra.keys() ^ rb.keys()))
        return 1
    worst: dict[str, float] = {}
    exact = 0
    for k, r in ra.items():
        diffs = {f: abs(float(r[f]) - float(rb[k][f])) for f in r if f not in ("method", "family", "seconds")
                 and isinstance(r[f], (int, float))}
        exact += all(d == 0 for d in diffs.values())
        for f, d in diffs.items():
            worst[f] = max(worst.get(f, 0.0), d)
    print(f"{len(ra)} runs, {exact} identical in every number; largest differences: {worst}")
    return 0 if exact == len(ra) else 1


if __name__ == "__main__":
    sys.exit(compare(sys.argv[1], sys.argv[2]))
