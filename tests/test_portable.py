"""Graph forms: the portable form runs right in OpenCV DNN and at every ONNX Runtime optimisation level,
the mobile form is taken whole by NNAPI and CoreML, and both predict what the standard form predicts."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import perturbed_supernet_of

from nag.export import INPUT_NAME, GraphForm, build_onnx, export_onnx
from nag.space import Architecture, SearchSpace, biggest, sample_uniform, smallest
from nag.space.block import SqueezeExcite
from nag.supernet import StaticChild, Supernet, child

LEVELS = {
    "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
IMAGES = 128
MOBILE_IMAGES = 64  # one image per run (a static batch of 1)


@dataclass
class Case:
    arch: Architecture
    static: StaticChild
    expected: np.ndarray  # the standard form's logits in ONNX Runtime (default level) on `images`


def _session(data: bytes, level: ort.GraphOptimizationLevel = LEVELS["all"]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _assert_same_predictions(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert got.shape == expected.shape, what
    assert np.array_equal(got.argmax(1), expected.argmax(1)), f"{what}: predictions differ"
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=what)


@pytest.fixture(scope="module")
def images(splits) -> np.ndarray:
    """Real Fashion-MNIST test images in [0, 1]."""
    return splits.test.images[:IMAGES].float().div(255.0).numpy()


@pytest.fixture(scope="module")
def cases(space: SearchSpace, splits, images: np.ndarray) -> list[Case]:
    """Children across the space, every resolution included: a supernet whose BN is perturbed (as in the
    `perturbed_supernet` fixture), BN calibrated on real training images."""
    net = perturbed_supernet_of(space)
    rng = random.Random(19)
    archs = [smallest(space), biggest(space)]
    for resolution in space.resolutions[:-1]:
        raw = sample_uniform(space, rng).to_dict()
        archs.append(Architecture.from_dict({**raw, "resolution": resolution}, space))
    calibration = splits.train.images[:64].float().div(255.0)
    out = []
    for arch in archs:
        static = child(net, arch, calibration, batch_size=len(calibration))
        expected = _session(export_onnx(static)).run(None, {INPUT_NAME: images})[0]
        out.append(Case(arch, static, expected))
    assert {c.arch.resolution for c in out} == set(space.resolutions)
    assert all(any(isinstance(op, SqueezeExcite) for b in c.static.blocks for op in b.ops.main)
               for c in out)  # SE gates in every child
    return out


def _opencv_logits(data: bytes, images: np.ndarray) -> np.ndarray:
    import cv2

    net = cv2.dnn.readNetFromONNX(np.frombuffer(data, np.uint8))
    net.setInput(images)
    return np.array(net.forward())


def test_portable_form_runs_right_in_opencv(cases: list[Case], images: np.ndarray) -> None:
    pytest.importorskip("cv2")
    for case in cases:
        got = _opencv_logits(export_onnx(case.static, form=GraphForm.PORTABLE), images)
        _assert_same_predictions(got, case.expected, f"OpenCV, portable, {case.arch.to_json()}")


def test_standard_form_is_misread_by_opencv(cases: list[Case], images: np.ndarray) -> None:
    """Documents why the portable form exists. OpenCV 4.x and 5.0 cannot import a Resize with `axes`;
    OpenCV 4.x rewrites the SE gate Mul(y, HardSigmoid(s)) into HardSwish(y) and returns wrong logits
    without an error, OpenCV 5.0 refuses to run that graph."""
    cv2 = pytest.importorskip("cv2")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    resized = next(c for c in cases if c.arch.resolution != c.static.native_size)
    with pytest.raises(cv2.error):
        _opencv_logits(export_onnx(resized.static), images)
    native = next(c for c in cases if c.arch.resolution == c.static.native_size)
    try:
        got = _opencv_logits(export_onnx(native.static), images)
    except cv2.error:
        assert int(cv2.__version__.split(".")[0]) >= 5
        return
    assert (got.argmax(1) == native.expected.argmax(1)).mean() < 0.5


@pytest.mark.parametrize("level", list(LEVELS))
def test_portable_form_at_every_ort_optimisation_level(cases: list[Case], images: np.ndarray, level: str) -> None:
    for case in cases:
        got = _session(export_onnx(case.static, form=GraphForm.PORTABLE), LEVELS[level]).run(None, {INPUT_NAME: images})
        _assert_same_predictions(got[0], case.expected, f"ORT {level}, portable, {case.arch.to_json()}")


@pytest.mark.parametrize("level", ["disable_all", "all"])
def test_mobile_form_predicts_like_the_standard_form(cases: list[Case], images: np.ndarray, level: str) -> None:
    for case in cases:
        session = _session(export_onnx(case.static, form=GraphForm.MOBILE), LEVELS[level])
        assert session.get_inputs()[0].shape == [1, *images.shape[1:]]
        got = np.concatenate([session.run(None, {INPUT_NAME: images[i : i + 1]})[0] for i in range(MOBILE_IMAGES)])
        _assert_same_predictions(got, case.expected[:MOBILE_IMAGES], f"ORT {level}, mobile, {case.arch.to_json()}")


def test_forms_use_the_promised_ops_and_record_themselves(cases: list[Case]) -> None:
    case = next(c for c in cases if c.arch.resolution != c.static.native_size)
    ops = {}
    for form in GraphForm:
        model = build_onnx(case.static, {"nag.bundle_id": "b1"}, form=form.value)
        onnx.checker.check_model(model, full_check=True)
        props = {p.key: p.value for p in model.metadata_props}
        assert props["nag.graph_form"] == form.value and props["nag.bundle_id"] == "b1"
        batch = 1 if form is GraphForm.MOBILE else "N"
        assert json.loads(props["nag.input"])["shape"] == [batch, 1, 28, 28]
        ops[form] = {n.op_type for n in model.graph.node}
    assert {"HardSigmoid", "HardSwish", "Resize", "Flatten"} <= ops[GraphForm.STANDARD]
    assert not {"HardSigmoid", "Resize"} & ops[GraphForm.PORTABLE]
    assert not {"HardSigmoid", "HardSwish", "Resize", "Flatten"} & ops[GraphForm.MOBILE]
    with pytest.raises(ValueError):
        build_onnx(case.static, form="tiny")


_PARTITIONS = re.compile(r"(\d+) partitions with a total of (\d+)/(\d+) nodes can be handled by the (.+?) EP\.")


def test_mobile_form_is_taken_whole_by_nnapi_and_coreml(cases: list[Case], tmp_path: Path) -> None:
    case = next(c for c in cases if c.arch.resolution == 16)  # the resize, SE gates and HardSwish all in
    path = tmp_path / "mobile.onnx"
    path.write_bytes(export_onnx(case.static, form=GraphForm.MOBILE))
    run = subprocess.run([sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability", str(path)],
                         capture_output=True, text=True, timeout=120, check=True)
    found: dict[str, tuple[int, int, int]] = {}
    for m in _PARTITIONS.finditer(run.stdout + run.stderr):
        found.setdefault(m.group(4), (int(m.group(1)), int(m.group(2)), int(m.group(3))))  # first: as is
    assert set(found) == {"NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram"}, run.stderr
    for ep, (partitions, taken, total) in found.items():
        assert partitions == 1 and taken == total > 0, f"{ep}: {partitions} partitions, {taken}/{total} nodes"


def test_every_form_matches_pytorch_for_colour_images(space: SearchSpace) -> None:
    """Per-channel normalisation folded into the portable resize: a 3-channel space, every resolution."""
    raw = space.to_dict()
    colour = SearchSpace.from_dict({**raw, "input": {**raw["input"], "channels": 3, "mean": [0.4, 0.5, 0.6],
                                                     "std": [0.2, 0.25, 0.3]}})
    torch.manual_seed(0)
    net = Supernet(colour)
    x = torch.rand(4, 3, 28, 28)
    rng = random.Random(3)
    for resolution in colour.resolutions:
        arch = Architecture.from_dict({**sample_uniform(colour, rng).to_dict(), "resolution": resolution}, colour)
        static = child(net, arch, torch.rand(32, 3, 28, 28), batch_size=32)
        with torch.no_grad():
            expected = static(x).numpy()
        for form in GraphForm:
            s = _session(export_onnx(static, form=form))
            got = np.concatenate([s.run(None, {INPUT_NAME: x[i : i + 1].numpy()})[0] for i in range(len(x))])
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=f"{form}, {arch.to_json()}")
