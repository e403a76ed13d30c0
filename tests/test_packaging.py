"""Packaging: the wheel and the sdist built from the source tree, and the wheel installed outside the checkout.

The builds use a copy of the working tree's files that git tracks or would track (`git ls-files -co
--exclude-standard`): what a fresh clone has, plus uncommitted work, never the git-ignored generated stubs
(`nag/v1/`), so the build hook in setup.py must generate them. They run without build isolation (the
running environment has setuptools>=77 and grpcio-tools: the `dev` extra), so no download is needed.

The installed wheel gets a fresh venv outside the checkout. Its dependencies (torch alone is a large
download) come from the running environment through a `.pth` file that only appends that environment's
site-packages to sys.path: its own .pth files (the editable install's import hook among them) are not
run, so `nag` is imported from the fresh venv, which the test checks. NAG_PACKAGING_FULL_INSTALL=1
installs the wheel with its dependencies from the package index instead (minutes).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VERSION = "0.1.0"
DIST_INFO = f"nag-{VERSION}.dist-info/"
STUBS = ["nag/v1/__init__.py", "nag/v1/generator_pb2.py", "nag/v1/generator_pb2_grpc.py", "nag/v1/generator_pb2.pyi"]
DATA = ["nag/space/default_space.json", "nag/cost/profiles/cpu.json", "nag/cost/profiles/flops.json"]
# Not needed to build the package; bundles/ is 7+ MB.
SKIP_IN_COPY = ("bundles/",)

CLIENT = """
import hashlib, json, sys
import grpc
import nag
from nag.v1 import generator_pb2 as pb, generator_pb2_grpc as pb_grpc

