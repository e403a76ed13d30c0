"""Specialised children: the pipeline's specialise stage, and a server that sends them in place of their slices
and says so."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from nag.artifacts import file_sha256
from nag.bundle.bundle import BundleError, load_bundle, write_manifest
from nag.bundle.specialised import (
    SPECIALISED_FILE,
    SPECIALISED_WEIGHTS_FILE,
    SpecialisedChild,
    SpecialisedSet,
    specialised_inputs,
    write_specialised,
)
from nag.client import channel
from nag.config import ServiceConfig, pipeline
from nag.data import DataSource, load_test_set
from nag.export import INPUT_NAME
from nag.pipeline.specialise import cheap_members, specialise, train_seconds
from nag.pipeline.train_generator import finish, specialised_current
from nag.policy.frontier import serving_frontier
from nag.server.app import RunningServer, ServerOptions
from nag.space.space import SearchSpace
from nag.supernet.static import extract_child
from nag.v1 import generator_pb2 as pb
from nag.v1 import generator_pb2_grpc as pb_grpc


def _reseal(root: Path) -> None:
    """Seal the manifest again over the files as they are now."""
    m = json.loads((root / "manifest.json").read_text())
    write_manifest(root, m["name"], SearchSpace.from_dict(m["space"]), m["default_device"], m["configs"],
                   m["metrics"])


@pytest.fixture()
def copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    return target


def test_the_stage_fine_tunes_the_cheap_members_and_keeps_those_that_beat_their_slices(copy: Path,
                                                                                     tmp_path: Path) -> None:
    bundle = load_bundle(copy)
    everyone = cheap_members(bundle, share=1.0)
    entries = serving_frontier(bundle, bundle.devices["flops"]).entries
    assert sorted(a.arch_id for a in everyone) == sorted({e.arch.arch_id for e in entries})  # each once
    lo, hi = entries[0].cost, entries[-1].cost
    share = (entries[2].cost - lo) / (hi - lo)  # the three cheapest members
    cheap = cheap_members(bundle, share)
    assert [a.arch_id for a in cheap] == [e.arch.arch_id for e in entries[:3]]

    work = tmp_path / "work"
    result = specialise(copy, epochs=1, share=share, work=work)
    assert result.stats["candidates"] == 3
    runs = work / file_sha256(copy / "supernet.pt")[:16]  # runs of this supernet, named by their settings
    assert (runs / "teacher_targets.pt").is_file()  # computed by the first run, read by the others
    logs = [(runs / f"{a.arch_id}-e1-lr0.05-w50.log").read_text() for a in cheap]
    assert ["teacher targets read from" in text for text in logs] == [False, True, True]
    for child in result.children.values():
        assert child.info["specialised_val_acc"] > child.info["slice_val_acc"]
        assert child.info["from_supernet"] == bundle.manifest["files"]["supernet.pt"]
    reloaded = load_bundle(copy)  # sealed again: every file verifies
    assert set(reloaded.specialised) == set(result.children)
    doc = json.loads((copy / SPECIALISED_FILE).read_text())
    assert doc["stats"]["kept"] == len(result.children) and doc["stats"]["candidates"] == 3
    stage = reloaded.manifest["configs"]["specialise"]  # the bundle states how it was specialised
    assert (stage["epochs"], stage["share"]) == (1, share) and "--epochs 1" in stage["command"]
    assert result.stats["runs_reused"] == 0
    # A second call reuses the finished runs and decides the same.
    again = specialise(copy, epochs=1, share=share, work=work)
    assert set(again.children) == set(result.children) and again.stats["runs_reused"] == 3
    assert all(train_seconds(runs / f"{a.arch_id}-e1-lr0.05-w50") > 0 for a in cheap)
    assert all(c.info["train_seconds"] == train_seconds(runs / f"{a}-e1-lr0.05-w50") for a, c in again.children.items())
    # Other settings are other runs: nothing is reused.
    assert specialise(copy, epochs=1, share=share, work=work, lr=0.02).stats["runs_reused"] == 0


def test_the_pipeline_specialises_as_its_last_stage_once(copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    bundle = load_bundle(copy)
    entries = serving_frontier(bundle, bundle.devices["flops"]).entries
    share = 0.5 * (entries[1].cost - entries[0].cost) / (entries[-1].cost - entries[0].cost)  # the cheapest only
    cfg = replace(pipeline("tiny"), specialise_epochs=1, specialise_share=share)
    assert not specialised_current(copy, cfg)
    with caplog.at_level(logging.INFO, logger="train_generator"):
        finish(copy, cfg, rebuilt=set(), progress=False)
    assert "stage 9/9" in caplog.text
    assert specialised_current(copy, cfg)
    assert not specialised_current(copy, replace(cfg, specialise_epochs=2))  # another stage: made again
    assert load_bundle(copy).manifest["configs"]["specialise"]["epochs"] == 1
    written = (copy / SPECIALISED_FILE).stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="train_generator"):
        finish(copy, cfg, rebuilt=set(), progress=False)  # nothing changed: the stage is not run again
    assert "stage 9/9" not in caplog.text and (copy / SPECIALISED_FILE).stat().st_mtime_ns == written


def test_the_committed_bundle_holds_the_default_profiles_stage() -> None:
    # Otherwise `make demo`, which finishes the committed bundle with the default profile, would start a
    # specialise stage of half an hour before serving.
    committed = Path(__file__).resolve().parents[1] / "bundles" / "default"
    assert specialised_current(committed, pipeline("default"))
    assert not specialised_current(committed, replace(pipeline("default"), specialise_epochs=3))


@pytest.fixture()
def specialised_server(copy: Path) -> Iterator[tuple[RunningServer, SpecialisedChild]]:
    """The tiny bundle with its cheapest frontier member specialised by hand (its slice with a doubled
    classifier and BN statistics of its own), served over real gRPC."""
    bundle = load_bundle(copy)
    cheapest = serving_frontier(bundle, bundle.devices["flops"]).entries[0].arch
    static = extract_child(bundle.trained.supernet, cheapest)
    with torch.no_grad():
        static.classifier.weight.mul_(2.0)
        static.head_bn.running_mean.add_(0.5)
    state = {k: v.detach().numpy() for k, v in static.state_dict().items()}
    child = SpecialisedChild(cheapest, state, {"from_supernet": bundle.manifest["files"]["supernet.pt"],
                                               "calibration_images": 7, "epochs": 1})
    write_specialised(copy, SpecialisedSet({cheapest.arch_id: child}, specialised_inputs(bundle.manifest["files"]),
                                           {}))
    _reseal(copy)
    running = RunningServer(ServerOptions(bundle=copy, port=0, metrics_port=-1, service=ServiceConfig()))
    running.load()
    yield running, child
    running.stop(0, drain=0)


def test_a_specialised_member_is_served_with_its_own_weights_and_says_so(
        specialised_server: tuple[RunningServer, SpecialisedChild]) -> None:
    running, child = specialised_server
    bundle = running.service.bundle
    entries = serving_frontier(bundle, bundle.devices["flops"]).entries
    with channel(f"127.0.0.1:{running.port}") as ch:
        stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
        cheap = stub.GenerateForBudget(pb.GenerateForBudgetRequest(device="flops", cost=entries[0].cost * 1.05 + 1e-3),
                                       timeout=60)
        other = stub.GenerateForBudget(pb.GenerateForBudgetRequest(device="flops", cost=entries[-1].cost * 1.05),
                                       timeout=60)
    assert cheap.architecture_id == child.arch.arch_id and cheap.frontier_member == 0
    assert cheap.model_kind == "specialised" and cheap.bn_statistics == "specialised:7"
    assert cheap.specialised_from == f"slice {child.arch.arch_id} of supernet sha256:{child.info['from_supernet']}"
    meta = {p.key: p.value for p in onnx.load_from_string(cheap.onnx_model).metadata_props}
    assert meta["nag.model_kind"] == "specialised" and meta["nag.specialised_from"] == cheap.specialised_from
    assert other.architecture_id != child.arch.arch_id
    assert other.model_kind == "slice" and other.specialised_from == "" and other.bn_statistics.startswith("stored:")

    # The model computes what the specialised weights compute, not the slice.
    test = load_test_set(DataSource(), bundle.space.input.size, bundle.space.input.channels)
    images = test.as_float(slice(0, 32))
    static = extract_child(bundle.trained.supernet, child.arch)
    sliced = static(images).detach().numpy()
    static.load_state_dict(child.state_dict())
    expected = static(images).detach().numpy()
    got = ort.InferenceSession(cheap.onnx_model, providers=["CPUExecutionProvider"]).run(
        None, {INPUT_NAME: images.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.abs(got - sliced).max() > 0.1


def test_specialised_files_from_another_supernet_are_ignored_and_corrupt_ones_refused(
        copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    bundle = load_bundle(copy)
    arch = serving_frontier(bundle, bundle.devices["flops"]).entries[0].arch
    state = {k: v.detach().numpy() for k, v in extract_child(bundle.trained.supernet, arch).state_dict().items()}
    child = SpecialisedChild(arch, state, {"from_supernet": "0" * 64, "calibration_images": 7})
    write_specialised(copy, SpecialisedSet({arch.arch_id: child}, {"supernet.pt": "0" * 64}, {}))
    _reseal(copy)
    with caplog.at_level(logging.WARNING):
        assert load_bundle(copy).specialised == {}
    assert "fine-tuned from another supernet" in caplog.text and "nag.pipeline.specialise" in caplog.text

    weights = copy / SPECIALISED_WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(BundleError, match=f"{SPECIALISED_WEIGHTS_FILE} does not match its hash"):
        load_bundle(copy)
    _reseal(copy)  # sealed over the broken file: its contents are checked too
    with pytest.raises(BundleError, match=f"{SPECIALISED_WEIGHTS_FILE} cannot be read"):
        load_bundle(copy)


def test_specialised_weights_that_do_not_fit_their_architecture_are_a_clear_error(copy: Path) -> None:
    from nag.errors import NagError
    from nag.policy.materialize import export_child

    bundle = load_bundle(copy)
    arch = serving_frontier(bundle, bundle.devices["flops"]).entries[0].arch
    state = {k: v.detach().numpy() for k, v in extract_child(bundle.trained.supernet, arch).state_dict().items()}
    state["classifier.weight"] = np.zeros((3, 3), dtype=np.float32)
    child = SpecialisedChild(arch, state, {"from_supernet": bundle.manifest["files"]["supernet.pt"],
                                           "calibration_images": 7})
    write_specialised(copy, SpecialisedSet({arch.arch_id: child}, specialised_inputs(bundle.manifest["files"]), {}))
    _reseal(copy)
    reloaded = load_bundle(copy)
    with pytest.raises(NagError, match=f"specialised weights of {arch.arch_id} .* do not fit its architecture"):
        export_child(reloaded, arch)
