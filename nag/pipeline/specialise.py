"""Specialise the cheap end of every device's serving frontier: fine-tune each member from its slice.

    python -m nag.pipeline.specialise --bundle bundles/default [--epochs 2] [--share 0.4]

Members costing at most `share` of the way from a device's cheapest to its best member (the cheapest
40% by default) are fine-tuned by `nag.pipeline.train_supernet --arch A --specialise-from supernet.pt`:
from their slices, distilling from the supernet's biggest child with the labels, `parallel` runs at a time
(one thread each), resumable (finished runs in `--work` are kept; the teacher's predictions are computed
once). Each is then BN-calibrated on all of the bundle's calibration images and kept only where it beats
its slice on the validation split. The kept children go into `specialised.{json,npz}` and the manifest is
sealed again, the manifest's `configs.specialise` holding the stage's settings and command; the server
sends them in place of their slices, and says so. `make train-generator` runs this as its last stage when
the profile sets `specialise_epochs` (the default profile: 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from nag.artifacts import file_sha256
from nag.bundle.bundle import SUPERNET_FILE, SUPERNET_SUMMARY_FILE, Bundle, load_bundle, write_manifest
from nag.bundle.specialised import SpecialisedChild, SpecialisedSet, specialised_inputs, write_specialised
from nag.config import SupernetTrainConfig, pipeline
from nag.data import load_splits
from nag.data.datasets import ImageSet
from nag.errors import NagError
from nag.export import build_onnx
from nag.export.evaluate import onnx_predictions
from nag.pipeline.training_runs import TrainingRun, run_all
from nag.policy.frontier import serving_frontier
from nag.policy.materialize import load_bn_stats
from nag.space import count_macs
from nag.space.arch import Architecture
from nag.supernet.io import load_supernet
from nag.supernet.static import calibrate_bn, extract_child

log = logging.getLogger("specialise")
# The default profile's stage (`nag.config.pipelines`).
DEFAULT_EPOCHS = pipeline("default").specialise_epochs
DEFAULT_SHARE = pipeline("default").specialise_share
DEFAULT_LR = 0.05
DEFAULT_WARMUP_STEPS = 50
BN_BATCH = 250


def cheap_members(bundle: Bundle, share: float = DEFAULT_SHARE) -> list[Architecture]:
    """The serving-frontier members of every device within `share` of its range from the cheapest, by
    architecture (once each), cheapest first."""
    chosen: dict[str, tuple[float, Architecture]] = {}
    for _, models in sorted(bundle.devices.items()):
        entries = serving_frontier(bundle, models).entries
        lo, hi = entries[0].cost, entries[-1].cost
        for i, e in enumerate(entries):
            fraction = (e.cost - lo) / (hi - lo) if hi > lo else 0.0
            if fraction <= share:
                chosen.setdefault(e.arch.arch_id, (fraction + i * 1e-9, e.arch))
    return [arch for _, arch in sorted(chosen.values(), key=lambda item: item[0])]


def stored_bn(bundle: Bundle) -> dict[str, dict]:
    """Per architecture id, the BN statistics the first device's stored frontier holds for it."""
    found: dict[str, dict] = {}
    for models in bundle.devices.values():
        for e in serving_frontier(bundle, models).entries:
            if e.bn is not None:
                found.setdefault(e.arch.arch_id, e.bn)
    return found


