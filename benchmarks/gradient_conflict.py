"""Do the sandwich's children pull the shared weights apart? Each child's gradient against the others'.

NASViT (Gong et al., ICLR 2022) traces the gap between weight-shared children and the same networks trained
alone to conflicting gradients, the biggest child's against the smaller children's, and projects the
conflicting part out of the biggest's gradient. This measures how much there is to project here. For a few
sandwich steps of a training profile (the batches and children the trainer draws at those steps), at a
supernet's or a training checkpoint's weights, it takes each child's loss gradient on its own
(`SandwichObjective.child_losses`, the terms whose sum the trainer minimises) and reports:

- each child's cosine with the sum of the other children's gradients;
- the cosine of the biggest's gradient with the students' sum, the parameter tensors where the two point
  apart (a negative dot product), and the share of the biggest's squared gradient norm a projection would
  remove, over the whole gradient (NASViT) and tensor by tensor.

    python -m benchmarks.gradient_conflict --supernet bundles/default/supernet.pt --steps 16
    python -m benchmarks.gradient_conflict --checkpoint runs/x/checkpoint.pt --name gradient_conflict_epoch1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from benchmarks.results_io import RESULTS, machine, markdown_table, write_results
from nag.artifacts import load_artifact
from nag.config import SupernetTrainConfig, profile
from nag.errors import NagError
from nag.pipeline.distributed import setup_distributed
from nag.pipeline.supernet_trainer import SupernetTrainer
from nag.supernet.io import load_supernet
from nag.supernet.layers import is_size_transform

# One gradient per parameter tensor; None where the child does not use the tensor.
Gradient = Sequence[torch.Tensor | None]


@dataclass(frozen=True)
class BiggestVsStudents:
    cosine: float  # of the biggest's whole gradient with the students' summed gradient
    conflicting_tensors: int  # tensors both reach whose dot product is negative
    shared_tensors: int  # tensors both reach
    conflicting_norm_share: float  # of the biggest's squared gradient norm, in the conflicting tensors
    projected_share_whole: float  # of the biggest's squared norm a whole-gradient projection removes
    projected_share_per_tensor: float  # ... and a tensor-by-tensor projection


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() * b.double()).sum())


def flatten(gradient: Gradient, like: Sequence[torch.Tensor]) -> torch.Tensor:
    """One float64 vector of a child's gradient, zeros where it does not reach."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).double().flatten()
                      for g, p in zip(gradient, like, strict=True)])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = float(a.norm() * b.norm())
    return _dot(a, b) / scale if scale > 0 else 0.0


def cosines_with_the_rest(flat: Sequence[torch.Tensor]) -> list[float]:
    """Each child's flattened gradient against the sum of all the others' (cosine)."""
    total = torch.stack(list(flat)).sum(dim=0)
    return [_cosine(g, total - g) for g in flat]


def biggest_vs_students(biggest: Gradient, big_flat: torch.Tensor, student_sum: torch.Tensor,
                        params: Sequence[torch.Tensor]) -> BiggestVsStudents:
    """Where the biggest's gradient (per tensor, and `flatten`ed) points against the students' summed
    flattened gradient, and how much of it a projection onto the normal plane of the students' gradient
    would remove."""
    big_norm2 = _dot(big_flat, big_flat)
    whole_dot = _dot(big_flat, student_sum)
    student_norm2 = _dot(student_sum, student_sum)
    whole_removed = whole_dot ** 2 / student_norm2 if whole_dot < 0 and student_norm2 > 0 else 0.0
    conflicting = shared = 0
    conflicting_norm2 = per_tensor_removed = 0.0
    offset = 0
    for g, p in zip(biggest, params, strict=True):
        size = p.numel()
        s = student_sum[offset:offset + size]
        offset += size
        if g is None or not bool(s.any()):
            continue
        shared += 1
        d = _dot(g, s.view_as(g))
        if d < 0:
            conflicting += 1
            conflicting_norm2 += _dot(g, g)
            per_tensor_removed += d ** 2 / _dot(s, s)
    scale = 1.0 / big_norm2 if big_norm2 > 0 else 0.0
    return BiggestVsStudents(cosine=_cosine(big_flat, student_sum), conflicting_tensors=conflicting,
                             shared_tensors=shared, conflicting_norm_share=conflicting_norm2 * scale,
                             projected_share_whole=whole_removed * scale,
                             projected_share_per_tensor=per_tensor_removed * scale)


def child_roles(cfg: SupernetTrainConfig) -> list[str]:
    """What each child of a sandwich step of `cfg` is, in the trainer's order."""
    roles = ["biggest", "smallest"]
    if cfg.resolution_corners:
        roles += ["biggest at the lowest resolution", "smallest at the highest resolution"]
    uniform = cfg.uniform_middle_children
    lowest = cfg.lowest_resolution_middle_children
    for i in range(cfg.num_middle_children):
        kind = ("uniform" if i < uniform else "uniform at the lowest resolution" if i < uniform + lowest
                else cfg.middle_sampler)
        roles.append(f"middle {i + 1} ({kind})")
    return roles


def _load(args: argparse.Namespace) -> tuple[SupernetTrainConfig, dict[str, torch.Tensor], int, str]:
    """The config, the weights and the first step to measure at, from a checkpoint or a supernet file."""
    if args.checkpoint:
        payload = load_artifact(args.checkpoint, "checkpoint")
        if payload.get("kind") != "checkpoint":
            raise NagError(f"{args.checkpoint} is not a training checkpoint (a supernet? use --supernet)")
        cfg = SupernetTrainConfig.from_dict(json.loads(payload["config"]))
        first = int(payload["step"]) if args.first_step is None else args.first_step
        return cfg, payload["model"], first, f"checkpoint {args.checkpoint} at step {int(payload['step'])}"
    trained = load_supernet(args.supernet)
    state = trained.supernet.state_dict()
    cfg = profile(args.profile).with_overrides(size_transform=any(is_size_transform(n) for n in state) or None)
    return cfg, state, args.first_step or 0, f"supernet {args.supernet} (profile {args.profile})"


