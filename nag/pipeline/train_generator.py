"""Build a whole bundle (`make train-generator`): every missing stage, then the generator.

    python -m nag.pipeline.train_generator --profile default --bundle bundles/default

Stages, each skipped when its output is already in the bundle: supernet (trained with the same
profile), device profiles and latency predictors, triplets (resumable), then the accuracy predictor,
and per device the evaluator and the generator; then `manifest.json` with hashes and metrics; then
on-policy refinement when the profile asks for it (`nag.pipeline.refine`); then the serving frontier
of every device this machine can measure (`measure_frontier`); finally every device's serving frontier
materialized with its members' BN statistics (`materialize_frontier`), sealed again; and when the profile
asks for it (`specialise_epochs`), the cheap members fine-tuned from their slices (`nag.pipeline.specialise`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from nag.artifacts import atomic_write_bytes
from nag.bundle.bundle import (
    ACCURACY_FILE,
    EVALUATOR_FILE,
    EVALUATOR_REPORT_FILE,
    GENERATOR_FILE,
    GENERATOR_LOG_FILE,
    MANIFEST_FILE,
    SPACE_FILE,
    SUPERNET_FILE,
    SUPERNET_LOG_FILE,
    SUPERNET_SUMMARY_FILE,
    TRIPLETS_FILE,
    load_bundle,
    read_manifest,
    save_evaluator,
    save_generator,
    write_manifest,
)
from nag.bundle.specialised import read_specialised, specialised_inputs
from nag.config import PipelineConfig, pipeline
from nag.config import profile as supernet_profile
from nag.cost.device import DeviceProfile, packaged_profile
from nag.cost.profiling import profile_device
from nag.cost.store import (
    PREDICTOR_FILE,
    PROFILE_FILE,
    SERVING_MEASUREMENTS_FILE,
    device_dir,
    list_devices,
    load_device,
)
from nag.errors import NagError
from nag.pipeline.collect_triplets import collect
from nag.pipeline.materialize_frontier import materialize
from nag.pipeline.measure_frontier import measurable_here, measure_frontier
from nag.pipeline.refine import refine
from nag.pipeline.specialise import cheap_members, specialise
from nag.pipeline.train_supernet import train as train_supernet
from nag.pnag.accuracy import AccuracyPredictor
from nag.pnag.budgets import even_budgets
from nag.pnag.encoding import TokenEncoder
from nag.pnag.evaluator import train_evaluator
from nag.pnag.generator import Generator, token_cost, train_generator
from nag.pnag.triplets import read_triplets
from nag.supernet.io import load_supernet

log = logging.getLogger("train_generator")


def ensure_supernet(bundle: Path, profile: str, run: Path) -> None:
    if (bundle / SUPERNET_FILE).is_file():
        return
    log.info("stage 1/9: training the %s supernet in %s", profile, run)
    if train_supernet(supernet_profile(profile), run, resume=True) != 0:
        raise NagError(f"supernet training stopped before the end; continue with the same command ({run} holds "
                       "its checkpoint)")
    bundle.mkdir(parents=True, exist_ok=True)
    for name in (SUPERNET_FILE, SUPERNET_LOG_FILE, SUPERNET_SUMMARY_FILE):
        if (run / name).is_file():
            shutil.copy2(run / name, bundle / name)


def ensure_devices(bundle: Path, cfg: PipelineConfig, space: Any) -> None:
    for name in cfg.devices:
        folder = device_dir(bundle, name)
        profile = packaged_profile(name) if not (folder / PROFILE_FILE).is_file() else None
        kind = (profile or DeviceProfile.load(folder / PROFILE_FILE)).device_kind
        if (folder / PROFILE_FILE).is_file() and (not kind.measured or (folder / PREDICTOR_FILE).is_file()):
            continue
        log.info("stage 2/9: profiling device %s (%d architectures)", name, cfg.profile_archs)
        profile_device(bundle, space, profile or packaged_profile(name), num_archs=cfg.profile_archs, seed=cfg.seed)


def ensure_triplets(bundle: Path, cfg: PipelineConfig) -> bool:
    """Collect the triplets the bundle lacks; whether any were collected."""
    path = bundle / TRIPLETS_FILE
    if path.is_file() and len(read_triplets(path)) >= cfg.triplets:
        return False
    log.info("stage 3/9: collecting %d triplets", cfg.triplets)
    collect(bundle, cfg.triplets, cfg.triplet_val_images, cfg.triplet_calib_images)
    return True


def build(bundle: Path, cfg: PipelineConfig, retrain: bool = False, run_dir: Path | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Build every missing stage of `bundle` (the supernet trains in `run_dir`, default runs/<profile>)."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    ensure_supernet(bundle, cfg.profile, run_dir or Path("runs") / cfg.profile)
    timings["supernet"] = time.perf_counter() - started
    trained = load_supernet(bundle / SUPERNET_FILE)
    space = trained.supernet.space
    atomic_write_bytes(bundle / SPACE_FILE, (json.dumps(json.loads(space.to_json()), indent=1) + "\n").encode())
    ensure_devices(bundle, cfg, space)
    timings["devices"] = time.perf_counter() - started - sum(timings.values())
    collected = ensure_triplets(bundle, cfg)
    timings["triplets"] = time.perf_counter() - started - sum(timings.values())

    triplets = read_triplets(bundle / TRIPLETS_FILE)
    encoder = TokenEncoder(space)
    archs = [t.arch(space) for t in triplets]
    enc = encoder.encode_archs(archs)
    acc = torch.tensor([t.val_acc for t in triplets], dtype=torch.float64)
    if collected or retrain or not (bundle / ACCURACY_FILE).is_file():
        log.info("stage 4/9: accuracy predictor on %d triplets", len(triplets))
        accuracy = AccuracyPredictor.fit(enc, acc.numpy(), seed=cfg.seed)
        atomic_write_bytes(bundle / ACCURACY_FILE, json.dumps(accuracy.to_dict()).encode())
    else:  # refitted, it would differ in the last bits on another machine and break the manifest's hash
        accuracy = AccuracyPredictor.from_dict(json.loads((bundle / ACCURACY_FILE).read_text()))
    metrics: dict[str, Any] = {"triplets": len(triplets), "accuracy_predictor": accuracy.metrics, "devices": {}}
    # Devices profiled elsewhere and copied into devices/ get their evaluator and generator here too.
    for name in sorted(set(cfg.devices) | set(list_devices(bundle))):
        folder = device_dir(bundle, name)
        device = load_device(bundle, name, space)
        if not (folder / GENERATOR_FILE).is_file() or retrain:
            # Costed by the device's current predictor (the triplets' stored costs may predate a re-profile).
            cost = torch.tensor(device.predict(archs), dtype=torch.float64)
            budgets = even_budgets(float(cost.min()), float(cost.max()), cfg.num_budgets)
            log.info("stage 5/9: device %s: evaluator and generator over %d budgets %.3g-%.3g %s", name,
                     len(budgets), budgets[0], budgets[-1], device.unit)
            ecfg = cfg.evaluator_config()
            evaluator, ereport = train_evaluator(enc, cost, acc, budgets, ecfg, progress)
            save_evaluator(folder / EVALUATOR_FILE, evaluator, encoder.dim, ecfg.hidden, ecfg.budget_dim, ereport)
            atomic_write_bytes(folder / EVALUATOR_REPORT_FILE, json.dumps(ereport, indent=1).encode())
            gcfg = cfg.generator_config()
            torch.manual_seed(cfg.seed)
            generator = Generator.for_config(space, budgets, gcfg)
            history = train_generator(generator, evaluator, gcfg, token_cost(device.predict, space),
                                      folder / GENERATOR_LOG_FILE, progress)
            save_generator(folder / GENERATOR_FILE, generator, gcfg.__dict__)
            last = history[-1] if history else {}
            metrics["devices"][name] = {
                "budgets": budgets, "unit": device.unit,
                "evaluator_heldout_agreement": ereport["heldout"]["overall"],
                "evaluator_heldout_per_budget": ereport["heldout"]["per_budget"],
                "generator_final_mean_reward": last.get("mean_reward"),
                "generator_final_feasible": last.get("feasible"),
                "generator_final_entropy": last.get("entropy"),
            }
        else:
            log.info("device %s: evaluator and generator already built", name)
    timings["models"] = time.perf_counter() - started - sum(timings.values())
    manifest_path = bundle / MANIFEST_FILE
    if manifest_path.is_file() and not metrics["devices"] and timings["supernet"] + timings["devices"] + \
            timings["triplets"] < 1.0 and not retrain:
        return finish(bundle, cfg, rebuilt=set(), progress=progress)  # nothing else to build
    metrics["build_seconds"] = timings
    old, old_configs = {}, {}
    if manifest_path.is_file():
        previous = read_manifest(bundle, verify=False)
        old, old_configs = previous["metrics"], previous["configs"]
    merged = {**old, **metrics, "devices": {**old.get("devices", {}), **metrics["devices"]}}
    summary = bundle / SUPERNET_SUMMARY_FILE
    supernet_summary = json.loads(summary.read_text()) if summary.is_file() else {}
    # Configs of later stages (the specialise stage's) stay: `finish` decides whether they still hold.
    write_manifest(bundle, bundle.name, space, cfg.default_device,
                   {**old_configs, "pipeline": cfg.to_dict(), "supernet": trained.meta.get("config", {})},
                   {**merged, "supernet": supernet_summary})
    return finish(bundle, cfg, rebuilt=set(metrics["devices"]), progress=progress)


def finish(bundle: Path, cfg: PipelineConfig, rebuilt: set[str], progress: bool = True) -> dict[str, Any]:
    """The stages after the manifest: on-policy refinement (when the profile asks for it, and the
    generators were just rebuilt or never refined), the measured serving frontiers, the materialized
    frontiers, then (when the profile asks for it and what the bundle holds is not current) the specialised
    cheap members."""
    if cfg.refine_rounds > 0 and (rebuilt or "refinement" not in read_manifest(bundle)["metrics"]):
        log.info("stage 6/9: on-policy refinement, up to %d rounds", cfg.refine_rounds)
        report = refine(bundle, cfg, progress)
        rebuilt = rebuilt | {r["device"] for r in report["rounds"]}
        log.info("refinement: %d rounds, %d new children, %d re-scored, %.2f M images (cap %.2f M); stopped: %s",
                 max((r["round"] for r in report["rounds"]), default=0), report["evaluations"], report["confirmed"],
                 report["images"] / 1e6, report["images_cap"] / 1e6, report["stopped"])
    measure_frontiers(bundle, cfg, rebuilt)
    written = materialize(bundle)
    for name, members in written.items():
        log.info("stage 8/9: device %s: %d serving frontier members stored with their BN statistics", name, members)
    if cfg.specialise_epochs > 0 and (rebuilt or not specialised_current(bundle, cfg)):
        log.info("stage 9/9: specialising the cheap serving-frontier members, %d epochs each", cfg.specialise_epochs)
        made = specialise(bundle, epochs=cfg.specialise_epochs, share=cfg.specialise_share)
        log.info("%d of %d cheap members specialised in %.0f s", made.stats["kept"], made.stats["candidates"],
                 made.stats["seconds"])
    return read_manifest(bundle)


def specialised_current(bundle: Path, cfg: PipelineConfig) -> bool:
    """Whether `bundle` holds specialised children made by the stage `cfg` asks for (its epochs and share, all
    cheap members) from the supernet and the cheap serving-frontier members it holds now."""
    try:
        loaded = load_bundle(bundle)
        found = read_specialised(bundle, loaded.space)
    except NagError:
        return False
    stage = loaded.manifest["configs"].get("specialise", {})
    if found is None or found.inputs != specialised_inputs(loaded.manifest["files"]) or stage.get("members") or \
            stage.get("epochs") != cfg.specialise_epochs or stage.get("share") != cfg.specialise_share:
        return False
    cheap = {a.arch_id for a in cheap_members(loaded, cfg.specialise_share)}
    return found.stats.get("candidates") == len(cheap) and set(found.children) <= cheap


def measure_frontiers(bundle: Path, cfg: PipelineConfig, rebuilt: set[str]) -> dict[str, Any]:
    """Stage 7 (unless the profile skips it): measure the serving frontier of every device this machine
    can run (`measure_frontier`), afresh for a device whose generator was just rebuilt; the manifest is
    sealed again after each."""
    for name in read_manifest(bundle)["devices"] if cfg.measure_frontier else []:
        path = device_dir(bundle, name) / SERVING_MEASUREMENTS_FILE
        if not measurable_here(bundle, name) or (path.is_file() and name not in rebuilt):
            continue
        log.info("stage 7/9: measuring the serving frontier of device %s", name)
        r = measure_frontier(bundle, name, fresh=name in rebuilt)
        log.info("device %s: %d front members measured (%d children, %d rounds)", name, r.members, r.measured,
                 r.rounds)
    return read_manifest(bundle)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default=PipelineConfig().profile)
    p.add_argument("--bundle", help="bundle directory (default: bundles/<profile>)")
    p.add_argument("--retrain", action="store_true", help="retrain evaluators and generators even if present")
    p.add_argument("--run-dir", type=Path, help="where the supernet trains and checkpoints (default: runs/<profile>)")
    p.add_argument("--threads", type=int)
    p.add_argument("--refine-rounds", type=int, help="on-policy refinement rounds (default: the profile's; 0: off)")
    p.add_argument("--specialise-epochs", type=int,
                   help="epochs of the last stage, specialising the cheap frontier members (default: the profile's; "
                        "0: off)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = Path(args.bundle or f"bundles/{args.profile}")
    started = time.perf_counter()
    try:
        cfg = pipeline(args.profile)
        if args.refine_rounds is not None:
            cfg = replace(cfg, refine_rounds=args.refine_rounds)
        if args.specialise_epochs is not None:
            cfg = replace(cfg, specialise_epochs=args.specialise_epochs)
        manifest = build(bundle, cfg, args.retrain, args.run_dir)
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"bundle {bundle} ({manifest['bundle_id']}) ready in {time.perf_counter() - started:.0f} s; "
          f"devices {manifest['devices']}")
    for name, m in manifest["metrics"].get("devices", {}).items():
        print(f"  {name}: evaluator held-out agreement {m['evaluator_heldout_agreement']:.3f}; generator "
              f"feasible share at the last step {m.get('generator_final_feasible')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
