"""Served models run right in a second runtime: the replies of a real server on the committed bundle, as a
client receives them over gRPC, predict in OpenCV DNN what they predict in ONNX Runtime."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.served_opencv import range_budgets, served_agreement
from nag.bundle import load_bundle
from nag.client import channel
from nag.config import ServiceConfig
from nag.server.app import RunningServer, ServerOptions
from nag.v1 import generator_pb2_grpc as pb_grpc

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "default"
IMAGES = 2000


@pytest.fixture(scope="module")
def stub() -> Iterator[pb_grpc.ArchitectureGeneratorServiceStub]:
    running = RunningServer(ServerOptions(bundle=BUNDLE, port=0, metrics_port=-1,
                                          service=ServiceConfig(max_concurrent=2, cache_mb=64,
                                                                # budgets in the profile's terms on any machine
                                                                calibrate_speed=False, verify_latency=False)))
    running.load()
    try:
        with channel(f"127.0.0.1:{running.port}") as ch:
            yield pb_grpc.ArchitectureGeneratorServiceStub(ch)
    finally:
        running.stop(1)


def test_served_models_agree_in_opencv_and_onnxruntime_across_the_range(stub, splits) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("cv2")
    models = load_bundle(BUNDLE).devices["cpu"]
    budgets = range_budgets(models.min_cost, models.device.cost_range[1])
    images = splits.test.images[:IMAGES].float().div(255.0).numpy()
    labels = splits.test.labels[:IMAGES].numpy()
    rows = served_agreement(stub, "cpu", budgets, images, labels)
    assert {r.resolution for r in rows} >= {16, 28}  # the resize of a resolution-16 child is in
    assert len({r.architecture_id for r in rows}) >= 4
    assert {r.model_kind for r in rows} == {"slice", "specialised"}  # both kinds of weights run in OpenCV
    for r in rows:
        assert r.graph_form == "GRAPH_FORM_PORTABLE" and r.contract_in_metadata, r
        assert r.agreement >= 0.999, r
        assert r.ort_accuracy > 0.8 and abs(r.opencv_accuracy - r.ort_accuracy) <= 0.001, r
