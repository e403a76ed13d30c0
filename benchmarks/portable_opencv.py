"""OpenCV DNN's side of `benchmarks.portable_graphs` (part (a)): each OpenCV installation runs the models in
a subprocess of its own (`python -m benchmarks.portable_graphs --opencv-worker DIR`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

OPENCV_BATCH = 500


def opencv_worker(folder: Path) -> None:
    """Runs every `*.onnx` of `folder` on `images.npy` with OpenCV DNN; writes `<name>.npy` logits or
    `<name>.error`, and `version.txt`."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    (folder / "version.txt").write_text(cv2.__version__)
    images = np.load(folder / "images.npy")
    for path in sorted(folder.glob("*.onnx")):
        try:
            net = cv2.dnn.readNetFromONNX(str(path))
            out = []
            for i in range(0, len(images), OPENCV_BATCH):
                net.setInput(images[i : i + OPENCV_BATCH])
                out.append(np.array(net.forward()))
            np.save(folder / f"{path.stem}.npy", np.concatenate(out))
        except cv2.error as exc:
            (folder / f"{path.stem}.error").write_text(_error_summary(str(exc)))


def _error_summary(message: str) -> str:
    """cv2.error's nested, multi-line message on one line, without source paths and function names."""
    text = " ".join(ln.lstrip("> ").strip() for ln in message.splitlines() if ln.lstrip("> ").strip())
    text = re.sub(r" in function '[^']*'", "", re.sub(r"\S+\.(cpp|hpp):\d+: ", "", text))
    return text or "cv2.error"


def run_opencv(models: dict[str, bytes], images: np.ndarray, extra_path: str | None) -> tuple[str, dict[str, Any]]:
    """(OpenCV version, name -> logits or the error message) from a subprocess, `extra_path` first on its path."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        np.save(folder / "images.npy", images)
        for name, data in models.items():
            (folder / f"{name}.onnx").write_bytes(data)
        env = dict(os.environ)
        if extra_path:
            env["PYTHONPATH"] = os.pathsep.join([extra_path, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        subprocess.run([sys.executable, "-m", "benchmarks.portable_graphs", "--opencv-worker", str(folder)],
                       env=env, check=True, cwd=Path(__file__).resolve().parents[1])
        out: dict[str, Any] = {}
        for name in models:
            error = folder / f"{name}.error"
            out[name] = error.read_text() if error.exists() else np.load(folder / f"{name}.npy")
        return (folder / "version.txt").read_text(), out
