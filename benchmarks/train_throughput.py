"""Training throughput (images/s) of one sandwich step (4 children) vs one biggest-child step, and of the
same sandwich on a supernet with kernel matrices per map size (`--size-transform`).

    python -m benchmarks.train_throughput --steps 8
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import torch

from benchmarks.results_io import machine, markdown_table, write_results
from nag.recipe.sandwich import SandwichObjective, sandwich_children
from nag.space import biggest, load_space
from nag.supernet import Supernet


def measure(objective: SandwichObjective, optimizer: torch.optim.Optimizer, make_children, batch: int,
            steps: int) -> float:
    images = torch.rand(batch, 1, 28, 28)
    labels = torch.randint(0, 10, (batch,))

    def step(i: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        objective(images, labels, make_children(i)).backward()
        optimizer.step()

    for i in range(2):
        step(i)
    started = time.perf_counter()
    for i in range(steps):
        step(i)
    return batch * steps / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    space = load_space()
    net = Supernet(space).train()
    objective = SandwichObjective(net, 0.1, 4e-5)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    sized = Supernet(space, size_transforms=True).train()
    sized_objective = SandwichObjective(sized, 0.1, 4e-5)
    sized_optimizer = torch.optim.SGD(sized.parameters(), lr=0.01, momentum=0.9)
    big = biggest(space)

    def sandwich(i: int) -> list:
        return sandwich_children(space, random.Random(i), 2)

    results: dict[str, list[float]] = {}
    # Interleave the settings twice so a noisy neighbour affects them alike.
    for _ in range(2):
        results.setdefault("biggest", []).append(measure(objective, optimizer, lambda i: [big], args.batch, args.steps))
        results.setdefault("sandwich", []).append(measure(objective, optimizer, sandwich, args.batch, args.steps))
        results.setdefault("sandwich_size_transforms", []).append(
            measure(sized_objective, sized_optimizer, sandwich, args.batch, args.steps))
    best = {k: max(v) for k, v in results.items()}
    data = {"images_per_second": {k: round(v, 1) for k, v in best.items()},
            "runs": {k: [round(x, 1) for x in v] for k, v in results.items()},
            "sandwich_over_biggest": round(best["sandwich"] / best["biggest"], 3),
            "size_transforms_over_sandwich": round(best["sandwich_size_transforms"] / best["sandwich"], 3),
            "batch": args.batch, "steps": args.steps, "machine": machine()}
    md = f"# Supernet training throughput\n\nBest of two interleaved runs; batch {args.batch}.\n\n"
    md += markdown_table(["step", "images/s", "ratio to biggest-only"],
                         [["biggest child only", data["images_per_second"]["biggest"], 1.0],
                          ["sandwich (biggest, smallest, 2 random)", data["images_per_second"]["sandwich"],
                           data["sandwich_over_biggest"]],
                          ["the same sandwich, kernel matrices per map size",
                           data["images_per_second"]["sandwich_size_transforms"],
                           round(best["sandwich_size_transforms"] / best["biggest"], 3)]])
    write_results("train_throughput", data, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
