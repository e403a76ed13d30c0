"""Accuracy of children, BN-calibrated and run the way they are deployed (ONNX Runtime).

Scoring a child through its ONNX model instead of the PyTorch supernet gives the same predictions
faster (docs/results.md, "Triplets"), and scoring children is what triplet collection and the search
baselines spend their time on.
"""

from __future__ import annotations

import numpy as np
import torch

from nag.data.datasets import ImageSet
from nag.export import INPUT_NAME, build_onnx
from nag.space.arch import Architecture
from nag.supernet.model import Supernet
from nag.supernet.static import calibrate_bn, child


def onnx_predictions(model: bytes, data: ImageSet, batch_size: int = 1000) -> np.ndarray:
    """Predicted class of every image of `data` by the serialised ONNX `model` in ONNX Runtime (as many
    threads as PyTorch uses)."""
    return onnx_logits(model, data, batch_size).argmax(1)


def onnx_logits(model: bytes, data: ImageSet, batch_size: int = 1000) -> np.ndarray:
    """Logits [N, classes] of every image of `data` by the serialised ONNX `model` in ONNX Runtime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    out = []
    for start in range(0, len(data), batch_size):
        images = data.as_float(slice(start, start + batch_size)).numpy()
        out.append(session.run(None, {INPUT_NAME: images})[0])
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def child_correct(supernet: Supernet, arch: Architecture, calibration: torch.Tensor, data: ImageSet,
                  batch_size: int = 1000, calib_batch: int = 250) -> np.ndarray:
    """Per image of `data`, whether child `arch` (sliced, BN re-calibrated on `calibration`) classifies it
    right; per-image outcomes let benchmarks pair two models on the same images."""
    static = child(supernet, arch, calibration, calib_batch)
    return onnx_predictions(build_onnx(static).SerializeToString(), data, batch_size) == data.labels.numpy()


def child_accuracy(supernet: Supernet, arch: Architecture, calibration: torch.Tensor, data: ImageSet,
                   batch_size: int = 1000, calib_batch: int = 250) -> float:
    """Accuracy (%) on `data` of child `arch`, sliced and BN re-calibrated on `calibration` (float images)."""
    correct = child_correct(supernet, arch, calibration, data, batch_size, calib_batch)
    return 100.0 * int(correct.sum()) / max(1, len(data))


@torch.no_grad()
def torch_child_accuracy(supernet: Supernet, arch: Architecture, calibration: torch.Tensor, data: ImageSet,
                         device: torch.device, batch_size: int = 1000, calib_batch: int = 250) -> float:
    """`child_accuracy` computed by the sliced PyTorch child on `device` (a GPU while training there)
    instead of ONNX Runtime on the CPU; the same up to float rounding."""
    static = child(supernet, arch, None).to(device)
    calibrate_bn(static, calibration.to(device), calib_batch)
    correct = 0
    for start in range(0, len(data), batch_size):
        images = data.as_float(slice(start, start + batch_size)).to(device)
        predicted = static(images).argmax(1).cpu()
        correct += int((predicted == data.labels[start : start + batch_size]).sum())
    return 100.0 * correct / max(1, len(data))
