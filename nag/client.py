"""`nag generate`: ask a server (or, with --local, the bundle in-process) for a model for a budget."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nag.limits import MAX_CANDIDATES, MAX_SEED

# gRPC clients refuse replies above 4 MB by default; the largest child of a big space can exceed it.
MAX_RECEIVE = 64 * 1024 * 1024
# The retry policy of every channel() (several replicas behind a load balancer; docs/serving.md): calls that
# end UNAVAILABLE (a replica died or is draining after SIGTERM, or nginx found no live replica) or
# RESOURCE_EXHAUSTED (all of a replica's slots busy) or INTERNAL (nginx resets the stream with HTTP/2
# INTERNAL_ERROR when the replica it forwarded to dies mid-call; the server itself answers no malformed
# or hostile request INTERNAL, see benchmarks/fuzz_server.py) are sent again, up to gRPC's cap of 5 attempts.
# The wait before retry n is random in [0, min(0.25 s * 2^(n-1), 5 s)]. gRPC does not retry a call
# once reply headers have arrived (see RESENDS_AFTER_HEADERS), and the call's deadline covers all
# attempts. Every RPC of the service is a pure function of its request, so resending is safe.
RETRY_POLICY = {"maxAttempts": 5, "initialBackoff": "0.25s", "maxBackoff": "5s", "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED", "INTERNAL"]}
SERVICE_CONFIG = json.dumps({"methodConfig": [{"name": [{"service": "nag.v1.ArchitectureGeneratorService"}],
                                               "retryPolicy": RETRY_POLICY}]})
# A replica killed after its reply headers went out (nginx has forwarded them; the reply's message
# or trailers had not) ends the call INTERNAL at the client, and gRPC's retries never apply once
# headers have arrived: seen once in CI's replica-kill test. channel() resends such calls itself,
# up to this many times, within the call's deadline. No reply was delivered, so nothing is doubled.
RESENDS_AFTER_HEADERS = 2
_RESEND_WAIT_S = 0.1


def wait_until_serving(ch, timeout_s: float = 120.0, alive: Callable[[], bool] | None = None,  # type: ignore[no-untyped-def]
                       why: Callable[[], str] | None = None) -> None:
    """Block until the server behind channel `ch` answers health SERVING (it is NOT_SERVING while it loads
    and calibrates). TimeoutError after `timeout_s`, or at once when `alive()` turns False; the message
    ends with `why()` (e.g. the server's log) when given."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    grpc.channel_ready_future(ch).result(timeout=timeout_s)
    health = health_pb2_grpc.HealthStub(ch)
    while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != health_pb2.HealthCheckResponse.SERVING:
        if time.monotonic() > deadline or (alive is not None and not alive()):
            raise TimeoutError("the server never became SERVING" + (f": {why()}" if why else ""))
        time.sleep(0.2)


@dataclass(frozen=True)
class GeneratedModel:
    onnx: bytes
    sha256: str
    arch_json: str
    arch_id: str
    device: str
    unit: str
    predicted_cost: float
    target_budget: float
    predicted_accuracy: float
    macs: int
    params: int
    timings_ms: dict[str, float]
    cached: bool
    notes: str = ""  # what the server did on request: verification, speed
    model_kind: str = "slice"  # or "specialised" (fine-tuned from its slice; see `specialised_from`)
    specialised_from: str = ""


def channel(address: str, tls_ca: Path | None = None, retries: bool = True):  # type: ignore[no-untyped-def]
    """A channel to a server or a load balancer; `retries=False` turns off gRPC's retries (also the
    transparent ones) and channel()'s own resends, so that every failed attempt reaches the caller."""
    import grpc

    options: list[tuple[str, int | str]] = [("grpc.max_receive_message_length", MAX_RECEIVE)]
    if retries:
        options += [("grpc.enable_retries", 1), ("grpc.service_config", SERVICE_CONFIG)]
    else:
        options += [("grpc.enable_retries", 0)]
    if tls_ca:
        ch = grpc.secure_channel(address, grpc.ssl_channel_credentials(tls_ca.read_bytes()), options=options)
    else:
        ch = grpc.insecure_channel(address, options=options)
    return grpc.intercept_channel(ch, _resend_after_headers()) if retries else ch


def _resend_after_headers():  # type: ignore[no-untyped-def]
    """A unary-unary interceptor that sends a call ended INTERNAL again (RESENDS_AFTER_HEADERS times at
    most, after a short random wait, with what is left of its deadline): the case gRPC's own retry
    policy cannot cover because reply headers had arrived."""
    import random
    from typing import NamedTuple

    import grpc

    class Details(NamedTuple):  # grpc.ClientCallDetails with a shorter timeout
        method: str
        timeout: float | None
        metadata: object
        credentials: object
        wait_for_ready: object
        compression: object

    class ResendAfterHeaders(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
            deadline = None if details.timeout is None else time.monotonic() + details.timeout
            for _ in range(RESENDS_AFTER_HEADERS):
                outcome = continuation(details, request)
                if outcome.code() != grpc.StatusCode.INTERNAL:
                    return outcome
                time.sleep(random.uniform(0, _RESEND_WAIT_S))
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return outcome
                    details = Details(details.method, left, details.metadata, details.credentials,
                                      details.wait_for_ready, details.compression)
            return continuation(details, request)

    return ResendAfterHeaders()


def request_remote(args: argparse.Namespace) -> GeneratedModel:
    import grpc

    from nag.v1 import generator_pb2 as pb
    from nag.v1 import generator_pb2_grpc as pb_grpc

    req = pb.GenerateForBudgetRequest(device=args.device or "", candidates=args.candidates or 0)
    if args.macs is not None:
        req.macs = args.macs
    elif args.budget is not None:
        req.cost = args.budget
    else:
        req.latency_ms = args.budget_ms
    if args.seed is not None:
        req.seed = args.seed
    if args.verify_latency:
        req.verify_latency = True
    if args.apply_speed:
        req.apply_speed = True
    cache = Path(args.model_cache) if args.model_cache else None
    if cache is not None and cache.is_dir():  # models held already are not sent again
        req.known_sha256.extend(sorted(p.stem for p in cache.glob("*.onnx") if len(p.stem) == 64))
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    with channel(args.server, args.tls_ca) as ch:
        stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
        try:
            r = stub.GenerateForBudget(req, timeout=args.timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise SystemExit(f"error: {exc.code().name}: {exc.details()}") from None
    t = r.timings
    onnx = r.onnx_model
    if cache is not None:
        held = cache / f"{r.onnx_sha256}.onnx"
        if r.model_omitted:
            onnx = held.read_bytes()
        else:  # renamed into place: a killed client never leaves half a model under its hash
            cache.mkdir(parents=True, exist_ok=True)
            partial = held.with_suffix(".part")
            partial.write_bytes(onnx)
            partial.replace(held)
    return GeneratedModel(onnx, r.onnx_sha256, r.architecture_json, r.architecture_id, r.device,
                          r.cost_unit, r.predicted_cost, r.target_budget, r.predicted_accuracy, r.macs, r.params,
                          {"sample": t.sample_ms, "choose": t.choose_ms, "slice": t.slice_ms,
                           "calibrate": t.calibrate_ms, "export": t.export_ms, "total": t.total_ms}, r.cached,
                          _notes(r), r.model_kind or "slice", r.specialised_from)


def _notes(r) -> str:  # type: ignore[no-untyped-def]
    notes = []
    if r.latency_verified:
        notes.append(f"measured {r.measured_latency_ms:.4g} ms on the device"
                     + (f" after {r.verification_steps} step(s) down the serving frontier" if r.verification_steps
                        else ""))
    if r.speed_applied:
        notes.append(f"targeted budget / {r.device_speed:.2f}, the server's measured speed")
    return "; ".join(notes)


def request_local(args: argparse.Namespace) -> GeneratedModel:
    """The server's path in-process: the same serving policy, so the same model bytes for the same request."""
    from nag.bundle.bundle import bundle_or_default, load_bundle
    from nag.policy.answer import AnswerOptions, ServingPolicy
    from nag.policy.request import resolve_request

    started = time.perf_counter()
    bundle = load_bundle(bundle_or_default(args.bundle))
    req = resolve_request(bundle, latency_ms=args.budget_ms, macs=args.macs, cost=args.budget, device=args.device,
                          candidates=args.candidates or 0, seed=args.seed)
    answer = ServingPolicy(bundle).answer(req, AnswerOptions())
    g, exported = answer.generated, answer.model
    timings = {k: 1e3 * v for k, v in answer.timings.items() if k != "total"}
    timings["total"] = 1e3 * (time.perf_counter() - started)
    return GeneratedModel(exported.onnx, exported.sha256, g.arch.to_json(), g.arch.arch_id, g.device, g.unit,
                          g.predicted_cost, g.target, g.predicted_accuracy, g.macs, g.params, timings, False, "",
                          exported.metadata.get("nag.model_kind", "slice"),
                          exported.metadata.get("nag.specialised_from", ""))


def run(args: argparse.Namespace) -> int:
    if sum(b is not None for b in (args.budget_ms, args.macs, args.budget)) != 1:
        print("error: give exactly one of --budget-ms, --macs and --budget", file=sys.stderr)
        return 2
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        print(f"error: --seed must lie in [0, 2**64 - 1], got {args.seed}", file=sys.stderr)
        return 2
    if args.candidates is not None and not 1 <= args.candidates <= MAX_CANDIDATES:
        print(f"error: --candidates must lie in [1, {MAX_CANDIDATES}], got {args.candidates}", file=sys.stderr)
        return 2
    if args.local and (args.verify_latency or args.apply_speed or args.model_cache):
        print("error: --verify-latency, --apply-speed and --model-cache are for a server; --local answers from the "
              "bundle alone", file=sys.stderr)
        return 2
    if args.seed is not None or args.candidates is not None:
        print("note: --seed and --candidates are deprecated and change nothing: the answer is a function of the "
              "bundle, device, budget and graph form", file=sys.stderr)
    model = request_local(args) if args.local else request_remote(args)
    if hashlib.sha256(model.onnx).hexdigest() != model.sha256:
        print("error: the model's bytes do not match its sha256", file=sys.stderr)
        return 1
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.onnx)
    print(f"architecture {model.arch_id}: {model.arch_json}")
    print(f"device {model.device}: predicted cost {model.predicted_cost:.4g} {model.unit} (target "
          f"{model.target_budget:.4g}: the budget less the latency margin), predicted accuracy "
          f"{model.predicted_accuracy:.2f}%, {model.macs / 1e6:.2f} MMACs, {model.params / 1e3:.1f}k params")
    print("timings (ms): " + json.dumps({k: round(v, 2) for k, v in model.timings_ms.items()})
          + (" (cached)" if model.cached else ""))
    if model.notes:
        print(model.notes)
    if model.model_kind == "specialised":
        print(f"specialised: fine-tuned from the {model.specialised_from}")
    print(f"wrote {out} ({len(model.onnx) / 1e3:.0f} kB, sha256 {model.sha256[:16]}...)")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    budget = p.add_argument_group("budget (one of)")
    budget.add_argument("--budget-ms", type=float, help="latency budget in ms on the device")
    budget.add_argument("--macs", type=float, help="MACs budget (the flops pseudo-device)")
    budget.add_argument("--budget", type=float, help="a budget in the device's own cost unit (any device)")
    p.add_argument("--device", help="device name (default: the server's default device)")
    p.add_argument("--candidates", type=int, help="deprecated: no effect (picks come from the serving frontier)")
    p.add_argument("--seed", type=int, help="deprecated: no effect (the same budget always gives the same model)")
    p.add_argument("-o", "--output", required=True, help="where to write the .onnx file")
    p.add_argument("--server", default="127.0.0.1:50051", help="server address, host:port (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=30.0, help="RPC deadline in seconds")
    p.add_argument("--token", help="bearer token")
    p.add_argument("--tls-ca", type=Path, help="CA certificate for a TLS server")
    p.add_argument("--local", action="store_true", help="run the same path in-process instead of over gRPC")
    p.add_argument("--verify-latency", action="store_true",
                   help="ask the server to measure the pick on the device first, stepping down while it runs over")
    p.add_argument("--apply-speed", action="store_true",
                   help="ask the server to target budget / its measured speed (one started with --calibrate-speed)")
    p.add_argument("--model-cache", help="a folder of models received before (<sha256>.onnx): the server does not "
                                         "send one of them again; new ones are added")
    p.add_argument("--bundle", help="bundle for --local (default: $NAG_BUNDLE, else a checkout's bundles/default)")
