"""Served models in a second runtime: what a client gets over gRPC, run in OpenCV DNN and in ONNX Runtime.

    python -m benchmarks.served_opencv --bundle bundles/default

Starts `nag serve` on the bundle, asks `GenerateForBudget` on the `cpu` device for five budgets across its
range (the cheapest child, at resolution 16, 25/50/75% of the range and the dearest child), each in the
server's default graph form, and runs every reply's ONNX bytes as they arrived in OpenCV DNN
(`readNetFromONNX`, batches of 500) and in ONNX Runtime (ORT_ENABLE_ALL) on all 10,000 test images:
top-1 agreement of the two, and each runtime's accuracy. Also checks that every reply carries the
device's runtime contract in its metadata.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.results_io import machine, markdown_table, write_results
from benchmarks.server_load import Server
from nag.bundle import load_bundle
from nag.client import channel
from nag.data import DataSource
from nag.data.source import load_test_set
from nag.export import INPUT_NAME
from nag.v1 import generator_pb2 as pb
from nag.v1 import generator_pb2_grpc as pb_grpc

OPENCV_BATCH = 500


@dataclass(frozen=True)
class ServedAgreement:
    budget_ms: float
    architecture_id: str
    resolution: int
    macs: int
    graph_form: str
    model_kind: str  # "slice", or "specialised" (its own weights, fine-tuned from the slice)
    contract_in_metadata: bool
    agreement: float  # share of images where OpenCV's top-1 equals ONNX Runtime's
    opencv_accuracy: float
    ort_accuracy: float


def range_budgets(min_cost: float, max_cost: float) -> list[float]:
    """The cheapest child's cost (a hair above), 25/50/75% of the range, and the dearest child's."""
    return [min_cost * 1.001, *(min_cost + f * (max_cost - min_cost) for f in (0.25, 0.5, 0.75)), max_cost * 1.001]


def opencv_logits(model: bytes, images: np.ndarray) -> np.ndarray:
    import cv2

    net = cv2.dnn.readNetFromONNX(np.frombuffer(model, np.uint8))
    out = []
    for i in range(0, len(images), OPENCV_BATCH):
        net.setInput(images[i : i + OPENCV_BATCH])
        out.append(np.array(net.forward()))
    return np.concatenate(out)


def ort_logits(model: bytes, images: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {INPUT_NAME: images[i : i + 1000]})[0]
                           for i in range(0, len(images), 1000)])


def served_agreement(stub: pb_grpc.ArchitectureGeneratorServiceStub, device: str, budgets: list[float],
                     images: np.ndarray, labels: np.ndarray) -> list[ServedAgreement]:
    """Ask the server for each budget and compare its reply's model in OpenCV and ONNX Runtime."""
    rows = []
    for budget in budgets:
        reply = stub.GenerateForBudget(pb.GenerateForBudgetRequest(latency_ms=budget, device=device), timeout=120)
        props = {p.key: p.value for p in onnx.load_from_string(reply.onnx_model).metadata_props}
        cv, rt = opencv_logits(reply.onnx_model, images), ort_logits(reply.onnx_model, images)
        rows.append(ServedAgreement(
            budget, reply.architecture_id, reply.architecture.resolution, reply.macs,
            pb.GraphForm.Name(reply.graph_form), reply.model_kind,
            props.get("nag.runtime_contract") == reply.runtime_contract_json != "",
            float((cv.argmax(1) == rt.argmax(1)).mean()), float((cv.argmax(1) == labels).mean()),
            float((rt.argmax(1) == labels).mean())))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    import cv2

    bundle = load_bundle(args.bundle)
    models = bundle.devices[args.device]
    budgets = range_budgets(models.min_cost, models.device.cost_range[1])
    test = load_test_set(DataSource(), bundle.space.input.size, bundle.space.input.channels)
    images, labels = test.images.float().div(255.0).numpy(), test.labels.numpy()
    # Speed calibration and verification off: the budgets are then in the profile's terms and span the served
    # range on any machine. With them on a machine faster than the profile (0.57x here), even the cheapest
    # budget a client may ask maps above every resolution-16 child.
    server = Server(args.bundle, 64, 4, extra=["--no-calibrate", "--no-verify-latency"])
    try:
        with channel(server.address) as ch:
            rows = served_agreement(pb_grpc.ArchitectureGeneratorServiceStub(ch), args.device, budgets, images,
                                    labels)
    finally:
        server.stop()
    data: dict[str, Any] = {"machine": machine(), "bundle": bundle.bundle_id, "device": args.device,
                            "opencv": cv2.__version__, "onnxruntime": ort.__version__, "images": len(images),
                            "models": [asdict(r) for r in rows]}
    md = (f"# Served models in OpenCV DNN {cv2.__version__} and ONNX Runtime {ort.__version__}\n\n"
          f"Bundle `{bundle.bundle_id}`, device `{args.device}`: the replies of `GenerateForBudget` over gRPC, run as "
          f"they arrived on all {len(images):,} test images.\n\n")
    md += markdown_table(
        ["budget (ms)", "architecture", "resolution", "MMACs", "form", "model", "contract in metadata",
         "OpenCV = ORT", "OpenCV acc %", "ORT acc %"],
        [[f"{r.budget_ms:.4f}", f"`{r.architecture_id}`", r.resolution, f"{r.macs / 1e6:.2f}", r.graph_form,
          r.model_kind, "yes" if r.contract_in_metadata else "no", f"{100 * r.agreement:.2f}%",
          f"{100 * r.opencv_accuracy:.2f}", f"{100 * r.ort_accuracy:.2f}"] for r in rows])
    write_results("served_opencv", data, md)
    print(md)
    print(json.dumps({"min_agreement": min(r.agreement for r in rows)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
