"""Cost models: device profiles, ONNX Runtime latency measurement and per-device latency predictors."""

# Importing `builtin_kinds` registers the `onnxruntime` and `flops` kinds that device profiles name.
from nag.cost.builtin_kinds import AnalyticKind, FlopsKind, MeasuredKind, OnnxRuntimeKind
from nag.cost.device import DeviceError, DeviceProfile, check_runnable, packaged_profile, packaged_profiles
from nag.cost.kinds import DeviceKind, register_kind, registered_kinds
from nag.cost.measure import LatencyMeasurement, latency_model_bytes, measure_latencies
from nag.cost.metrics import kendall_tau, prediction_metrics
from nag.cost.predictor import CostModel, FlopsCostModel, LatencyPredictor
from nag.cost.store import Device, list_devices, load_device, read_measurements, write_measurements

__all__ = [
    "AnalyticKind",
    "CostModel",
    "Device",
    "DeviceError",
    "DeviceKind",
    "DeviceProfile",
    "FlopsCostModel",
    "FlopsKind",
    "LatencyMeasurement",
    "LatencyPredictor",
    "MeasuredKind",
    "OnnxRuntimeKind",
    "check_runnable",
    "kendall_tau",
    "latency_model_bytes",
    "list_devices",
    "load_device",
    "measure_latencies",
    "packaged_profile",
    "packaged_profiles",
    "prediction_metrics",
    "read_measurements",
    "register_kind",
    "registered_kinds",
    "write_measurements",
]