def measure(trainer: SupernetTrainer, steps: int) -> list[dict[str, Any]]:
    """Per step: each child's loss, gradient norm and cosine with the others, and the biggest vs the students."""
    cfg, objective = trainer.cfg, trainer.objective
    params = list(trainer.supernet.parameters())
    roles = child_roles(cfg)
    trainer.supernet.train()
    rows = []
    for _ in tqdm(range(steps), desc="steps"):
        images, labels = trainer.batch(trainer.step)
        children = trainer.step_children(images, labels)
        trainer.seed_step_dropout()
        losses = objective.child_losses(images, labels, children)
        # The students' targets are the teacher's detached logits, so the children's graphs share only the
        # weights and each can be differentiated on its own.
        gradients = [torch.autograd.grad(loss, params, allow_unused=True) for loss in losses]
        flat = [flatten(g, params) for g in gradients]
        with_rest = cosines_with_the_rest(flat)
        versus = biggest_vs_students(gradients[0], flat[0], torch.stack(flat[1:]).sum(dim=0), params)
        rows.append({
            "step": trainer.step,
            "children": [{"role": role, "arch_id": arch.arch_id, "resolution": arch.resolution,
                          "loss": round(float(loss.detach()), 4),
                          "grad_norm": round(float(g.norm()), 4),
                          "cosine_with_the_rest": round(cos, 4)}
                         for role, arch, loss, g, cos in zip(roles, children, losses, flat, with_rest, strict=True)],
            "biggest_vs_students": {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(versus).items()},
        })
        trainer.step += 1
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    roles = [c["role"] for c in rows[0]["children"]]
    per_role = {role: {key: round(statistics.mean(r["children"][i][key] for r in rows), 4)
                       for key in ("loss", "grad_norm", "cosine_with_the_rest")}
                for i, role in enumerate(roles)}
    per_role_min = {role: round(min(r["children"][i]["cosine_with_the_rest"] for r in rows), 4)
                    for i, role in enumerate(roles)}
    versus = [r["biggest_vs_students"] for r in rows]
    return {
        "steps": len(rows), "per_role": per_role, "min_cosine_with_the_rest": per_role_min,
        "biggest_vs_students": {
            "cosine_mean": round(statistics.mean(v["cosine"] for v in versus), 4),
            "cosine_min": round(min(v["cosine"] for v in versus), 4),
            "conflicting_tensor_share": round(sum(v["conflicting_tensors"] for v in versus)
                                              / max(1, sum(v["shared_tensors"] for v in versus)), 4),
            "conflicting_norm_share_mean": round(statistics.mean(v["conflicting_norm_share"] for v in versus), 4),
            "projected_share_whole_mean": round(statistics.mean(v["projected_share_whole"] for v in versus), 4),
            "projected_share_per_tensor_mean": round(
                statistics.mean(v["projected_share_per_tensor"] for v in versus), 4),
        },
    }


def report(source: str, summary: dict[str, Any]) -> str:
    versus = summary["biggest_vs_students"]
    md = (f"# Gradient conflict between the sandwich's children\n\n{source}; {summary['steps']} sandwich steps, "
          "each child's loss gradient taken on its own (BN in training mode, as in training).\n\n")
    md += markdown_table(["child", "loss", "gradient norm", "cosine with the others' sum (mean)", "(min)"],
                         [[role, v["loss"], v["grad_norm"], v["cosine_with_the_rest"],
                           summary["min_cosine_with_the_rest"][role]] for role, v in summary["per_role"].items()])
    md += "\n## The biggest against the students\n\n"
    md += markdown_table(
        ["cosine (mean)", "(min)", "tensors in conflict", "biggest's squared norm in them",
         "removed by a whole-gradient projection", "removed tensor by tensor"],
        [[versus["cosine_mean"], versus["cosine_min"], f"{versus['conflicting_tensor_share']:.1%}",
          f"{versus['conflicting_norm_share_mean']:.1%}", f"{versus['projected_share_whole_mean']:.1%}",
          f"{versus['projected_share_per_tensor_mean']:.1%}"]])
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--supernet", help="a trained supernet file")
    weights.add_argument("--checkpoint", help="a training checkpoint (its own config and step)")
    p.add_argument("--profile", default="default", help="the training profile, with --supernet")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--first-step", type=int, default=None,
                   help="the step whose batch and children come first (default: the checkpoint's step, or 0)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="gradient_conflict")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    args = p.parse_args(argv)
    if args.steps < 1:
        print("error: --steps must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        cfg, state, first_step, source = _load(args)
        trainer = SupernetTrainer(cfg, Path(tempfile.gettempdir()), setup_distributed(torch.device("cpu")))
        try:
            trainer.supernet.load_state_dict(state)
        except RuntimeError:
            raise NagError(f"the weights of {source} do not fit the supernet of its config") from None
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    trainer.step = first_step
    rows = measure(trainer, args.steps)
    summary = summarise(rows)
    summary.update(source=source, first_step=first_step, seconds=round(time.perf_counter() - started, 1),
                   machine=machine())
    md = report(source, summary)
    write_results(args.name, {"summary": summary, "steps": rows}, md, args.out)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
