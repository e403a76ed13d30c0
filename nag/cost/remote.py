"""Measurement agents: time models on another machine, over gRPC, the way this process times them locally.

An agent (`nag-agent`, the `agent/` distribution: ONNX Runtime, gRPC, protobuf and numpy, no torch) runs on
the device. `AgentClient` is a `ModelTimer`: `nag profile-device --agent HOST:PORT` and `measure_frontier
--agent` build and fit everything here and only time the models there, in the same interleaved rounds.
A server can verify a served model on the device with `AgentClient.measure_model`.

The agent's stubs (`nag_agent.v1`) are imported when a client first calls an agent, so that NAG runs without
the agent package installed.
"""

from __future__ import annotations

import argparse
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from nag.cost.device import DeviceError, DeviceProfile
from nag.cost.measure import LatencyMeasurement, ModelTiming, TimingContract

AGENT_TOKEN_ENV = "NAG_AGENT_TOKEN"
PIECE_BYTES = 1024 * 1024  # models travel in pieces of this size, well below gRPC's 4 MB message limit
MEASURE_TIMEOUT_S = 3600.0  # one chunk of a profile; a slow board with big models takes minutes
CALL_TIMEOUT_S = 10.0  # health and fingerprint
# Fingerprint fields that must not change while one profile is measured.
SAME_MACHINE_FIELDS = ("cpu_model", "machine", "onnxruntime_version")


class AgentError(DeviceError):
    """A measurement agent is unreachable, refused a call, or cannot honour a device's contract. `code` is the
    gRPC status name of a refused call (UNAVAILABLE, RESOURCE_EXHAUSTED: busy, ...), else None."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


def parse_address(text: str) -> str:
    """`HOST:PORT` (an IPv6 host in brackets), checked; an error says what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise AgentError(f"agent address {text!r} must be HOST:PORT with a port in [1, 65535]")
    return f"{host}:{int(port)}"