with grpc.insecure_channel(sys.argv[1], options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
    grpc.channel_ready_future(ch).result(timeout=30)
    r = pb_grpc.ArchitectureGeneratorServiceStub(ch).GenerateForBudget(
        pb.GenerateForBudgetRequest(latency_ms=0.3, seed=0), timeout=120)
print(json.dumps({"nag": nag.__file__, "stubs": pb.__file__, "onnx_bytes": len(r.onnx_model),
                  "sha256_ok": hashlib.sha256(r.onnx_model).hexdigest() == r.onnx_sha256,
                  "architecture_id": r.architecture_id, "device": r.device, "unit": r.cost_unit,
                  "predicted_cost": r.predicted_cost, "target_budget": r.target_budget,
                  "measured_latency_ms": r.measured_latency_ms, "latency_verified": r.latency_verified}))
"""


def _clean_env() -> dict[str, str]:
    """The environment for the fresh venv's processes: nothing that points Python at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 120, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def _copy_tree(dst: Path) -> None:
    """The files a clone of the working tree would have (tracked, or untracked and not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in listed:
        src = ROOT / name
        if not name or name.startswith(SKIP_IN_COPY) or not src.is_file():  # deleted but still in the index
            continue
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / name)


def _build_wheel(source: Path, out: Path) -> Path:
    """`pip wheel` of a source tree or an sdist, without build isolation."""
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
          str(source)], cwd=out.parent)
    (wheel,) = out.glob("nag-*.whl")
    return wheel


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    _copy_tree(src)
    assert not (src / "nag" / "v1").exists(), "the generated stubs must not be in the tree git sees"
    wheel = _build_wheel(src, tmp / "wheel")
    _run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
          "print(b.build_sdist(sys.argv[1]))", str(tmp / "sdist")], cwd=src)
    (sdist,) = (tmp / "sdist").glob("nag-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist, "wheel_from_sdist": _build_wheel(sdist, tmp / "wheel_from_sdist")}


def _wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def test_wheel_holds_only_the_package_the_stubs_the_data_and_the_license(dists: dict[str, Path]) -> None:
    names = _wheel_names(dists["wheel"])
    strays = [n for n in names if not (n.startswith(("nag/", DIST_INFO)))]
    assert not strays, f"outside nag/ and its dist-info: {strays}"
    for required in [*STUBS, *DATA, "nag/cli.py", "nag/server/app.py", "nag/pipeline/train_supernet.py",
                     f"{DIST_INFO}licenses/LICENSE", f"{DIST_INFO}entry_points.txt"]:
        assert required in names, required
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    with zipfile.ZipFile(dists["wheel"]) as z:
        meta = z.read(f"{DIST_INFO}METADATA").decode()
        assert z.read(f"{DIST_INFO}licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
        assert "Apache License" in z.read(f"{DIST_INFO}licenses/LICENSE").decode()
        assert "nag = nag.cli:main" in z.read(f"{DIST_INFO}entry_points.txt").decode()
    assert "License-Expression: Apache-2.0" in meta
    # Stub generation is a build-time job: grpcio-tools is in the dev extra only.
    tools = [line for line in meta.splitlines() if line.startswith("Requires-Dist: grpcio-tools")]
    assert tools and all('extra == "dev"' in line for line in tools), tools


def test_sdist_holds_the_proto_and_the_license_but_no_generated_stubs(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for required in ["proto/nag/v1/generator.proto", "LICENSE", "README.md", "pyproject.toml", "setup.py",
                     "nag/cli.py", *DATA]:
        assert required in names, required
    assert not [n for n in names if n.startswith("nag/v1")], "stubs are generated at build time, not shipped"


def test_wheel_built_from_the_sdist_matches_the_one_built_from_the_tree(dists: dict[str, Path]) -> None:
    from_tree = set(_wheel_names(dists["wheel"]))
    from_sdist = set(_wheel_names(dists["wheel_from_sdist"]))
    assert set(STUBS) <= from_sdist
    assert from_sdist == from_tree


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_installed_wheel_serves_a_model_from_outside_the_checkout(
        dists: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("installed")
    venv, work = tmp / "venv", tmp / "work"
    work.mkdir()
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    python, nag = venv / "bin" / "python", venv / "bin" / "nag"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=work).strip())
    before = set(os.listdir(site))
    full = os.environ.get("NAG_PACKAGING_FULL_INSTALL") == "1"
    if full:
        _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "torch==2.13.0"], cwd=work,
             timeout=1200)
        _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", str(dists["wheel"])],
             cwd=work, timeout=1200)
    else:
        _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
              str(dists["wheel"])], cwd=work)
        # Plain directory lines: appended to sys.path after the venv's own site-packages, their .pth files
        # (the editable install's finder) not run.
        deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
        (site / "zz_nag_test_deps.pth").write_text("".join(f"{d}\n" for d in deps))
        before.add("zz_nag_test_deps.pth")
        added = set(os.listdir(site)) - before
        assert added == {"nag", f"nag-{VERSION}.dist-info"}, added

    env = _clean_env()
    assert _run([str(nag), "--version"], cwd=work, env=env).strip() == f"nag {VERSION}"
    where = json.loads(_run([str(python), "-c", "import json, nag, nag.v1.generator_pb2 as pb, importlib.util as u; "
                             "print(json.dumps([nag.__file__, pb.__file__, u.find_spec('grpc_tools') is None]))"],
                            cwd=work, env=env))
    assert all(Path(p).is_relative_to(site) for p in where[:2]), where
    if full:
        assert where[2], "grpcio-tools is a build requirement, not a runtime dependency"

    port = _free_port()
    server = subprocess.Popen([str(nag), "serve", "--bundle", str(ROOT / "bundles" / "default"), "--port",
                               str(port), "--metrics-port", "-1", "--grace", "5"],
                              cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    serving = threading.Event()

    def read() -> None:
        assert server.stdout is not None
        for line in server.stdout:
            lines.append(line)
            if line.startswith("serving on"):
                serving.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while not serving.wait(0.2):
            assert server.poll() is None, f"nag serve exited {server.returncode}:\n{''.join(lines)}"
            assert time.monotonic() < deadline, f"nag serve not serving after 90 s:\n{''.join(lines)}"
        reply = json.loads(_run([str(python), "-c", CLIENT, f"127.0.0.1:{port}"], cwd=work, env=env))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
        reader.join(timeout=5)
    assert code == 0, "".join(lines)
    assert Path(reply["nag"]).is_relative_to(site) and Path(reply["stubs"]).is_relative_to(site), reply
    assert reply["sha256_ok"] and reply["onnx_bytes"] > 1000, reply
    assert reply["device"] == "cpu" and reply["unit"] == "ms", reply
    # Predicted at the profile's speed, for a target that the server's speed calibration scales with this machine.
    assert 0 < reply["predicted_cost"] <= reply["target_budget"], reply
    assert not reply["latency_verified"] or 0 < reply["measured_latency_ms"] <= 0.3, reply
