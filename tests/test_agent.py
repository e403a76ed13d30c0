"""The measurement agent (`nag-agent`, agent/) and NAG's side of it (`nag.cost.remote`), over real gRPC.

Every agent here is a real `python -m nag_agent` subprocess on loopback; the models are real children of the
default space; profiling runs the real `nag profile-device --agent` command.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from nag.cost import packaged_profile
from nag.cost.device import DeviceError, DeviceProfile
from nag.cost.measure import LOCAL, TimingContract, latency_model_bytes
from nag.cost.remote import AgentClient, AgentError, agent_contract_problems
from nag.cost.store import MEASUREMENTS_FILE, PROFILE_FILE, device_dir, load_device, read_measurements
from nag.space import SearchSpace, biggest, sample_uniform, smallest

REPO = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-agent-token"
SAMPLE = (1, 28, 28)
QUICK = {"name": "board", "kind": "onnxruntime", "warmup_runs": 2, "timed_runs": 3, "rounds": 4, "max_noise": 1.0,
         "max_drift": 10.0}


class Agent:
    """A `python -m nag_agent` subprocess; its port is read from the line it prints when listening."""

    def __init__(self, token_file: Path, *extra: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "nag_agent", "--port", "0", "--token-file",
                                      str(token_file), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert found, f"the agent did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}"
        self.address = f"127.0.0.1:{found.group(1)}"

    def client(self, token: str = TOKEN) -> AgentClient:
        return AgentClient(self.address, token)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("agent") / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
def agent(token_file: Path) -> Iterator[Agent]:
    running = Agent(token_file, "--max-model-mb", "2", "--max-waiting", "0")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def models(space: SearchSpace) -> list[bytes]:
    """Smallest, a random and the biggest child (0.2, 0.8 and 3.4 MB)."""
    return [latency_model_bytes(a, space) for a in (smallest(space), sample_uniform(space, random.Random(0)),
                                                     biggest(space))]


def contract(level: str = "ORT_ENABLE_ALL", threads: int = 1, rounds: int = 6) -> TimingContract:
    return TimingContract("CPUExecutionProvider", threads, level, 1, SAMPLE, warmup_runs=5, timed_runs=5,
                          rounds=rounds, rewarm_runs=2, max_noise=0.0)


def test_health_is_open_but_everything_else_needs_the_token(agent: Agent, models: list[bytes]) -> None:
    with agent.client("wrong") as wrong:
        assert wrong.health()["serving"]
        with pytest.raises(AgentError, match="refused the token: missing or wrong token"):
            wrong.fingerprint()
        with pytest.raises(AgentError, match="refused the token"):
            wrong.measure(models[:1], contract())
    with grpc.insecure_channel(agent.address) as channel:  # no metadata at all
        from nag_agent.v1 import agent_pb2, agent_pb2_grpc

        with pytest.raises(grpc.RpcError) as caught:
            agent_pb2_grpc.MeasurementAgentStub(channel).Fingerprint(agent_pb2.FingerprintRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with agent.client() as right:
        facts = right.fingerprint()
    import onnxruntime as ort

    assert facts["onnxruntime_version"] == ort.__version__
    assert "CPUExecutionProvider" in facts["providers"] and facts["logical_cores"] >= 1 and facts["cpu_model"]


def test_bad_models_and_contracts_are_refused_with_the_reason(agent: Agent, models: list[bytes]) -> None:
    with agent.client() as client:
        with pytest.raises(AgentError, match=r"\(INVALID_ARGUMENT\): model 2 is larger than this agent's limit of "
                                             r"2\.0 MB \(--max-model-mb\)"):
            client.measure(models, contract())  # the biggest child is 3.4 MB
        with pytest.raises(AgentError, match=r"\(INVALID_ARGUMENT\): model 1 is not an ONNX model that ONNX "
                                             r"Runtime can load"):
            client.measure([models[0], b"GIF89a, not a model"], contract())
        with pytest.raises(AgentError, match=r"\(INVALID_ARGUMENT\): invalid contract: graph_optimization_level "
                                             r"'ORT_FAST' must be one of"):
            client.measure(models[:1], dataclasses.replace(contract(), graph_optimization_level="ORT_FAST"))
        with pytest.raises(AgentError, match=r"\(FAILED_PRECONDITION\): this agent's ONNX Runtime has no "
                                             r"TensorrtExecutionProvider"):
            client.measure(models[:1], dataclasses.replace(contract(), provider="TensorrtExecutionProvider"))
        with pytest.raises(AgentError, match=r"model 0 does not run on a float32 input of shape \[1, 3, 28, 28\]"):
            client.measure(models[:1], dataclasses.replace(contract(), input_shape=(3, 28, 28)))
        # One gRPC message over the agent's 4 MB limit is refused by gRPC itself.
        from nag_agent.v1 import agent_pb2

        pieces = iter([agent_pb2.MeasureRequest(contract=agent_pb2.Contract()),
                       agent_pb2.MeasureRequest(model=0, data=b"x" * (5 << 20))])
        with pytest.raises(grpc.RpcError) as caught:
            client._api()[1].Measure(pieces, metadata=client._metadata, timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The agent still measures afterwards.
        assert client.measure(models[:1], contract(rounds=2)).timings[0].median > 0


def test_a_second_measurement_beyond_the_queue_is_refused(agent: Agent, models: list[bytes]) -> None:
    """This agent lets nobody wait (--max-waiting 0): a call while one measures gets RESOURCE_EXHAUSTED."""
    with agent.client() as client:
        long = threading.Thread(target=client.measure, args=(models[:2], contract(rounds=400)))
        long.start()
        deadline = time.monotonic() + 30
        while client.health()["measuring"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        busy_message = r"\(RESOURCE_EXHAUSTED\): the agent is busy: 1 measurement running"
        with pytest.raises(AgentError, match=busy_message) as busy:
            client.measure_model(models[0], packaged_profile("cpu"), SAMPLE, timeout_s=10)
        assert busy.value.code == "RESOURCE_EXHAUSTED"  # what a server tells apart from UNAVAILABLE
        long.join(timeout=120)
        assert client.health() == {"serving": True, "measuring": 0, "waiting": 0, "max_waiting": 0}


def test_the_agent_times_models_as_nag_does_locally(agent: Agent, models: list[bytes]) -> None:
    """Same contract, same models: the agent's medians and the local ones agree, model by model. Other work on
    a shared machine can slow either side for a while, so each side is measured three times, alternating, and
    its fastest median is compared."""
    small, cpu = models[:2], packaged_profile("cpu")
    remote_runs, local_runs, checks = [], [], []
    with agent.client() as client:
        for seed in range(3):
            remote = client.measure(small, contract(rounds=10), seed=seed)
            remote_runs.append([t.median for t in remote.timings])
            local_runs.append([t.median for t in LOCAL.time_models(small, contract(rounds=10), random.Random(seed))])
            # The served-model check a server would call: 10 warm-up runs, the median of 40.
            checks.append(client.measure_model(small[0], cpu, SAMPLE))
    remote_best, local_best = np.min(remote_runs, axis=0), np.min(local_runs, axis=0)
    assert np.all((remote_best / local_best > 0.67) & (remote_best / local_best < 1.5)), (remote_runs, local_runs)
    assert remote_best[1] > 1.5 * remote_best[0]  # the random child costs more than the smallest
    assert 0.5 < min(checks) / local_best[0] < 2.0, (checks, local_runs)
    t = remote.timings[0]
    assert len(t.round_medians) == 10 and t.runs == 50 and t.p10 <= t.median <= t.p90
    assert remote.runtime_version and all(n >= 0 for n in remote.noise)


def test_two_agents_with_different_contracts_give_different_latencies(token_file: Path, models: list[bytes]) -> None:
    """Two agents, each timing the same children under its device's contract: without graph optimisation
    (ORT_DISABLE_ALL) the children run slower than with every optimisation (ORT_ENABLE_ALL)."""
    first, second = Agent(token_file), Agent(token_file)
    try:
        with first.client() as a, second.client() as b:
            optimised = a.measure(models[:2], contract("ORT_ENABLE_ALL"))
            plain = b.measure(models[:2], contract("ORT_DISABLE_ALL"))
    finally:
        first.stop()
        second.stop()
    ratios = [p.median / o.median for p, o in zip(plain.timings, optimised.timings, strict=True)]
    assert min(ratios) > 1.2, ratios


def test_a_device_profiled_through_an_agent_resumes_after_the_agent_is_killed(token_file: Path, tmp_path: Path,
                                                                             space: SearchSpace) -> None:
    """`nag profile-device --agent`: the agent is SIGKILLed after the first chunk is saved; the command fails
    with one line, keeps the chunk, and a rerun against a new agent finishes the profile without re-measuring
    it. The profile records the agent's fingerprint and runtime, and the predictor is fitted here."""
    profile_file = tmp_path / "board.json"
    profile_file.write_text(json.dumps(QUICK))
    bundle = tmp_path / "bundle"
    saved = device_dir(bundle, "board") / MEASUREMENTS_FILE

    def profile(agent: Agent) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "nag.cli", "profile-device", "--device", "board",
                                 "--profile-file", str(profile_file), "--bundle", str(bundle), "--archs", "48",
                                 "--agent", agent.address, "--agent-token-file", str(token_file)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})

    first = Agent(token_file)
    run = profile(first)
    deadline = time.monotonic() + 120
    while not saved.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.stop(signal.SIGKILL)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 2, (out, err)
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: agent {first.address} is unreachable \(.*\); is nag-agent running there\?\. The "
                        rf"40 measurements written to .* are kept: run again to resume", last), last
    assert "Traceback" not in err
    kept = read_measurements(saved)
    assert len(kept) == 40

    second = Agent(token_file)
    try:
        run = profile(second)
        out, err = run.communicate(timeout=240)
    finally:
        second.stop()
    assert run.returncode == 0, err
    assert f"48 architectures measured on agent {second.address}" in out
    assert "40 already measured" in err
    done = read_measurements(saved)
    assert done[:40] == kept and len(done) == 48

    recorded = DeviceProfile.load(device_dir(bundle, "board") / PROFILE_FILE)
    import onnxruntime as ort

    assert recorded.runtime_version == recorded.measured_on["onnxruntime_version"] == ort.__version__
    assert recorded.measured_on["cpu_model"] and "CPUExecutionProvider" in recorded.measured_on["providers"]
    # A device measured elsewhere is not this machine's: the server neither verifies nor calibrates it here.
    assert not recorded.device_kind.runs_here(recorded)
    assert "measured_on" in recorded.contract()
    assert agent_contract_problems(recorded, recorded.measured_on) == []
    assert agent_contract_problems(recorded, {**recorded.measured_on, "cpu_model": "Cortex-A76"}) == [
        f"device 'board' was measured on cpu_model {recorded.measured_on['cpu_model']!r}; the agent runs on "
        f"'Cortex-A76'"]
    # The predictor is fitted here, on exactly the agent's measurements. How well it predicts is a timing
    # question, measured by benchmarks/agent_profile.py (+-10% on 400 children with the full rounds); on a shared
    # 2-core CI machine 4 quick rounds per child are too noisy to assert it.
    predictor = json.loads((device_dir(bundle, "board") / "predictor.json").read_text())
    metrics = predictor["metrics"]
    assert predictor["device"] == "board"
    fitted = done if metrics["fit_on_unstable"] else [m for m in done if m.stable]
    assert metrics["train_size"] == len(fitted) == len(done) - metrics["unstable_dropped"]
    assert metrics["holdout"]["n"] == round(len(fitted) * 0.2)
    corrected = [m.corrected for m in fitted]
    assert predictor["latency_range"] == pytest.approx([min(corrected), max(corrected)])
    load_device(bundle, "board", space)


