"""Serving policy: a budget request in, the model to return out, whatever the transport.

The answer is a function of (bundle, device, budget, graph form) by default: the pick is the best member
of the device's serving frontier within the budget (as `nag.policy.inference.pick_member` picks it; here a
lookup, each member's request-independent part made once), and each member's
ONNX model is exported once, with the BN statistics the bundle stores for it, and kept for (device, member,
form). Two things make an answer depend on this host, and only when asked for, and the answer says so:

- **speed** (`use_speed`): the pick targets `budget / speed`, where speed is this host's latency against the
  device's profile (`nag.server.calibration` measures it), rounded up to a step of `SPEED_STEP`;
- **verification** (`verify`): the model is measured under the device's runtime contract (here, or on the
  device through a registered measurer) and, while it runs over the budget, replaced by the next cheaper
  frontier member, at most `verification_steps` times.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace

from nag.bundle.bundle import Bundle, DeviceModels
from nag.config import SERVING_CALIBRATION_IMAGES
from nag.errors import NagError
from nag.export import GraphForm
from nag.policy.cache import ByteLRU
from nag.policy.frontier import serving_frontier
from nag.policy.inference import Generated, member_pick, member_within
from nag.policy.materialize import ExportedModel, export_child
from nag.policy.request import BudgetRequest

SPEED_STEP = 0.05
MODEL_KIND = "slice"  # a child sliced out of the supernet, with the bundle's BN statistics for it

# An ONNX model's median latency in ms on the device, under its runtime contract.
Measure = Callable[[bytes], float]
# Holds the caller's compute slot while one named stage runs (the server's FIFO; nothing in-process).
Hold = Callable[[str], AbstractContextManager[None]]


class UnavailableOptionError(NagError):
    """The request asks for something this host cannot do for the device (verify, or apply a speed)."""


@contextmanager
def _no_hold(stage: str) -> Iterator[None]:
    yield


@dataclass(frozen=True)
class AnswerOptions:
    form: GraphForm = GraphForm.PORTABLE
    verify: bool = False  # measure the model before answering; step down while it runs over
    use_speed: bool = False  # target budget / speed, this host's calibrated speed against the profile


@dataclass(frozen=True)
class Answer:
    generated: Generated
    model: ExportedModel
    member: int  # index on the device's serving frontier (-1: the space's cheapest child, below it)
    speed: float  # the speed the pick used: 1.0 unless `speed_applied`
    speed_applied: bool
    verified: bool
    measured_latency: float  # ms; 0 when not verified
    steps: int  # cheaper members tried after the first one measured over the budget
    cached: bool  # the model had been exported before
    contract_json: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


def rounded_speed(value: float) -> float:
    """A calibrated speed rounded up to a step of `SPEED_STEP`: calibrations that differ by noise give the
    same picks, and rounding up errs on the side of the budget."""
    return max(SPEED_STEP, math.ceil(value / SPEED_STEP - 1e-9) * SPEED_STEP)


class ServingPolicy:
    """Picks, exported members, verification and speed for one bundle; thread-safe."""

    def __init__(self, bundle: Bundle, calibration_images: int = SERVING_CALIBRATION_IMAGES,
                 verification_steps: int = 3, measurement_ttl_s: float = 30.0, cache_bytes: int = 256_000_000):
        self.bundle = bundle
        self.calibration_images = calibration_images
        self.verification_steps = verification_steps
        self.measurement_ttl_s = measurement_ttl_s
        space = bundle.space
        self.input_shape = [-1, space.input.channels, space.input.size, space.input.size]
        # Each device's runtime contract as served (reply and model metadata): built once.
        self.contracts = {name: json.dumps(m.device.profile.contract(), sort_keys=True)
                          for name, m in bundle.devices.items()}
        self.measurers: dict[str, Measure] = {}
        for name, m in bundle.devices.items():
            profile = m.device.profile
            if profile.device_kind.runs_here(profile):
                self.measurers[name] = self._local_measure(m)
        # Models exported by `warm` stay; any other (another form, the space's cheapest child) is kept in
        # an LRU of `cache_bytes`.
        self._pinned: dict[str, ExportedModel] = {}
        self._pinned_bytes = 0
        self._cache: ByteLRU[ExportedModel] = ByteLRU(cache_bytes)
        self._measured: dict[tuple[str, str], tuple[float, float]] = {}  # (device, sha256) -> (ms, when)
        self._members: dict[tuple[str, int], Generated] = {}  # the request-independent part of a pick
        self._lock = threading.Lock()

    def _local_measure(self, models: DeviceModels) -> Measure:
        profile = models.device.profile
        return lambda onnx: profile.device_kind.measure_model(onnx, profile, self.input_shape)

    def set_measurer(self, device: str, measure: Measure) -> None:
        """Verify `device`'s picks with `measure` (e.g. on the device itself, through its agent)."""
        if device not in self.bundle.devices:
            raise UnavailableOptionError(f"unknown device {device!r}; this bundle serves {sorted(self.bundle.devices)}")
        self.measurers[device] = measure

    def can_verify(self, device: str) -> bool:
        return device in self.measurers

    # -- models -------------------------------------------------------------------------------------

    def _cached(self, key: str) -> ExportedModel | None:
        return self._pinned.get(key) or self._cache.get(key)

    def model(self, g: Generated, member: int, form: GraphForm, hold: Hold = _no_hold, pin: bool = False
              ) -> tuple[ExportedModel, bool]:
        """The ONNX model of pick `g` (frontier member `member`) in `form`, exported once (kept for good
        when `pin`); True if it had been exported before."""
        models = self.bundle.devices[g.device]
        key = f"{g.device}|{g.arch.arch_id}|{form.value}"
        exported = self._cached(key)
        if exported is not None:
            return exported, True
        with hold("export"):
            exported = self._cached(key)
            if exported is not None:
                return exported, True
            frontier = serving_frontier(self.bundle, models)
            bn = frontier.entries[member].bn if member >= 0 else None
            statistics = (f"stored:{models.stored.calibration_images}" if bn is not None and models.stored
                          else f"calibrated:{self.calibration_images}")
            exported = export_child(self.bundle, g.arch, self.calibration_images, form=form, bn=bn, metadata={
                "nag.device": g.device, "nag.runtime_contract": self.contracts[g.device],
                "nag.frontier_member": str(member), "nag.bn_statistics": statistics, "nag.model_kind": MODEL_KIND})
            if pin:
                with self._lock:
                    self._pinned[key] = exported
                    self._pinned_bytes += len(exported.onnx)
            else:
                self._cache.put(key, exported, len(exported.onnx))
        return exported, False

    def warm(self, forms: Iterable[GraphForm] = (GraphForm.PORTABLE,), devices: Iterable[str] | None = None) -> int:
        """Export every serving-frontier member of `devices` (default: all) in `forms`, kept for good;
        returns how many models were exported now."""
        count = 0
        for name in sorted(devices or self.bundle.devices):
            models = self.bundle.devices[name]
            frontier = serving_frontier(self.bundle, models)
            for index, entry in enumerate(frontier.entries):
                g = self.pick(models, index, entry.cost, entry.cost, 0)
                for form in forms:
                    count += not self.model(g, index, form, pin=True)[1]
        return count

    def pick(self, models: DeviceModels, member: int, budget: float, target: float, seed: int) -> Generated:
        """Frontier member `member`'s pick for `budget` (made for `target`): a lookup once the member has
        been picked before. Not scored by the evaluator (`score` is NaN): serving needs no score."""
        key = (models.name, member)
        base = self._members.get(key)
        if base is None:
            base = replace(member_pick(self.bundle, models, member, budget, target), score=math.nan, timings={})
            with self._lock:
                self._members[key] = base
        return replace(base, budget=float(budget), target=target, seed=seed)

    @property
    def exported_bytes(self) -> int:
        return self._pinned_bytes + self._cache.bytes

    @property
    def largest_model(self) -> int:
        return max((len(m.onnx) for m in self._pinned.values()), default=0)

    # -- answers ------------------------------------------------------------------------------------

    def measure(self, device: str, model: ExportedModel, hold: Hold = _no_hold) -> float:
        """The model's median latency on `device` under its contract, measured now (reused for
        `measurement_ttl_s` seconds)."""
        key = (device, model.sha256)
        recent = self._measured.get(key)
        if recent is not None and time.monotonic() - recent[1] < self.measurement_ttl_s:
            return recent[0]
        with hold("latency verification"):
            latency = self.measurers[device](model.onnx)
        with self._lock:
            self._measured[key] = (latency, time.monotonic())
        return latency

    def answer(self, req: BudgetRequest, options: AnswerOptions, speed: float | None = None,
               hold: Hold = _no_hold, on_verified: Callable[[bool], None] | None = None) -> Answer:
        """The model for a validated request. `speed` is this host's calibrated speed for the device (None:
        not calibrated); it is applied only with `options.use_speed`."""
        started = time.perf_counter()
        device = req.device
        if options.verify and not self.can_verify(device):
            raise UnavailableOptionError(
                f"latency verification is not available for device {device!r}: this server cannot run its "
                "models under its runtime contract and has no agent for it")
        if options.use_speed and speed is None:
            raise UnavailableOptionError(
                f"no measured speed for device {device!r} on this server: it applies a speed only for devices it "
                "calibrates (`nag serve --calibrate-speed`)")
        applied = rounded_speed(speed) if options.use_speed and speed is not None else 1.0
        # The predictor speaks the profile's speed: a host `applied` times slower needs `budget / applied`.
        budget = max(req.budget / applied, req.models.min_cost)
        target, member = member_within(self.bundle, req.models, budget)
        seed = 0 if req.seed is None else int(req.seed)
        g = self.pick(req.models, member, budget, target, seed)
        chosen = time.perf_counter()
        timings = {"sample": 0.0, "choose": chosen - started, "slice": 0.0, "calibrate": 0.0, "export": 0.0,
                   "verify": 0.0}
        measured, steps = 0.0, 0
        while True:
            exported, cached = self.model(g, member, options.form, hold)
            if not cached:
                for stage, seconds in exported.timings.items():
                    timings[stage] += seconds
            if not options.verify:
                break
            t = time.perf_counter()
            measured = self.measure(device, exported, hold)
            timings["verify"] += time.perf_counter() - t
            over = measured > req.budget
            if on_verified is not None:
                on_verified(over)
            if not over or steps >= self.verification_steps or member <= 0:
                break
            member, steps = member - 1, steps + 1
            g = self.pick(req.models, member, g.budget, g.target, g.seed)
        timings["total"] = time.perf_counter() - started
        return Answer(g, exported, member, applied, options.use_speed, options.verify, measured, steps, cached,
                      self.contracts[device], timings)
