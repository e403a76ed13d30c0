"""Every corruption of every bundle file, the manifest included, is one line on stderr and exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nag.artifacts import file_sha256
from nag.bundle.bundle import MANIFEST_FILE, seal_manifest
from nag.cli import main as nag_main

REPO = Path(__file__).resolve().parents[1]
# Files that serving parses (the others, such as triplets.jsonl, are only verified by their hash).
PARSED = ("space.json", "supernet.pt", "accuracy_predictor.json", "devices/flops/device.json",
          "devices/flops/evaluator.pt", "devices/flops/generator.pt", "devices/flops/frontier.json",
          "devices/flops/frontier_bn.npz")


def _corruptions(data: bytes) -> dict[str, bytes]:
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x40
    return {"garbage": b"\x00garbage\xff{[", "truncated": data[: len(data) // 2], "bit flip": bytes(flipped),
            "empty": b""}


def _generate(bundle: Path, tmp: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = nag_main(["generate", "--local", "--bundle", str(bundle), "--macs", "5e6", "-o",
                     str(tmp / "m.onnx")])
    return code, capsys.readouterr().err


def _assert_one_line_error(code: int, err: str, what: str) -> None:
    assert code == 2, (what, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (what, err)


def test_the_intact_copy_serves(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    code, err = _generate(copy, tmp_path, capsys)
    assert code == 0, err


def test_every_file_corrupted_in_every_way_is_a_one_line_error(tiny_bundle: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(p.relative_to(tiny_bundle).as_posix() for p in tiny_bundle.rglob("*") if p.is_file())
    assert MANIFEST_FILE in files and len(files) > 8
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    for rel in files:
        original = (tiny_bundle / rel).read_bytes()
        for how, data in _corruptions(original).items():
            (copy / rel).write_bytes(data)
            code, err = _generate(copy, tmp_path, capsys)
            _assert_one_line_error(code, err, f"{rel} {how}")
            assert rel.rsplit("/", 1)[-1] in err or MANIFEST_FILE in err, (rel, how, err)
        (copy / rel).write_bytes(original)


@pytest.mark.parametrize("manifest_text", ["[]", "{}", "null", '"text"', "1"])
def test_a_manifest_of_the_wrong_shape_is_a_one_line_error(tiny_bundle: Path, tmp_path: Path, manifest_text: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    (copy / MANIFEST_FILE).write_text(manifest_text)
    _assert_one_line_error(*_generate(copy, tmp_path, capsys), manifest_text)


@pytest.mark.parametrize("field", ["space", "devices", "files", "default_device", "manifest_sha256"])
def test_a_manifest_without_a_field_is_a_one_line_error(tiny_bundle: Path, tmp_path: Path, field: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    del manifest[field]
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    code, err = _generate(copy, tmp_path, capsys)
    _assert_one_line_error(code, err, field)
    assert field in err or "does not match its own" in err


def test_a_file_changed_with_its_hash_updated_breaks_the_manifest_seal(tiny_bundle: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    (copy / "accuracy_predictor.json").write_text("garbage")
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["files"]["accuracy_predictor.json"] = file_sha256(copy / "accuracy_predictor.json")
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    code, err = _generate(copy, tmp_path, capsys)
    _assert_one_line_error(code, err, "hash updated")
    assert "manifest.json does not match its own manifest_sha256" in err


@pytest.mark.parametrize("rel", PARSED)
def test_a_parsed_file_resealed_with_garbage_is_still_a_one_line_error(tiny_bundle: Path, tmp_path: Path, rel: str,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Even a manifest rewritten consistently around a broken file (hash and seal) cannot crash a load."""
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    for data in (b"garbage", b'{"a": 1}', b"[]"):
        (copy / rel).write_bytes(data)
        manifest = json.loads((copy / MANIFEST_FILE).read_text())
        manifest["files"][rel] = file_sha256(copy / rel)
        if rel == "space.json":
            manifest["space"] = {"garbage": True}
        (copy / MANIFEST_FILE).write_text(json.dumps(seal_manifest(manifest)))
        _assert_one_line_error(*_generate(copy, tmp_path, capsys), f"{rel} {data!r}")


def test_serve_on_a_corrupt_bundle_exits_2_in_one_line(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    (copy / MANIFEST_FILE).write_text("[]")
    proc = subprocess.run([sys.executable, "-m", "nag.cli", "serve", "--bundle", str(copy), "--port", "0",
                           "--metrics-port", "-1"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "not a JSON object" in errors[0], proc.stderr


@pytest.mark.parametrize("resealed", [False, True])
def test_missing_stored_statistics_are_a_one_line_error_naming_the_file(tiny_bundle: Path, tmp_path: Path,
                                                                        resealed: bool,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The serving frontier's BN statistics deleted: as listed in the manifest, or with the manifest rewritten
    consistently without them (the frontier file still names them)."""
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    rel = "devices/flops/frontier_bn.npz"
    (copy / rel).unlink()
    if resealed:
        manifest = json.loads((copy / MANIFEST_FILE).read_text())
        del manifest["files"][rel]
        (copy / MANIFEST_FILE).write_text(json.dumps(seal_manifest(manifest)))
    code, err = _generate(copy, tmp_path, capsys)
    _assert_one_line_error(code, err, rel)
    assert rel in err and ("missing" in err), err
    proc = subprocess.run([sys.executable, "-m", "nag.cli", "serve", "--bundle", str(copy), "--port", "0",
                           "--metrics-port", "-1"], capture_output=True, text=True, timeout=120, cwd=REPO)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(errors) == 1 and rel in errors[0]