def test_a_device_measured_through_an_agent_is_not_resumed_or_measured_locally(tmp_path: Path,
                                                                              space: SearchSpace) -> None:
    from nag.cost.profiling import profile_device

    folder = device_dir(tmp_path, "board")
    remote = dataclasses.replace(packaged_profile("cpu"), name="board", runtime_version="1.32.0",
                                 measured_on={"cpu_model": "Cortex-A76", "machine": "aarch64", "os": "Linux"})
    errors, warnings = remote.device_kind.contract_problems(remote)
    assert not errors and "measured through a measurement agent on Cortex-A76 (aarch64, Linux)" in warnings[0]
    folder.mkdir(parents=True)
    (folder / PROFILE_FILE).write_text(remote.to_json())
    (folder / MEASUREMENTS_FILE).write_text(json.dumps({
        "arch_id": "x", "arch_json": smallest(space).to_json(), "macs": 1, "median": 1.0, "p10": 1.0, "p90": 1.0,
        "round_medians": [1.0], "runs": 1, "stable": True}) + "\n")
    with pytest.raises(DeviceError, match=r"was measured through a measurement agent on Cortex-A76 .*: resume with "
                                          r"--agent"):
        profile_device(tmp_path, space, remote, num_archs=4, progress=False)


def test_server_agent_flags_are_checked_in_one_line() -> None:
    from nag.errors import NagError
    from nag.server.app import parse_agents

    assert parse_agents(["board=10.0.0.7:50061", "phone=[::1]:7"]) == {"board": "10.0.0.7:50061", "phone": "[::1]:7"}
    for bad, message in [("board", "must be NAME=HOST:PORT"), ("=h:1", "must be NAME=HOST:PORT"),
                         ("board=host", "must be HOST:PORT with a port in"),
                         ("board=h:70000", "port in \\[1, 65535\\]")]:
        with pytest.raises(NagError, match=message):
            parse_agents([bad])
    with pytest.raises(NagError, match="names device 'board' twice"):
        parse_agents(["board=h:1", "board=h:2"])


