"""Turning a generated architecture into a deployable ONNX model: slice, BN-calibrate, export."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from nag.bundle.bundle import Bundle
from nag.config import SERVING_CALIBRATION_IMAGES
from nag.export import GraphForm, build_onnx
from nag.space.arch import Architecture
from nag.supernet.static import calibrate_bn, extract_child


@dataclass(frozen=True)
class ExportedModel:
    onnx: bytes
    sha256: str
    arch_id: str
    timings: dict[str, float]  # seconds: slice, calibrate, export


def export_child(bundle: Bundle, arch: Architecture, calibration_images: int = SERVING_CALIBRATION_IMAGES,
                 check: bool = False, form: GraphForm | str = GraphForm.PORTABLE,
                 metadata: Mapping[str, str] | None = None) -> ExportedModel:
    """Slice `arch` out of the bundle's supernet, re-calibrate its BN on the bundle's first
    `calibration_images` calibration images (one batch) and build its ONNX model directly, in graph
    `form` (see `GraphForm`), with `metadata` added to its metadata_props."""
    started = time.perf_counter()
    with torch.no_grad():
        static = extract_child(bundle.trained.supernet, arch)
    sliced = time.perf_counter()
    images = bundle.trained.calibration_images[:calibration_images].float().div_(255.0)
    calibrate_bn(static, images, batch_size=len(images))
    calibrated = time.perf_counter()
    meta = {"nag.bundle_id": bundle.bundle_id}
    if bundle.classes:
        meta["nag.classes"] = json.dumps(bundle.classes)
    meta.update(metadata or {})
    model = build_onnx(static, meta, form)
    if check:
        import onnx

        onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    exported = time.perf_counter()
    return ExportedModel(data, hashlib.sha256(data).hexdigest(), arch.arch_id,
                         {"slice": sliced - started, "calibrate": calibrated - sliced, "export": exported - calibrated})
