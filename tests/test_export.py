from __future__ import annotations

import json
import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from nag.export import INPUT_NAME, OPSET, build_onnx, export_onnx
from nag.space import biggest, sample_uniform, smallest
from nag.supernet import child


def _session(data: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def test_onnx_matches_pytorch_for_many_children(space, perturbed_supernet, rng: random.Random) -> None:
    calib = torch.rand(250, 1, 28, 28)
    x = torch.rand(5, 1, 28, 28)
    archs = [biggest(space), smallest(space)] + [sample_uniform(space, rng) for _ in range(10)]
    for arch in archs:
        static = child(perturbed_supernet, arch, calib)
        data = export_onnx(static, {"nag.bundle_id": "test"})
        got = _session(data).run(None, {INPUT_NAME: x.numpy()})[0]
        with torch.no_grad():
            expected = static(x).numpy()
        assert np.abs(got - expected).max() <= 1e-4, arch.to_json()


def test_onnx_passes_the_full_checker_with_metadata(space, perturbed_supernet, rng) -> None:
    arch = sample_uniform(space, rng)
    model = build_onnx(child(perturbed_supernet, arch, torch.rand(250, 1, 28, 28)), {"nag.bundle_id": "b1"})
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == OPSET >= 17
    props = {p.key: p.value for p in model.metadata_props}
    assert props["nag.arch_id"] == arch.arch_id
    assert json.loads(props["nag.arch_json"]) == arch.to_dict()
    assert props["nag.bundle_id"] == "b1"
    assert json.loads(props["nag.input"])["shape"] == ["N", 1, 28, 28]


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_dynamic_batch_axis(space, perturbed_supernet, batch: int) -> None:
    data = export_onnx(child(perturbed_supernet, smallest(space), torch.rand(250, 1, 28, 28)))
    session = _session(data)
    shape = session.get_inputs()[0].shape
    assert isinstance(shape[0], str) and shape[1:] == [1, 28, 28]
    out = session.run(None, {INPUT_NAME: np.random.rand(batch, 1, 28, 28).astype(np.float32)})[0]
    assert out.shape == (batch, space.num_classes)
