"""Turning an architecture into a deployable ONNX model: slice, BN statistics (stored or calibrated), export."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from nag.bundle.bundle import Bundle
from nag.bundle.members import BnStats, bn_stats_of
from nag.bundle.specialised import SpecialisedChild
from nag.config import SERVING_CALIBRATION_IMAGES
from nag.errors import NagError
from nag.export import GraphForm, build_onnx
from nag.space.arch import Architecture
from nag.supernet.static import calibrate_bn, extract_child


def specialised_metadata(child: SpecialisedChild) -> dict[str, str]:
    """What a specialised child's model says about itself: its kind, the slice it was fine-tuned from and
    where its BN statistics come from."""
    return {"nag.model_kind": "specialised",
            "nag.specialised_from": f"slice {child.arch.arch_id} of supernet sha256:{child.info['from_supernet']}",
            "nag.bn_statistics": f"specialised:{child.info['calibration_images']}"}


@dataclass(frozen=True)
class ExportedModel:
    onnx: bytes
    sha256: str
    arch_id: str
    timings: dict[str, float]  # seconds: slice, calibrate, export
    metadata: dict[str, str] = field(default_factory=dict)  # the model's metadata_props


def batch_norms(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


@torch.no_grad()
def load_bn_stats(model: nn.Module, stats: BnStats) -> None:
    """Set every BatchNorm's running statistics from `stats` (all of them, and nothing else)."""
    norms = batch_norms(model)
    if sorted(name for name, _ in norms) != sorted(stats):
        raise NagError("the stored BN statistics do not match the child's BatchNorm layers")
    for name, bn in norms:
        mean, var = stats[name]
        if tuple(mean.shape) != tuple(bn.running_mean.shape):
            raise NagError(f"the stored BN statistics of {name!r} have {mean.shape[0]} channels, not "
                           f"{bn.running_mean.shape[0]}")
        bn.running_mean.copy_(torch.from_numpy(mean))
        bn.running_var.copy_(torch.from_numpy(var))


def calibrated_bn_stats(bundle: Bundle, arch: Architecture, images: int | None = None,
                        batch_size: int = 250) -> BnStats:
    """`arch`'s BN statistics re-estimated on the bundle's first `images` calibration images (all of them
    by default), `batch_size` at a time."""
    with torch.no_grad():
        static = extract_child(bundle.trained.supernet, arch)
    calibrate_bn(static, bundle.trained.calibration_float[:images], batch_size=batch_size)
    return bn_stats_of(batch_norms(static))


def export_child(bundle: Bundle, arch: Architecture, calibration_images: int = SERVING_CALIBRATION_IMAGES,
                 check: bool = False, form: GraphForm | str = GraphForm.PORTABLE,
                 metadata: Mapping[str, str] | None = None, bn: BnStats | None = None) -> ExportedModel:
    """Slice `arch` out of the bundle's supernet, set its BN statistics (`bn`, stored with the bundle's
    materialized frontier; else re-calibrated on the bundle's first `calibration_images` calibration images,
    one batch) and build its ONNX model directly, in graph `form` (see `GraphForm`), with `metadata` added
    to its metadata_props. A child the bundle holds specialised weights for gets those (and their BN
    statistics) instead, and its metadata says so (`nag.model_kind` "specialised", `nag.specialised_from`)."""
    started = time.perf_counter()
    with torch.no_grad():
        static = extract_child(bundle.trained.supernet, arch)
    sliced = time.perf_counter()
    specialised = bundle.specialised.get(arch.arch_id)
    if specialised is not None:
        try:
            static.load_state_dict(specialised.state_dict())
        except RuntimeError as exc:
            raise NagError(f"the specialised weights of {arch.arch_id} in bundle {bundle.root} do not fit its "
                           f"architecture: {' '.join(str(exc).split())[:300]}") from None
    elif bn is not None:
        load_bn_stats(static, bn)
    else:
        images = bundle.trained.calibration_images[:calibration_images].float().div_(255.0)
        calibrate_bn(static, images, batch_size=len(images))
    calibrated = time.perf_counter()
    meta = {"nag.bundle_id": bundle.bundle_id}
    if bundle.classes:
        meta["nag.classes"] = json.dumps(bundle.classes)
    meta.update(metadata or {})
    if specialised is not None:
        meta.update(specialised_metadata(specialised))
    model = build_onnx(static, meta, form)
    if check:
        import onnx

        onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    exported = time.perf_counter()
    return ExportedModel(data, hashlib.sha256(data).hexdigest(), arch.arch_id,
                         {"slice": sliced - started, "calibrate": calibrated - sliced, "export": exported - calibrated},
                         meta)