def read_token(token_file: str | Path | None) -> str:
    """The agent token from `token_file`, else from $NAG_AGENT_TOKEN."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise AgentError(f"cannot read the agent token file {token_file}: {exc.strerror}") from None
        if not token:
            raise AgentError(f"the agent token file {token_file} is empty")
        return token
    token = os.environ.get(AGENT_TOKEN_ENV, "").strip()
    if not token:
        raise AgentError(f"an agent needs its token: --agent-token-file FILE (or set {AGENT_TOKEN_ENV})")
    return token


@dataclass(frozen=True)
class AgentMeasurement:
    """One Measure call's answer: a timing per model, in order, with its noise (relative standard error of the
    median, from the rounds)."""

    timings: list[ModelTiming]
    noise: list[float]
    runtime_version: str
    waited_s: float  # in the agent's queue
    measured_s: float


def agent_contract_problems(profile: DeviceProfile, fingerprint: dict[str, Any]) -> list[str]:
    """Why the agent with `fingerprint` cannot time models under `profile`'s contract (empty: it can): it
    lacks the execution provider, runs another ONNX Runtime major.minor than the profile was measured with,
    or is another kind of machine than the one the profile was measured on."""
    problems = []
    if profile.kind != "onnxruntime":
        problems.append(f"device {profile.name!r} is of kind {profile.kind!r}; an agent times ONNX Runtime only")
    providers = fingerprint.get("providers", [])
    if profile.provider not in providers:
        problems.append(f"the agent's ONNX Runtime has no {profile.provider} (available: {providers})")
    version = str(fingerprint.get("onnxruntime_version", ""))
    if profile.runtime_version and profile.runtime_version.split(".")[:2] != version.split(".")[:2]:
        problems.append(f"device {profile.name!r} was measured with ONNX Runtime {profile.runtime_version}; the "
                        f"agent runs {version}")
    for key in ("cpu_model", "machine"):
        then, now = profile.measured_on.get(key), fingerprint.get(key)
        if then is not None and then != now:
            problems.append(f"device {profile.name!r} was measured on {key} {then!r}; the agent runs on {now!r}")
    return problems


class AgentClient:
    """A connection to one measurement agent. It is a `ModelTimer` (`check_runnable`, `time_models`)."""

    def __init__(self, address: str, token: str, *, root_certificates: bytes | None = None,
                 timeout_s: float = MEASURE_TIMEOUT_S):
        self.address = parse_address(address)
        self.where = f"agent {self.address}"
        self.timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {token}"),)
        options = [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 20_000)]
        self._channel = (grpc.secure_channel(self.address, grpc.ssl_channel_credentials(root_certificates), options)
                         if root_certificates is not None else grpc.insecure_channel(self.address, options))
        self._stub: Any = None
        self._pb: Any = None
        self._fingerprint: dict[str, Any] | None = None

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _api(self) -> tuple[Any, Any]:
        if self._stub is None:
            try:
                from nag_agent.v1 import agent_pb2, agent_pb2_grpc
            except ImportError:
                raise AgentError("talking to a measurement agent needs the nag-agent package here: pip install "
                                 "./agent (from a NAG checkout)") from None
            self._pb, self._stub = agent_pb2, agent_pb2_grpc.MeasurementAgentStub(self._channel)
        return self._pb, self._stub

    def _error(self, exc: grpc.RpcError) -> AgentError:
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            return AgentError(f"{self.where} is unreachable ({details}); is nag-agent running there?", code.name)
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return AgentError(f"{self.where} refused the token: {details}", code.name)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return AgentError(f"{self.where} did not answer in time ({details})", code.name)
        return AgentError(f"{self.where} refused the call ({code.name}): {details}", code.name)

    def health(self) -> dict[str, Any]:
        pb, stub = self._api()
        try:
            r = stub.Health(pb.HealthRequest(), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        return {"serving": r.serving, "measuring": r.measuring, "waiting": r.waiting, "max_waiting": r.max_waiting}

    def fingerprint(self) -> dict[str, Any]:
        """CPU, cores, OS, memory, ONNX Runtime version and providers of the agent's machine (asked once)."""
        if self._fingerprint is None:
            pb, stub = self._api()
            try:
                r = stub.Fingerprint(pb.FingerprintRequest(), metadata=self._metadata, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as exc:
                raise self._error(exc) from None
            self._fingerprint = {
                "agent_version": r.agent_version, "cpu_model": r.cpu_model, "logical_cores": r.logical_cores,
                "usable_cores": r.usable_cores, "machine": r.machine, "os": r.os, "python_version": r.python_version,
                "onnxruntime_version": r.onnxruntime_version, "providers": list(r.providers),
                "cpu_governor": r.cpu_governor, "memory_bytes": r.memory_bytes,
            }
        return dict(self._fingerprint)

    def _requests(self, models: Sequence[bytes], contract: TimingContract, seed: int) -> Iterator[Any]:
        pb, _ = self._api()
        yield pb.MeasureRequest(contract=pb.Contract(
            execution_provider=contract.provider, intra_op_threads=contract.intra_op_threads,
            inter_op_threads=contract.inter_op_threads, graph_optimization_level=contract.graph_optimization_level,
            batch_size=contract.batch_size, input_shape=list(contract.input_shape), warmup_runs=contract.warmup_runs,
            timed_runs=contract.timed_runs, rounds=contract.rounds, rewarm_runs=contract.rewarm_runs,
            max_noise=contract.max_noise, seed=seed))
        for index, model in enumerate(models):
            for start in range(0, len(model), PIECE_BYTES):
                yield pb.MeasureRequest(model=index, data=model[start:start + PIECE_BYTES])

    def measure(self, models: Sequence[bytes], contract: TimingContract, seed: int = 0,
                timeout_s: float | None = None) -> AgentMeasurement:
        """Time `models` (serialised ONNX) on the agent under `contract`, in interleaved rounds; the call's
        deadline is `timeout_s` (default: the client's), queueing included."""
        if not models:
            raise AgentError("nothing to measure: no models")
        empty = [i for i, m in enumerate(models) if not m]
        if empty:
            raise AgentError(f"model {empty[0]} is empty")
        _, stub = self._api()
        try:
            r = stub.Measure(self._requests(models, contract, seed), metadata=self._metadata,
                             timeout=self.timeout_s if timeout_s is None else timeout_s)
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        if len(r.timings) != len(models):
            raise AgentError(f"{self.where} answered {len(r.timings)} timings for {len(models)} models")
        timings = [ModelTiming(t.median_ms, t.p10_ms, t.p90_ms, tuple(t.round_medians_ms), t.runs, t.stable)
                   for t in r.timings]
        return AgentMeasurement(timings, [t.noise for t in r.timings], r.onnxruntime_version, r.waited_seconds,
                                r.measured_seconds)

    def measure_model(self, model: bytes, profile: DeviceProfile, input_shape: Sequence[int],
                      timeout_s: float | None = None) -> float:
        """Median latency in ms of one served model on the agent under `profile`'s contract: the same quick
        check (`TimingContract.for_check`: 10 warm-up runs, the median of 40) as a local
        `DeviceKind.measure_model`. Raises `AgentError` (with `code`) when the agent is unreachable, busy or
        refuses; thread-safe."""
        return self.measure([model], TimingContract.for_check(profile, input_shape),
                            timeout_s=timeout_s).timings[0].median

    # ModelTimer
    def check_runnable(self, profile: DeviceProfile) -> None:
        problems = agent_contract_problems(profile, self.fingerprint())
        if problems:
            raise AgentError(f"{self.where} cannot measure device {profile.name!r}: " + "; ".join(problems))

    def time_models(self, models: Sequence[bytes], contract: TimingContract, rng: random.Random
                    ) -> list[ModelTiming]:
        return self.measure(models, contract, seed=rng.getrandbits(63)).timings

    def prepare_profiling(self, profile: DeviceProfile, done: Sequence[LatencyMeasurement], path: Path
                          ) -> DeviceProfile:
        """The profile to record before profiling through this agent resumes with `done` (read from `path`): it
        records the agent's fingerprint and ONNX Runtime version. Measurements taken elsewhere (on this machine,
        or on an agent of another CPU or runtime) are refused rather than mixed."""
        now = self.fingerprint()
        if done and not profile.measured_remotely:
            raise AgentError(f"{path} was measured on the profiling machine, not through an agent: delete it to "
                             f"profile device {profile.name!r} through {self.where}")
        if done:
            changed = [k for k in SAME_MACHINE_FIELDS if profile.measured_on.get(k) != now.get(k)]
            if changed:
                then = {k: profile.measured_on.get(k) for k in changed}
                raise AgentError(f"{path} was measured on {then}; {self.where} reports "
                                 f"{ {k: now.get(k) for k in changed} }: delete it to re-profile the device there")
        return replace(profile, runtime_version=now["onnxruntime_version"], measured_on=now)


def connect_agent(address: str, token_file: str | Path | None = None, tls_ca: str | Path | None = None,
                  timeout_s: float = MEASURE_TIMEOUT_S) -> AgentClient:
    """A client for the agent at `address` (`HOST:PORT`), with the token of `token_file` (or $NAG_AGENT_TOKEN)
    and, given `tls_ca` (a PEM root certificate), over TLS."""
    token = read_token(token_file)
    roots = None
    if tls_ca is not None:
        try:
            roots = Path(tls_ca).read_bytes()
        except OSError as exc:
            raise AgentError(f"cannot read the agent CA certificate {tls_ca}: {exc.strerror}") from None
    return AgentClient(address, token, root_certificates=roots, timeout_s=timeout_s)


def add_agent_arguments(p: argparse.ArgumentParser, what: str) -> None:
    """The command-line flags that send `what` to a measurement agent."""
    p.add_argument("--agent", metavar="HOST:PORT", help=f"{what} on the measurement agent (nag-agent) at HOST:PORT")
    p.add_argument("--agent-token-file", type=Path, help=f"the agent's token (or set {AGENT_TOKEN_ENV})")
    p.add_argument("--agent-tls-ca", type=Path, help="PEM root certificate of an agent that serves TLS")


def agent_from_args(args: argparse.Namespace) -> AgentClient | None:
    """A client for `--agent`, or None without the flag; the token and TLS flags need `--agent`."""
    if args.agent is None:
        if args.agent_token_file is not None or args.agent_tls_ca is not None:
            raise AgentError("--agent-token-file and --agent-tls-ca need --agent HOST:PORT")
        return None
    return connect_agent(args.agent, args.agent_token_file, args.agent_tls_ca)
