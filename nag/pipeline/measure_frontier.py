"""Measure the serving frontier of a local device, so that its picks keep their latency budget.

    python -m nag.pipeline.measure_frontier --bundle bundles/default --device cpu
    python -m nag.pipeline.measure_frontier --bundle B --device board --agent HOST:PORT --agent-token-file F

A pick is the child the accuracy estimate likes best among those the latency predictor says fit, so the
predictor's under-predictions gather exactly where picks are made, although it is accurate on random
children (docs/devices.md, "The serving frontier is measured"). This stage measures every member of the
device's serving frontier under its runtime contract (at the profile's speed, through reference children
of the profile) and stores them in the device folder; the device then costs those children by
measurement. A measured cost can push a child off the front and let another one on, so the front is
rebuilt and its new members measured until all of its members are measured. The manifest is sealed again
at the end. A device profiled through a measurement agent is measured through an agent on the same kind of
machine (`--agent`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nag.bundle.bundle import Bundle, load_bundle, write_manifest
from nag.bundle.members import has_stored_frontier
from nag.cost.device import DeviceError, contract_problems
from nag.cost.measure import LatencyMeasurement
from nag.cost.remote import AgentClient, add_agent_arguments, agent_from_args
from nag.cost.speed import measure_against_profile
from nag.cost.store import SERVING_MEASUREMENTS_FILE, device_dir, read_measurements, write_measurements
from nag.errors import NagError
from nag.pipeline.materialize_frontier import materialize
from nag.policy.frontier import serving_frontier
from nag.space.arch import smallest

log = logging.getLogger("measure_frontier")

MAX_ROUNDS = 200  # each round measures the members that a measured cost let on (the default bundle took 125)


@dataclass(frozen=True)
class FrontierMeasurement:
    device: str
    members: int  # entries of the final front, all measured
    measured: int  # children measured in all (including those that left the front)
    rounds: int
    speed: float  # the machine's speed against the profile in the last round (> 1: slower now)
    worst_ratio: float | None  # the largest measured / predicted cost among the final front's members
    # (None when a run stopped before every member was measured)


def _apply(bundle: Bundle, name: str, records: dict[str, LatencyMeasurement]) -> None:
    models = bundle.devices[name]
    models.device = replace(models.device, measured={k: m.corrected for k, m in records.items()})
    models.min_cost = float(models.device.predict([smallest(bundle.space)])[0])
    models.frontier = models.stored = None  # rebuilt from the measurements so far


def measure_frontier(root: str | Path, name: str, fresh: bool = False, max_rounds: int = MAX_ROUNDS,
                     seed: int = 0, agent: AgentClient | None = None) -> FrontierMeasurement:
    """Measure device `name`'s serving frontier until every member is measured; write the measurements
    and seal the manifest again. Earlier measurements are kept and reused unless `fresh`. With an `agent`,
    the children are timed there (under the device's contract, against the profile's reference children)."""
    bundle = load_bundle(root)
    if name not in bundle.devices:
        raise DeviceError(f"unknown device {name!r}; this bundle has {sorted(bundle.devices)}")
    models = bundle.devices[name]
    profile = models.device.profile
    if not profile.device_kind.measured:
        raise DeviceError(f"device {name!r} has analytic costs ({profile.unit}); there is nothing to measure")
    if agent is not None:
        agent.check_runnable(profile)
    elif profile.measured_remotely:
        raise DeviceError(f"device {name!r} was measured through a measurement agent on "
                          f"{profile.contract()['measured_on']}; measure its frontier there: --agent HOST:PORT")
    else:
        errors = contract_problems(profile)[0]
        if errors:
            raise DeviceError(f"cannot measure here: {errors[0]}")
    folder = device_dir(bundle.root, name)
    predicted = models.device.cost_model
    path = folder / SERVING_MEASUREMENTS_FILE
    records = {m.arch_id: m for m in read_measurements(path)} if path.is_file() and not fresh else {}
    speed, rounds = 1.0, 0
    for rounds in range(1, max_rounds + 1):
        _apply(bundle, name, records)
        front = serving_frontier(bundle, models)
        todo = [e.arch for e in front.entries if e.arch.arch_id not in records]
        log.info("round %d: %d front members, %d not measured yet", rounds, len(front.entries), len(todo))
        if not todo:
            break
        now = measure_against_profile(todo, bundle.space, profile, folder, seed=seed + rounds, timer=agent)
        speed = now.speed
        for m in now.measurements:
            # Stored at the profile's speed: `corrected` divides the chunk drift and the machine's speed out.
            records[m.arch_id] = replace(m, drift=m.drift * now.speed)
    else:
        _apply(bundle, name, records)
        front = serving_frontier(bundle, models)
        missing = sum(e.arch.arch_id not in records for e in front.entries)
        if missing:
            # Kept (and sealed) for the next run, which continues from them.
            write_measurements(path, sorted(records.values(), key=lambda m: m.arch_id))
            _seal(bundle, FrontierMeasurement(name, len(front.entries), len(records), rounds, speed, None))
            raise NagError(f"device {name!r}: the serving frontier still had {missing} unmeasured members after "
                           f"{max_rounds} rounds; run the command again to continue")
    write_measurements(path, sorted(records.values(), key=lambda m: m.arch_id))
    archs = [e.arch for e in front.entries]
    ratios = [e.cost / float(p) for e, p in zip(front.entries, predicted.predict(archs), strict=True)]
    result = FrontierMeasurement(name, len(front.entries), len(records), rounds, speed, max(ratios))
    _seal(bundle, result)
    if has_stored_frontier(root, name):  # its members' costs changed: store the frontier they now make
        materialize(root, [name])
    return result


def _seal(bundle: Bundle, result: FrontierMeasurement) -> dict[str, Any]:
    manifest = bundle.manifest
    metrics = dict(manifest["metrics"])
    devices = dict(metrics.get("devices", {}))
    worst = None if result.worst_ratio is None else round(result.worst_ratio, 4)  # None: JSON has no NaN
    devices[result.device] = {**devices.get(result.device, {}), "serving_measurements": {
        "members": result.members, "measured": result.measured, "rounds": result.rounds,
        "speed": round(result.speed, 4), "worst_measured_over_predicted": worst}}
    metrics["devices"] = devices
    return write_manifest(bundle.root, manifest["name"], bundle.space, manifest["default_device"],
                          manifest["configs"], metrics)


def measurable_here(bundle: str | Path, name: str) -> bool:
    """Whether device `name` of the bundle has measured latency and this machine honours its contract."""
    profile = load_bundle(bundle).devices[name].device.profile
    return profile.device_kind.runs_here(profile)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default", help="the bundle whose device to measure")
    p.add_argument("--device", default="cpu", help="a device with measured latency, runnable on this machine "
                                                   "(or on --agent)")
    add_agent_arguments(p, "time the children")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        agent = agent_from_args(args)
        try:
            r = measure_frontier(args.bundle, args.device, agent=agent)
        finally:
            if agent is not None:
                agent.close()
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"device {r.device}: {r.members} front members measured ({r.measured} children in {r.rounds} rounds); "
          f"machine speed {r.speed:.3f}; worst measured / predicted {r.worst_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
