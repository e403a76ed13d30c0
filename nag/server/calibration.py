"""On-line speed calibration: this machine's speed against each local device's profile.

The latency predictor was fitted on the profile's measurements, but the machine drifts (docs/known-gaps.md,
the frontier goal), and a pick that fits the budget at the profile's speed then misses it now. The server measures
the profile's reference architectures at start and again when idle, and generates for `budget / speed`
(speed = latency now / profiled; > 1: slower now). Idle re-calibration is bounded by a duty cycle: after a
calibration that took t seconds, the next one waits at least t / duty_cycle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from nag.bundle.bundle import Bundle
from nag.cost.device import DeviceProfile
from nag.cost.speed import measure_against_profile
from nag.cost.store import MEASUREMENTS_FILE, device_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationConfig:
    references: int = 6  # profiled architectures measured per calibration, spread over the latency range
    rounds: int = 8  # interleaved rounds per calibration (the profile itself uses 40)
    interval_s: float = 60.0  # idle re-calibration at most this often
    duty_cycle: float = 0.05  # and never more than this share of the time


@dataclass(frozen=True)
class Speed:
    value: float
    measured_at: float  # unix time
    seconds: float  # how long the calibration took


def is_local(profile: DeviceProfile) -> bool:
    """Whether this server can run the device's models under its contract (and so verify and calibrate)."""
    return profile.device_kind.runs_here(profile)


class SpeedCalibration:
    def __init__(self, bundle: Bundle, config: CalibrationConfig, on_update: Callable[[str, Speed], None]):
        self.bundle = bundle
        self.config = config
        self._on_update = on_update
        self._speeds: dict[str, Speed] = {}
        self._lock = threading.Lock()
        self.devices = [name for name, m in sorted(bundle.devices.items()) if is_local(m.device.profile)
                        and (device_dir(bundle.root, name) / MEASUREMENTS_FILE).is_file()]

    def speed(self, device: str) -> Speed | None:
        with self._lock:
            return self._speeds.get(device)

    def calibrate(self, device: str) -> Speed:
        """Measure `device`'s reference architectures now; returns (and stores) the machine's speed."""
        models = self.bundle.devices[device]
        profile = replace(models.device.profile, rounds=self.config.rounds)
        started = time.perf_counter()
        measured = measure_against_profile([], self.bundle.space, profile, device_dir(self.bundle.root, device),
                                           references=self.config.references)
        speed = Speed(measured.speed, time.time(), time.perf_counter() - started)
        with self._lock:
            self._speeds[device] = speed
        self._on_update(device, speed)
        log.info("device %s: this machine runs at %.3fx the profile's latency (calibrated in %.1f s)", device,
                 speed.value, speed.seconds)
        return speed

    def calibrate_all(self) -> None:
        for device in self.devices:
            self.calibrate(device)

    def due(self, device: str, now: float) -> bool:
        last = self.speed(device)
        if last is None:
            return True
        wait = max(self.config.interval_s, last.seconds / self.config.duty_cycle)
        return now - last.measured_at >= wait

    def run_when_idle(self, stop: threading.Event, idle: Callable[[], bool],
                      hold: Callable[[], object]) -> None:
        """Re-calibrate devices that are due whenever the server is idle, until `stop` is set. `hold()`
        returns a context manager holding the compute slot, so that calibration never runs beside a request."""
        while not stop.wait(1.0):
            for device in self.devices:
                if stop.is_set() or not idle() or not self.due(device, time.time()):
                    continue
                with hold():  # type: ignore[attr-defined]
                    if idle():
                        try:
                            self.calibrate(device)
                        except Exception:  # a failed calibration keeps the last speed; the server goes on
                            log.exception("calibrating device %s failed", device)
