"""Training throughput (images/s) of one specialisation step, today's trainer against faster forms of it, on
the cheapest, a middle and the dearest of the bundle's cheap serving-frontier members.

    python -m benchmarks.specialise_throughput [--bundle bundles/default] [--steps 12]

Today's trainer runs the child through the supernet (`Supernet.forward(x, arch)`: weights sliced every step).
The others train a static copy of the child (`extract_child`): as is, in channels-last memory format, and
compiled with `torch.compile` (skipped, with the reason, where it cannot compile here). One thread, batch 128,
cross-entropy and SGD with momentum; the forms are interleaved twice so a noisy neighbour hits them alike, and
each child's rates are reported as ratios to today's, measured in the same run.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.results_io import machine, markdown_table, write_results
from nag.bundle.bundle import load_bundle
from nag.pipeline.specialise import cheap_members
from nag.space import Architecture, count_macs
from nag.supernet.static import extract_child

Step = Callable[[torch.Tensor], torch.Tensor]


def rate(forward: Step, params: list[torch.nn.Parameter], images: torch.Tensor, labels: torch.Tensor,
         steps: int) -> float:
    """Images per second of `steps` training steps of `forward` (after 3 warm-up steps)."""
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(forward(images), labels).backward()
        optimizer.step()

    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return len(images) * steps / (time.perf_counter() - started)


def forms(supernet: torch.nn.Module, arch: Architecture) -> dict[str, tuple[Step, list[torch.nn.Parameter]] | str]:
    """Each form's forward and parameters, or why it cannot run here."""
    dynamic = copy.deepcopy(supernet).train()
    with torch.no_grad():
        static = extract_child(supernet, arch).train()
    channels_last = copy.deepcopy(static).to(memory_format=torch.channels_last)
    out: dict[str, tuple[Step, list[torch.nn.Parameter]] | str] = {
        "today (supernet, sliced per step)": (lambda x: dynamic(x, arch, dropout=True), list(dynamic.parameters())),
        "static child": (static, list(static.parameters())),
        "static, channels-last": (lambda x: channels_last(x.contiguous(memory_format=torch.channels_last)),
                                  list(channels_last.parameters())),
    }
    compiled_child = copy.deepcopy(static)
    try:
        compiled = torch.compile(compiled_child)
        spec = supernet.space.input
        compiled(torch.rand(2, spec.channels, spec.size, spec.size))  # compiles now, or says why not
        out["static, torch.compile"] = (compiled, list(compiled_child.parameters()))
    except Exception as exc:  # inductor needs a C++ toolchain; any failure means "not here"
        out["static, torch.compile"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    bundle = load_bundle(args.bundle)
    members = cheap_members(bundle)
    picked = [members[0], members[len(members) // 2], members[-1]]
    space = bundle.space
    images = torch.rand(args.batch, space.input.channels, space.input.size, space.input.size)
    labels = torch.randint(0, 10, (args.batch,))
    rows, data = [], []
    for arch in picked:
        candidates = forms(bundle.trained.supernet, arch)
        rates: dict[str, list[float]] = {name: [] for name, f in candidates.items() if not isinstance(f, str)}
        for _ in range(2):
            for name in rates:
                forward, params = candidates[name]  # type: ignore[misc]
                rates[name].append(rate(forward, params, images, labels, args.steps))
        best = {name: max(r) for name, r in rates.items()}
        base = best["today (supernet, sliced per step)"]
        mmacs = count_macs(arch, space) / 1e6
        for name, f in candidates.items():
            ok = not isinstance(f, str)
            rows.append([f"`{arch.arch_id}`", f"{mmacs:.2f}", name, f"{best[name]:.0f}" if ok else "-",
                         f"{best[name] / base:.2f}" if ok else f"not here: {f}"])
            data.append({"arch_id": arch.arch_id, "mmacs": round(mmacs, 3), "form": name,
                         "images_per_s": round(best[name], 1) if ok else None,
                         "ratio_to_today": round(best[name] / base, 3) if ok else None,
                         "skipped": None if ok else f})
    md = (f"# Specialisation step throughput\n\nBundle `{bundle.bundle_id}`: the cheapest, a middle and the dearest "
          f"of its {len(members)} cheap serving-frontier members; batch {args.batch}, 1 thread, best of 2 rounds "
          f"of {args.steps} steps (forms interleaved).\n\n")
    md += markdown_table(["member", "MMACs", "form", "images/s", "ratio to today"], rows)
    write_results("specialise_throughput", {"bundle_id": bundle.bundle_id, "batch": args.batch, "steps": args.steps,
                                            "rows": data, "machine": machine()}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
