"""One request to (device, budget, candidates, seed): the same validation for the server, the client CLI
and `nag generate --local`."""

from __future__ import annotations

from dataclasses import dataclass

from nag.bundle.bundle import Bundle, DeviceModels
from nag.policy.inference import InvalidBudgetError, check_budget, check_seed, resolve_device

MACS_PER_MMAC = 1e6
FLOPS_DEVICE = "flops"


def _field(unit: str) -> str:
    """The request field for a budget in `unit`, as the error messages name it."""
    return {"ms": "a latency_ms", "MMACs": "a macs"}.get(unit, f"a cost ({unit})")


@dataclass(frozen=True)
class BudgetRequest:
    models: DeviceModels
    budget: float  # in the device's unit (ms or MMACs)
    candidates: int
    seed: int | None

    @property
    def device(self) -> str:
        return self.models.name


def resolve_request(bundle: Bundle, *, latency_ms: float | None = None, macs: float | None = None,
                    cost: float | None = None, device: str | None = None, candidates: int = 0,
                    seed: int | None = None, default_candidates: int = 64) -> BudgetRequest:
    """Validate a request: exactly one budget (`latency_ms` for a device in ms, `macs` for one in MMACs, or
    `cost` in any device's own unit), a known device, a candidate count (0 means `default_candidates`) and a
    seed in range. Raises `InvalidBudgetError`, `DeviceError` or `BudgetOutOfRangeError` with a message
    meant for the user."""
    if sum(b is not None for b in (latency_ms, macs, cost)) != 1:
        raise InvalidBudgetError("give exactly one budget: latency_ms, macs or cost")
    if cost is not None:
        models = resolve_device(bundle, device or None)
        budget = float(cost)
    elif macs is not None:
        models = resolve_device(bundle, device or FLOPS_DEVICE)
        if models.device.unit != "MMACs":
            raise InvalidBudgetError(f"device {models.name!r} takes {_field(models.device.unit)} budget, not macs")
        budget = float(macs) / MACS_PER_MMAC
    else:
        models = resolve_device(bundle, device or None)
        if models.device.unit != "ms":
            raise InvalidBudgetError(f"device {models.name!r} takes {_field(models.device.unit)} budget, not "
                                     "latency_ms")
        budget = float(latency_ms)  # type: ignore[arg-type]
    candidates = candidates or default_candidates
    check_seed(seed)
    check_budget(budget, models, candidates)
    return BudgetRequest(models, budget, candidates, seed)
