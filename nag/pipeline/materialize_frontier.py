"""Materialize every device's serving frontier in the bundle: its members and their BN statistics.

    python -m nag.pipeline.materialize_frontier --bundle bundles/default

Serving then reads the members instead of building the frontier, and exports each member once with the
BN statistics stored here (calibrated on all of the bundle's calibration images: 2,000 training images
for the `default` profile), so that a request's answer depends on (bundle, device, budget, graph form)
alone. A device whose stored frontier is current is left alone; the manifest is sealed again at the end.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from nag.bundle.bundle import Bundle, load_bundle, write_manifest
from nag.bundle.members import BnStats, StoredFrontier, StoredMember, frontier_inputs, write_stored_frontier
from nag.errors import NagError
from nag.policy.frontier import built_frontier
from nag.policy.materialize import calibrated_bn_stats

log = logging.getLogger("materialize_frontier")
BN_BATCH = 250


def stale_devices(bundle: Bundle) -> list[str]:
    """Devices with no current stored frontier (none stored, or one built from other files)."""
    return [name for name, m in sorted(bundle.devices.items()) if m.stored is None]


def materialize(root: str | Path, devices: list[str] | None = None, force: bool = False) -> dict[str, int]:
    """Store the serving frontier of `devices` (default: every device without a current one; `force`: all
    of them) with BN statistics on all of the bundle's calibration images; returns the member count of each
    device written. Seals the manifest again when anything was written."""
    bundle = load_bundle(root)
    unknown = sorted(set(devices or ()) - set(bundle.devices))
    if unknown:
        raise NagError(f"unknown devices {unknown}; this bundle has {sorted(bundle.devices)}")
    todo = list(devices or (sorted(bundle.devices) if force else stale_devices(bundle)))
    images = len(bundle.trained.calibration_images)
    stats_of: dict[str, BnStats] = {}  # members shared by several devices are calibrated once
    written: dict[str, int] = {}
    for name in todo:
        models = bundle.devices[name]
        models.frontier = models.stored = None
        started = time.perf_counter()
        frontier = built_frontier(bundle, models)
        members = []
        for i, e in enumerate(frontier.entries, 1):
            if e.arch.arch_id not in stats_of:
                stats_of[e.arch.arch_id] = calibrated_bn_stats(bundle, e.arch, batch_size=BN_BATCH)
            members.append(StoredMember(e.arch, e.cost, e.expected_accuracy, e.measured, stats_of[e.arch.arch_id]))
            if i % 10 == 0 or i == len(frontier.entries):
                log.info("device %s: %d/%d members calibrated on %d images", name, i, len(frontier.entries), images)
        stored = StoredFrontier(tuple(members), images, frontier_inputs(name, bundle.manifest["files"]), {
            "measured": frontier.measured, "proposed": frontier.proposed, "ladder": list(frontier.ladder),
            "seconds": round(time.perf_counter() - started, 2)})
        write_stored_frontier(bundle.root, name, stored)
        written[name] = len(members)
    if written:
        m = bundle.manifest
        write_manifest(bundle.root, m["name"], bundle.space, m["default_device"], m["configs"], m["metrics"])
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default", help="the bundle to materialize")
    p.add_argument("--device", action="append", help="only this device (repeatable; default: every stale one)")
    p.add_argument("--force", action="store_true", help="rebuild current stored frontiers too")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        written = materialize(args.bundle, args.device, args.force)
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not written:
        print(f"{args.bundle}: every device's stored serving frontier is current")
    for name, count in written.items():
        print(f"device {name}: {count} serving frontier members stored with their BN statistics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
