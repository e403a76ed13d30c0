from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from nag.space import load_space
from nag.supernet import Supernet
from nag.supernet.io import save_supernet

REPO = Path(__file__).resolve().parents[1]


def _nag(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nag.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


@pytest.fixture(scope="module")
def supernet_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sn") / "supernet.pt"
    torch.manual_seed(0)
    save_supernet(path, Supernet(load_space()), torch.randint(0, 256, (250, 1, 28, 28), dtype=torch.uint8),
                  {"classes": [str(i) for i in range(10)]})
    return path


def test_export_child_writes_a_loadable_model(tmp_path: Path, supernet_file: Path) -> None:
    out = tmp_path / "m.onnx"
    proc = _nag("export-child", "--supernet", str(supernet_file), "--arch", "smallest", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and out.is_file()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert "nag.arch_json" in meta and "nag.classes" in meta


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--supernet", "missing.pt", "--arch", "smallest"], "does not exist"),
        (["--arch", '{"resolution": 13}'], "lacks the field"),
        (["--arch", "not json"], "not valid JSON"),
    ],
)
def test_export_child_errors_are_clear(tmp_path: Path, supernet_file: Path, args: list[str], message: str) -> None:
    full = ["export-child", "--supernet", str(supernet_file), "-o", str(tmp_path / "m.onnx"), *args]
    proc = _nag(*full)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