def train_seconds(run: Path) -> float | None:
    """The training seconds the run's summary records (of its last part, for a run that was resumed)."""
    try:
        return float(json.loads((run / SUPERNET_SUMMARY_FILE).read_text())["train_seconds_this_run"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def val_accuracy(model: torch.nn.Module, val: ImageSet) -> float:
    predictions = onnx_predictions(build_onnx(model).SerializeToString(), val)
    return 100.0 * float((predictions == val.labels.numpy()).mean())


def specialise(root: str | Path, epochs: int = DEFAULT_EPOCHS, lr: float = DEFAULT_LR,
               warmup_steps: int = DEFAULT_WARMUP_STEPS, share: float = DEFAULT_SHARE, work: Path | None = None,
               parallel: int = 2, threads: int = 1, device: str = "cpu",
               members: Sequence[str] = ()) -> SpecialisedSet:
    """Fine-tune the cheap members of `root`'s serving frontiers (only the architecture ids in `members`,
    when given), keep those that beat their slices on the validation split, store them in the bundle and
    seal its manifest again."""
    started = time.perf_counter()
    bundle = load_bundle(root)
    cfg = SupernetTrainConfig.from_dict(bundle.trained.meta.get("config", {}))
    archs = cheap_members(bundle, share)
    if members:
        unknown = sorted(set(members) - {a.arch_id for a in archs})
        if unknown:
            raise NagError(f"{unknown} are not among the cheap serving-frontier members ({len(archs)} within "
                           f"{share:.0%} of each device's range)")
        archs = [a for a in archs if a.arch_id in members]
    supernet = (bundle.root / SUPERNET_FILE).resolve()
    # Runs are reused only from the same supernet and settings (their folder and names say which).
    work = (work or bundle.root.parent / f".{bundle.root.name}-specialise") / file_sha256(supernet)[:16]
    log.info("specialising %d cheap members (within %.0f%% of each device's range) for %d epochs in %s",
             len(archs), 100 * share, epochs, work)
    args = ("--profile", cfg.profile, "--epochs", str(epochs), "--lr", str(lr), "--warmup-steps", str(warmup_steps),
            "--specialise-from", str(supernet), "--teacher-targets", str(work.resolve() / "teacher_targets.pt"))
    data = ("--data-kind", cfg.data.kind, "--data-root", cfg.data.root)
    runs = {a.arch_id: TrainingRun(f"{a.arch_id}-e{epochs}-lr{lr:g}-w{warmup_steps}", (*args, "--arch", a.to_json()))
            for a in archs}
    # The cheapest run first, alone: it computes the teacher's predictions that the others read. Then the
    # dearest (by MACs) first, so the last runs going are short and the slots finish together (the committed
    # bundle's 27 run times replayed on two slots: 2,930 s in that order, 3,077 s cheapest first).
    order = archs[:1] + sorted(archs[1:], key=lambda a: -count_macs(a, bundle.space))
    status = run_all([runs[a.arch_id] for a in order], work, parallel, threads, device, None, data, first_alone=True)
    failed = [name for name, s in status.items() if s["status"] not in ("finished", "done before")]
    if failed:
        raise NagError(f"specialisation runs did not finish: {failed}; see their logs in {work} and run again")
    splits = load_splits(cfg.data, cfg.val_size, cfg.seed, bundle.space.input.size, bundle.space.input.channels)
    calibration = bundle.trained.calibration_float
    from_supernet = bundle.manifest["files"][SUPERNET_FILE]
    slice_stats = stored_bn(bundle)
    children: dict[str, SpecialisedChild] = {}
    for i, arch in enumerate(archs, 1):
        with torch.no_grad():
            sliced = extract_child(bundle.trained.supernet, arch)
        stored = slice_stats.get(arch.arch_id)
        if stored is not None:
            load_bn_stats(sliced, stored)
        else:
            calibrate_bn(sliced, calibration, BN_BATCH)
        tuned = load_supernet(work / runs[arch.arch_id].name / SUPERNET_FILE)
        with torch.no_grad():
            static = extract_child(tuned.supernet, arch)
        calibrate_bn(static, calibration, BN_BATCH)
        slice_acc, tuned_acc = val_accuracy(sliced, splits.val), val_accuracy(static, splits.val)
        kept = tuned_acc > slice_acc
        log.info("%d/%d %s: validation %.2f%% as a slice, %.2f%% specialised: %s", i, len(archs), arch.arch_id,
                 slice_acc, tuned_acc, "kept" if kept else "dropped (the slice is served)")
        if kept:
            state = {k: v.detach().cpu().numpy() for k, v in static.state_dict().items()}
            children[arch.arch_id] = SpecialisedChild(arch, state, {
                "from_supernet": from_supernet, "epochs": epochs, "lr": lr, "warmup_steps": warmup_steps,
                "label_weight": cfg.student_label_weight, "calibration_images": len(calibration),
                "slice_val_acc": round(slice_acc, 2), "specialised_val_acc": round(tuned_acc, 2),
                "train_seconds": train_seconds(work / runs[arch.arch_id].name)})
    reused = sum(s["status"] == "done before" for s in status.values())
    result = SpecialisedSet(children, specialised_inputs(bundle.manifest["files"]), {
        "candidates": len(archs), "kept": len(children), "share": share, "epochs": epochs, "lr": lr,
        "seconds": round(time.perf_counter() - started, 1), "runs_reused": reused,
        "mean_val_gain": round(float(np.mean([c.info["specialised_val_acc"] - c.info["slice_val_acc"]
                                              for c in children.values()])), 2) if children else 0.0})
    write_specialised(bundle.root, result)
    m = bundle.manifest
    stage = {"epochs": epochs, "share": share, "lr": lr, "warmup_steps": warmup_steps, "members": sorted(members),
             "command": "python -m nag.pipeline.specialise --bundle B " + " ".join(
                 [f"--epochs {epochs} --share {share!r} --lr {lr!r} --warmup-steps {warmup_steps}",
                  *(f"--member {a}" for a in sorted(members))])}
    write_manifest(bundle.root, m["name"], bundle.space, m["default_device"], {**m["configs"], "specialise": stage},
                   m["metrics"])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="fine-tuning epochs per member")
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help="peak learning rate of the fine-tuning")
    p.add_argument("--warmup-steps", type=int, default=DEFAULT_WARMUP_STEPS)
    p.add_argument("--share", type=float, default=DEFAULT_SHARE,
                   help="members within this share of each device's range from its cheapest are specialised")
    p.add_argument("--member", action="append", default=[],
                   help="only this member's architecture id (repeatable); the bundle then holds only these specialised")
    p.add_argument("--work", type=Path, help="folder of the runs (default: .<bundle>-specialise beside it); they "
                   "go in a subfolder named by the supernet's hash")
    p.add_argument("--parallel", type=int, default=2, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--device", default="cpu", help="where the runs train (cpu or cuda)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if not 0 < args.share <= 1 or args.epochs < 1:
            raise NagError("--share must lie in (0, 1] and --epochs be >= 1")
        result = specialise(args.bundle, args.epochs, args.lr, args.warmup_steps, args.share, args.work,
                            args.parallel, args.threads, args.device, args.member)
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    reused = f", {result.stats['runs_reused']} finished runs reused" if result.stats["runs_reused"] else ""
    print(f"{args.bundle}: {result.stats['kept']} of {result.stats['candidates']} cheap members specialised "
          f"(mean validation gain {result.stats['mean_val_gain']:+.2f} points) in {result.stats['seconds']:.0f} s"
          f"{reused}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
