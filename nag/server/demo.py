"""`make demo`: start the server on a bundle, request models for three budgets over gRPC, verify each
in ONNX Runtime on the test set, print a table, stop the server.

    python -m nag.server.demo --bundle bundles/default
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time

import numpy as np
import onnxruntime as ort

from nag.client import channel
from nag.data import DataSource, load_test_set
from nag.errors import NagError
from nag.export import INPUT_NAME
from nag.server.app import RunningServer, ServerOptions
from nag.v1 import generator_pb2 as pb
from nag.v1 import generator_pb2_grpc as pb_grpc


def onnx_accuracy(model: bytes, images: np.ndarray, labels: np.ndarray) -> float:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    correct = 0
    for start in range(0, len(images), 1000):
        logits = session.run(None, {INPUT_NAME: images[start:start + 1000]})[0]
        correct += int((logits.argmax(1) == labels[start:start + 1000]).sum())
    return 100.0 * correct / len(images)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--device", help="device (default: the bundle's default device)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        started = time.perf_counter()
        running = RunningServer(ServerOptions(bundle=args.bundle, port=0, metrics_port=0))
        running.load()
        print(f"server on 127.0.0.1:{running.port} (metrics :{running.metrics_port}) ready in "
              f"{time.perf_counter() - started:.1f} s")
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with channel(f"127.0.0.1:{running.port}") as ch:
            stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
            devices = stub.ListDevices(pb.ListDevicesRequest(), timeout=10)
            name = args.device or devices.default_device
            device = next(d for d in devices.devices if d.name == name)
            lo, hi = device.min_cost, device.max_cost
            budgets = [lo + f * (hi - lo) for f in (0.15, 0.5, 0.9)]
            space = running.service.bundle.space
            test = load_test_set(DataSource(), space.input.size, space.input.channels)
            images, labels = test.as_float().numpy(), test.labels.numpy()
            rows = []
            for budget in budgets:
                # Measured here too where this server runs the device's models (a pick over the budget then
                # steps down to the next cheaper member of the device's serving frontier).
                req = pb.GenerateForBudgetRequest(device=name, cost=budget, verify_latency=device.local)
                r = stub.GenerateForBudget(req, timeout=60)
                assert hashlib.sha256(r.onnx_model).hexdigest() == r.onnx_sha256, "sha256 mismatch"
                acc = onnx_accuracy(r.onnx_model, images, labels)
                rows.append((budget, r, acc))
        unit = device.cost_unit
        print(f"\ndevice {name} ({device.description}); bundle {devices.bundle_id}\n")
        print("a budget is the device's cost under its runtime contract at the profile's speed: the answer depends "
              "on the bundle, device, budget and graph form alone" + (", and each pick was also measured on this "
                                                                      "machine before the reply\n" if device.local
                                                                      else "\n"))
        print(f"| budget ({unit}) | predicted ({unit}, profile speed) | measured now ({unit}) | MMACs | params | "
              f"predicted val acc | ONNX Runtime test acc | model kB | request ms | architecture | weights |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for budget, r, acc in rows:
            measured = f"{r.measured_latency_ms:.4g}" if r.latency_verified else "-"
            if r.verification_steps:
                measured += f" ({r.verification_steps} step{'s' if r.verification_steps > 1 else ''} down)"
            print(f"| {budget:.4g} | {r.predicted_cost:.4g} | {measured} | {r.macs / 1e6:.2f} | "
                  f"{r.params / 1e3:.0f}k | "
                  f"{r.predicted_accuracy:.2f}% | {acc:.2f}% | {len(r.onnx_model) / 1e3:.0f} | "
                  f"{r.timings.total_ms:.0f} | {r.architecture_id} | {r.model_kind or 'slice'} |")
    finally:
        running.stop(5)
    print("\nserver stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
