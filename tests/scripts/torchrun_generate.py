"""Run under torchrun by tests/test_generate.py: each rank generates its share of the seeds."""

import sys

import torch
import torch.distributed as dist

from smcdiff.generate import dist_info, generate
from tests.test_generate import Toy


def main(outdir: str, seeds: str) -> None:
    rank, world = dist_info()
    dist.init_process_group("gloo")
    from smcdiff.generate import parse_seeds

    paths = generate(Toy(), parse_seeds(seeds), outdir, steps=3, batch=2)
    with open(f"{outdir}/manifest-rank{rank}.txt", "w") as f:
        f.write("\n".join(p.stem for p in paths) + "\n")
    dist.barrier()
    dist.destroy_process_group()
    assert world == 2


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