def test_the_server_verifies_a_pick_on_the_devices_agent(token_file: Path) -> None:
    """`nag serve --agent cpu=HOST:PORT`: verification measures on the agent (with the same step-down rule); an
    agent that is gone makes a verified request UNAVAILABLE while unverified ones are still answered."""
    from nag.client import channel
    from nag.server.app import RunningServer, ServerOptions
    from nag.v1 import generator_pb2 as pb
    from nag.v1 import generator_pb2_grpc as pb_grpc

    board = Agent(token_file)
    server = RunningServer(ServerOptions(bundle=REPO / "bundles" / "default", port=0, metrics_port=-1,
                                         agents={"cpu": board.address}, agent_token_file=token_file))
    try:
        server.load()
        with channel(f"127.0.0.1:{server.port}", retries=False) as ch:
            stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
            plain = stub.GenerateForBudget(pb.GenerateForBudgetRequest(latency_ms=0.3), timeout=60)
            verified = stub.GenerateForBudget(pb.GenerateForBudgetRequest(latency_ms=0.3, verify_latency=True),
                                              timeout=120)
            assert not plain.latency_verified and verified.latency_verified and verified.measured_latency_ms > 0
            assert verified.frontier_member == plain.frontier_member - verified.verification_steps
            board.stop(signal.SIGKILL)
            again = stub.GenerateForBudget(pb.GenerateForBudgetRequest(latency_ms=0.25), timeout=60)
            assert again.architecture_id
            with pytest.raises(grpc.RpcError) as info:
                stub.GenerateForBudget(pb.GenerateForBudgetRequest(latency_ms=0.25, verify_latency=True,
                                                                   graph_form=pb.GRAPH_FORM_STANDARD), timeout=60)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "agent" in info.value.details()
    finally:
        server.stop(0, drain=0)
        board.stop()


def test_an_agent_serving_tls_is_reached_over_tls_only(token_file: Path, tmp_path: Path,
                                                        models: list[bytes]) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    board = Agent(token_file, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        address = board.address.replace("127.0.0.1", "localhost")
        with AgentClient(address, TOKEN, root_certificates=cert.read_bytes()) as secure:
            assert secure.fingerprint()["onnxruntime_version"]
            assert secure.measure(models[:1], contract(rounds=2)).timings[0].median > 0
        with AgentClient(board.address, TOKEN) as plain, pytest.raises(AgentError) as info:
            plain.fingerprint()  # a plaintext client cannot talk to it
        assert info.value.code == "UNAVAILABLE"
    finally:
        board.stop()
