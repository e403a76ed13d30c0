"""Supernet training: resume bit-for-bit, SIGTERM, corrupt checkpoints, DDP replicas."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nag.artifacts import load_artifact
from nag.config import profile
from nag.errors import NagError
from nag.pipeline.distributed import Distributed
from nag.pipeline.supernet_trainer import SupernetTrainer
from nag.supernet.io import load_supernet

REPO = Path(__file__).resolve().parents[1]


def _run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nag.cli", "train-supernet", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("checkpoint_at", [3, 5])  # before and after the weight average has begun (step 4)
def test_resume_continues_bit_for_bit(tmp_path: Path, checkpoint_at: int) -> None:
    cfg = profile("tiny").with_overrides(decay_fraction=0.25, average_at_floor=True)
    straight = SupernetTrainer(cfg, tmp_path / "a", Distributed())
    assert straight.average_from == 4
    for _ in range(7):
        straight.train_step()

    first = SupernetTrainer(cfg, tmp_path / "b", Distributed())
    for _ in range(checkpoint_at):
        first.train_step()
    first.out.mkdir(parents=True)
    first.save_checkpoint()
    resumed = SupernetTrainer(cfg, tmp_path / "b", Distributed())
    resumed.load_checkpoint()
    assert resumed.step == checkpoint_at
    for _ in range(7 - checkpoint_at):
        resumed.train_step()

    for a, b in [(straight.supernet, resumed.supernet), (straight.shipped, resumed.shipped)]:
        expected, got = a.state_dict(), b.state_dict()
        assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert straight.averaged is not None and resumed.averaged is not None
    assert int(straight.averaged.n_averaged) == int(resumed.averaged.n_averaged) == 3
    assert straight.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]


def test_shipped_weights_average_the_steps_at_the_lr_floor(tmp_path: Path) -> None:
    cfg = profile("tiny").with_overrides(decay_fraction=0.25, average_at_floor=True)
    trainer = SupernetTrainer(cfg, tmp_path, Distributed())
    at_floor = []
    for _ in range(trainer.total_steps):
        step = trainer.step
        trainer.train_step()
        if step >= trainer.average_from:
            at_floor.append({k: v.clone() for k, v in trainer.supernet.named_parameters()})
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(cfg.lr * cfg.lr_floor)
    assert len(at_floor) == trainer.total_steps - 4
    shipped = dict(trainer.shipped.named_parameters())
    for name in shipped:
        mean = torch.stack([snapshot[name] for snapshot in at_floor]).mean(0)
        torch.testing.assert_close(shipped[name], mean, rtol=0, atol=1e-6)
    assert any(not torch.equal(shipped[n], p) for n, p in trainer.supernet.named_parameters())
    # Without averaging the last step's weights are shipped.
    plain = SupernetTrainer(cfg.with_overrides(average_at_floor=False), tmp_path / "plain", Distributed())
    for _ in range(plain.total_steps):
        plain.train_step()
    assert plain.averaged is None and plain.shipped is plain.supernet


def test_resume_with_another_config_is_refused(tmp_path: Path) -> None:
    trainer = SupernetTrainer(profile("tiny"), tmp_path, Distributed())
    trainer.out.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint()
    other = SupernetTrainer(profile("tiny").with_overrides(seed=9), tmp_path, Distributed())
    with pytest.raises(Exception, match="another config"):
        other.load_checkpoint()


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_finishes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [sys.executable, "-m", "nag.pipeline.train_supernet", "--profile", "tiny", "--epochs", "3", "--out",
            str(out)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (out / "log.jsonl").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "continue with --resume" in err
    assert not (out / "supernet.pt").exists()

    done = _run_cli("--profile", "tiny", "--epochs", "3", "--out", str(out), "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 24
    trained = load_supernet(out / "supernet.pt")
    assert trained.calibration_images.shape == (250, 1, 28, 28)
    assert len(trained.meta["classes"]) == 10
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all({"test_acc_biggest", "test_acc_smallest"} <= set(r) for r in records)


class _Crash(Exception):
    pass


def test_a_crash_during_an_epochs_evaluation_keeps_its_log_line(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint of epoch 2 is on disk when its evaluation dies (as with kill -9): the resumed run
    evaluates epoch 2 from that checkpoint and logs it, then goes on."""
    cfg = profile("tiny").with_overrides(epochs=3)
    first = SupernetTrainer(cfg, tmp_path, Distributed())
    evaluate = SupernetTrainer.evaluate
    calls = []

    def dies_in_the_second(self: SupernetTrainer) -> dict[str, float]:
        calls.append(self.step)
        if len(calls) == 2:
            raise _Crash
        return evaluate(self)

    monkeypatch.setattr(SupernetTrainer, "evaluate", dies_in_the_second)
    with pytest.raises(_Crash):
        first.run(resume=False)
    monkeypatch.setattr(SupernetTrainer, "evaluate", evaluate)
    epoch2_step = calls[1]
    assert load_artifact(tmp_path / "checkpoint.pt")["step"] == epoch2_step
    assert [json.loads(line)["epoch"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [1]

    resumed = SupernetTrainer(cfg, tmp_path, Distributed())
    assert resumed.run(resume=True) == 0
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[1]["step"] == epoch2_step and "test_acc_biggest" in records[1] and "train_loss" in records[1]


def test_corrupt_checkpoint_is_refused_without_traceback(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"NAGART1 0000\ngarbage")
    proc = _run_cli("--profile", "tiny", "--out", str(out), "--resume", timeout=120)
    assert proc.returncode == 2
    assert "corrupt" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_ddp_two_gloo_processes_hold_identical_weights(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "nag.pipeline.train_supernet", "--profile", "tiny", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    replicas = [json.loads((out / f"replica_{r}.json").read_text()) for r in (0, 1)]
    assert replicas[0]["step"] == replicas[1]["step"] == 4  # 256 images / (32 per rank x 2 ranks)
    assert replicas[0]["children"] == replicas[1]["children"]
    assert len(replicas[0]["children"]) == 4 and len(replicas[0]["children"][0]) == 4
    assert replicas[0]["weights_sha256"] == replicas[1]["weights_sha256"]
    assert json.loads((out / "summary.json").read_text())["world"] == 2


def test_config_errors_are_clear() -> None:
    from nag.config import SupernetTrainConfig
    from nag.errors import NagError

    with pytest.raises(NagError, match="unknown profile 'nope'"):
        profile("nope")
    with pytest.raises(NagError, match="train_mode"):
        profile("tiny").with_overrides(train_mode="all")
    with pytest.raises(NagError, match="unknown training config fields"):
        SupernetTrainConfig.from_dict({"epochz": 3})
    assert SupernetTrainConfig.from_dict(profile("demo").to_dict()) == profile("demo")


def test_cli_average_at_floor_ships_the_average_and_logs_both(tmp_path: Path) -> None:
    from nag.pipeline.train_supernet import build_config, main, parse_args

    assert build_config(parse_args(["--profile", "tiny"])).average_at_floor is False
    assert main(["--profile", "tiny", "--out", str(tmp_path), "--average-at-floor"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["averaged_steps"] == 2  # 8 steps, 2 of warm-up, the floor from step 6
    assert {"test_acc_biggest", "test_acc_biggest_last_step", "test_acc_smallest_last_step"} <= set(summary)
    shipped = load_supernet(tmp_path / "supernet.pt").supernet.state_dict()
    last_step = load_artifact(tmp_path / "checkpoint.pt")["model"]
    assert not torch.equal(shipped["classifier.weight"], last_step["classifier.weight"])


def test_standalone_mode_trains_and_reports_one_child(tmp_path: Path) -> None:
    trainer = SupernetTrainer(profile("tiny").with_overrides(train_mode="smallest-only"), tmp_path, Distributed())
    before = trainer.supernet.stages[3][3].expand.weight.detach().clone()
    trainer.train_step()
    # Weights the smallest child never uses only feel weight decay's pull towards zero, no data gradient.
    after = trainer.supernet.stages[3][3].expand.weight.detach()
    assert torch.all(after.abs() <= before.abs())
    assert set(trainer.evaluate()) == {"test_acc_smallest"}


def test_fixed_arch_trains_that_child_alone(tmp_path: Path) -> None:
    from nag.pipeline.train_supernet import main
    from nag.space import load_space, sample_uniform

    arch = sample_uniform(load_space(None), random.Random(3))
    (tmp_path / "child.json").write_text(arch.to_json())
    assert main(["--profile", "tiny", "--out", str(tmp_path / "run"), "--arch", str(tmp_path / "child.json")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary) >= {"test_acc_fixed"} and "test_acc_biggest" not in summary
    saved = load_supernet(tmp_path / "run" / "supernet.pt").meta["config"]
    assert saved["train_mode"] == "fixed" and saved["fixed_arch"] == arch.to_json()


def test_fixed_arch_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nag.pipeline.train_supernet import main

    assert main(["--profile", "tiny", "--out", str(tmp_path), "--arch", '{"resolution": 28}']) == 2
    assert main(["--profile", "tiny", "--out", str(tmp_path), "--arch", "missing.json"]) == 2
    assert main(["--profile", "tiny", "--out", str(tmp_path), "--arch", "biggest",
                 "--train-mode", "smallest-only"]) == 2
    assert main(["--profile", "tiny", "--out", str(tmp_path), "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "lacks the field" in err and "no architecture file" in err and "does not combine" in err
    assert "only cpu and cuda" in err or "is not a device" in err
    assert "Traceback" not in err
    with pytest.raises(NagError, match="fixed_arch"):
        profile("tiny").with_overrides(train_mode="fixed")


def test_stratified_middle_children_cover_the_macs_range(space) -> None:
    from nag.recipe.stratified import StratifiedSampler
    from nag.space import count_macs

    sampler = StratifiedSampler(space, seed=0)
    lo, hi = sampler.proposal.lo, sampler.proposal.hi
    draws = [sampler(space, random.Random(seed), 2) for seed in range(40)]
    low_half = [count_macs(pair[0], space) for pair in draws]
    high_half = [count_macs(pair[1], space) for pair in draws]
    middle = (lo + hi) / 2
    # Each child lands near a target in its own half (within a proposal bucket's width of it).
    assert sum(m < middle + sampler.proposal.width for m in low_half) >= 38
    assert sum(m > middle - sampler.proposal.width for m in high_half) >= 38
    assert [a.arch_id for a in sampler(space, random.Random(7), 2)] == [
        a.arch_id for a in sampler(space, random.Random(7), 2)]


def test_pipeline_config_errors_are_clear() -> None:
    from nag.config import PipelineConfig, pipeline

    with pytest.raises(NagError, match="triplets must be >= 1"):
        PipelineConfig(triplets=0)
    with pytest.raises(NagError, match="default_device"):
        PipelineConfig(devices=("flops",), default_device="cpu")
    assert pipeline("tiny").default_device == "flops"


def test_model_and_service_configs_check_themselves_the_same_way() -> None:
    from nag.config import EvaluatorConfig, GeneratorConfig, ServiceConfig

    with pytest.raises(NagError, match="invalid generator config: need 2 <= min_samples <= max_samples"):
        GeneratorConfig(min_samples=1)
    with pytest.raises(NagError, match="invalid evaluator config: rule must be one of"):
        EvaluatorConfig(rule="fastest")
    with pytest.raises(NagError, match="--max-concurrent and --candidates must be at least 1"):
        ServiceConfig(max_concurrent=0)


def test_a_pipeline_maps_to_its_evaluator_and_generator_configs() -> None:
    from nag.config import PipelineConfig, pipeline

    cfg = replace(pipeline("tiny"), adaptive_lambda=0.5, factorized_steps=3, seed=4)
    assert PipelineConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    g = cfg.generator_config()
    assert (g.steps, g.samples_per_budget, g.entropy_weight, g.adaptive_lambda, g.factorized_steps, g.seed) == \
        (10, 8, 0.05, 0.5, 3, 4)
    assert cfg.generator_config(seed=1).seed == 1
    e = cfg.evaluator_config(rule="cost-only")
    assert (e.steps, e.seed, e.rule) == (100, 4, "cost-only")
    with pytest.raises(NagError, match="unknown pipeline config fields"):
        PipelineConfig.from_dict({"triplet": 3})


def _sharp_eval_supernet(net: torch.nn.Module) -> torch.nn.Module:
    """Eval mode (BN on running statistics, so logits do not depend on the batch) and a classifier whose
    outputs are far from uniform, so that different targets give different losses."""
    net.eval()
    with torch.no_grad():
        net.classifier.weight.normal_(0, 1.0)
    return net


def test_sliced_middle_children_each_learn_from_their_own_slice(space, perturbed_supernet) -> None:
    import torch.nn.functional as F

    from nag.recipe.sandwich import SandwichObjective, soft_cross_entropy
    from nag.space import biggest, sample_uniform, smallest

    net = _sharp_eval_supernet(perturbed_supernet)
    images, labels = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    rng = random.Random(1)
    children = [biggest(space), smallest(space), *(sample_uniform(space, rng) for _ in range(3))]
    with torch.no_grad():
        torch.manual_seed(5)  # the teacher's dropout
        teacher = net(images, children[0], dropout=True)
        soft = F.softmax(teacher, dim=1)
        expected = F.cross_entropy(teacher, labels, label_smoothing=0.1) + soft_cross_entropy(net(images, children[1]),
                                                                                              soft)
        halves = [slice(0, 4), slice(4, 8), slice(0, 4)]  # middle child i gets half i % 2
        for arch, part in zip(children[2:], halves, strict=True):
            expected = expected + soft_cross_entropy(net(images[part], arch), soft[part])
        torch.manual_seed(5)
        whole = SandwichObjective(net, 0.1, 0.0, middle_slices=1)(images, labels, children)
        torch.manual_seed(5)
        sliced = SandwichObjective(net, 0.1, 0.0, middle_slices=2)(images, labels, children)
    assert torch.allclose(sliced, expected, atol=1e-5)
    assert not torch.allclose(whole, sliced, atol=1e-3)


def test_every_training_batch_is_even(tmp_path: Path) -> None:
    from nag.pipeline.train_supernet import build_config, parse_args

    assert build_config(parse_args(["--profile", "tiny", "--middle-slices", "4"])).middle_slices == 4
    with pytest.raises(NagError, match="batch_size must be an even multiple of middle_slices"):
        profile("tiny").with_overrides(batch_size=33)
    with pytest.raises(NagError, match="each slice an even image count"):
        profile("default").with_overrides(middle_slices=3)
    cfg = profile("tiny").with_overrides(num_middle_children=4, middle_slices=2)
    trainer = SupernetTrainer(cfg, tmp_path, Distributed())
    assert trainer.objective.middle_slices == 2
    assert math.isfinite(trainer.train_step())


def test_some_middle_children_can_be_drawn_uniformly(space, tmp_path: Path) -> None:
    from nag.pipeline.supernet_trainer import step_seed
    from nag.pipeline.train_supernet import build_config, parse_args
    from nag.recipe.sandwich import uniform_first
    from nag.recipe.stratified import StratifiedSampler
    from nag.space import count_macs, sample_uniform

    stratified = StratifiedSampler(space)
    got = uniform_first(1, stratified)(space, random.Random(3), 3)
    reference = random.Random(3)
    assert got == [sample_uniform(space, reference), *stratified(space, reference, 2)]
    # The stratified rest still covers its own slices of the range, lowest first.
    assert count_macs(got[1], space) < count_macs(got[2], space)
    assert uniform_first(5, stratified)(space, random.Random(3), 2) == uniform_first(2, stratified)(
        space, random.Random(3), 2)

    parsed = build_config(parse_args(["--profile", "tiny", "--uniform-middle-children", "2"]))
    assert parsed.uniform_middle_children == 2
    with pytest.raises(NagError, match="uniform_middle_children must lie between 0 and num_middle_children"):
        profile("tiny").with_overrides(uniform_middle_children=3)
    cfg = profile("tiny").with_overrides(middle_sampler="stratified", uniform_middle_children=1)
    trainer = SupernetTrainer(cfg, tmp_path, Distributed())
    images, labels = trainer.batch(0)
    children = trainer.step_children(images, labels)
    assert children[2] == sample_uniform(trainer.space, random.Random(step_seed(cfg, 0, 1)))
    assert children[2:] != trainer.sampler(trainer.space, random.Random(step_seed(cfg, 0, 1)), 2)
    assert math.isfinite(trainer.train_step())


def test_some_middle_children_can_be_drawn_at_the_lowest_resolution(space, tmp_path: Path) -> None:
    from nag.pipeline.supernet_trainer import step_seed
    from nag.pipeline.train_supernet import build_config, parse_args
    from nag.recipe.sandwich import lowest_resolution_first, uniform_first
    from nag.recipe.stratified import StratifiedSampler
    from nag.space import sample_uniform

    stratified = StratifiedSampler(space)
    lowest = min(space.resolutions)
    got = lowest_resolution_first(2, stratified)(space, random.Random(5), 3)
    reference = random.Random(5)
    drawn = [sample_uniform(space, reference) for _ in range(2)]
    assert [child.resolution for child in got[:2]] == [lowest, lowest]
    # Only the resolution moves: the rest of each uniform draw is kept.
    assert [(c.stem_width, c.stages) for c in got[:2]] == [(c.stem_width, c.stages) for c in drawn]
    assert got[2:] == stratified(space, reference, 1)

    parsed = build_config(parse_args(["--profile", "tiny", "--num-middle-children", "3",
                                      "--uniform-middle-children", "1", "--lowest-resolution-middle-children", "1"]))
    assert parsed.lowest_resolution_middle_children == 1
    with pytest.raises(NagError, match="lowest_resolution_middle_children must lie between 0"):
        profile("tiny").with_overrides(uniform_middle_children=1, lowest_resolution_middle_children=2)
    trainer = SupernetTrainer(parsed, tmp_path, Distributed())
    images, labels = trainer.batch(0)
    children = trainer.step_children(images, labels)
    # Biggest, smallest, the uniform child, the lowest-resolution child, then the sampler's.
    expected = uniform_first(1, lowest_resolution_first(1, trainer.sampler))(
        trainer.space, random.Random(step_seed(parsed, 0, 1)), 3)
    assert children[2:] == expected and children[3].resolution == lowest
    assert math.isfinite(trainer.train_step())


def test_resolution_corners_train_the_size_and_resolution_mixes(space, tmp_path: Path) -> None:
    from nag.pipeline.train_supernet import build_config, parse_args
    from nag.recipe.sandwich import resolution_corners
    from nag.space import biggest, count_macs, smallest

    wide_low, narrow_high = resolution_corners(space)
    assert wide_low.resolution == min(space.resolutions) and narrow_high.resolution == max(space.resolutions)
    assert (wide_low.stem_width, wide_low.stages) == (biggest(space).stem_width, biggest(space).stages)
    assert (narrow_high.stem_width, narrow_high.stages) == (smallest(space).stem_width, smallest(space).stages)
    assert count_macs(smallest(space), space) < count_macs(narrow_high, space)
    assert count_macs(wide_low, space) < count_macs(biggest(space), space)

    assert build_config(parse_args(["--profile", "tiny", "--resolution-corners"])).resolution_corners
    cfg = profile("tiny").with_overrides(resolution_corners=True)
    trainer = SupernetTrainer(cfg, tmp_path, Distributed())
    images, labels = trainer.batch(0)
    children = trainer.step_children(images, labels)
    assert children[:4] == [biggest(space), smallest(space), wide_low, narrow_high]
    assert len(children) == 4 + cfg.num_middle_children
    plain = SupernetTrainer(profile("tiny"), tmp_path / "plain", Distributed())
    assert children[4:] == plain.step_children(images, labels)[2:]  # the middle children do not change
    assert math.isfinite(trainer.train_step())


def test_students_can_see_the_labels_and_softer_targets(space, perturbed_supernet) -> None:
    import torch.nn.functional as F

    from nag.recipe.sandwich import SandwichObjective, soft_cross_entropy
    from nag.space import biggest, sample_uniform, smallest

    net = _sharp_eval_supernet(perturbed_supernet)
    images, labels = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    children = [biggest(space), smallest(space), sample_uniform(space, random.Random(2))]

    def loss_of(**knobs: float) -> torch.Tensor:
        torch.manual_seed(5)
        with torch.no_grad():
            return SandwichObjective(net, 0.1, 0.0, **knobs)(images, labels, children)  # type: ignore[arg-type]

    with torch.no_grad():
        torch.manual_seed(5)
        teacher = net(images, children[0], dropout=True)
        students = [net(images, arch) for arch in children[1:]]
    teacher_loss = F.cross_entropy(teacher, labels, label_smoothing=0.1)
    labels_only = teacher_loss + sum(F.cross_entropy(s, labels, label_smoothing=0.1) for s in students)
    assert torch.allclose(loss_of(student_label_weight=1.0), labels_only, atol=1e-5)
    soft2 = F.softmax(teacher / 2, dim=1)
    softer = teacher_loss + sum(4 * soft_cross_entropy(s / 2, soft2) for s in students)
    assert torch.allclose(loss_of(temperature=2.0), softer, atol=1e-5)
    half = 0.5 * (loss_of() - teacher_loss) + 0.5 * (labels_only - teacher_loss) + teacher_loss
    assert torch.allclose(loss_of(student_label_weight=0.5), half, atol=1e-5)
    with pytest.raises(NagError, match="student_label_weight"):
        profile("tiny").with_overrides(student_label_weight=1.5)


def test_a_specialised_child_starts_from_its_slice_learns_from_the_biggest_and_resumes(tmp_path: Path) -> None:
    """`--specialise-from S` with `--arch`: the run starts from S's weights, its teacher's targets are S's
    biggest child (BN calibrated) on the training images, and a resumed run continues bit for bit."""
    import torch.nn.functional as F

    from nag.pipeline.train_supernet import main
    from nag.space import biggest, smallest
    from nag.supernet.static import child

    assert main(["--profile", "tiny", "--out", str(tmp_path / "teacher")]) == 0
    source = tmp_path / "teacher" / "supernet.pt"
    teacher = load_supernet(source)
    cfg = profile("tiny").with_overrides(train_mode="fixed", fixed_arch=smallest(teacher.supernet.space).to_json(),
                                         specialise_from=str(source), student_label_weight=0.5)
    trainer = SupernetTrainer(cfg, tmp_path / "straight", Distributed())
    expected = teacher.supernet.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in trainer.supernet.state_dict().items())
    probs = trainer.objective.teacher_probs
    assert probs.shape == (len(trainer.train), teacher.supernet.space.num_classes)
    big = child(teacher.supernet, biggest(teacher.supernet.space), teacher.calibration_float).eval()
    with torch.no_grad():
        torch_probs = F.softmax(big(trainer.train.as_float(slice(0, 64))), dim=1)
    torch.testing.assert_close(probs[:64], torch_probs, rtol=1e-3, atol=1e-4)

    for _ in range(3):
        trainer.train_step()
    first = SupernetTrainer(cfg, tmp_path / "resumed", Distributed())
    first.train_step()
    first.out.mkdir(parents=True)
    first.save_checkpoint()
    resumed = SupernetTrainer(cfg, tmp_path / "resumed", Distributed())
    resumed.load_checkpoint()
    resumed.train_step()
    resumed.train_step()
    got, want = resumed.supernet.state_dict(), trainer.supernet.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert any(not torch.equal(want[k], expected[k]) for k in want)  # it did train


def test_specialise_from_needs_one_child_and_the_same_space(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from nag.pipeline.train_supernet import main

    assert main(["--profile", "tiny", "--out", str(tmp_path / "a"), "--specialise-from", "x.pt"]) == 2
    assert main(["--profile", "tiny", "--out", str(tmp_path / "b"), "--arch", "smallest",
                 "--specialise-from", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    assert "--specialise-from fine-tunes one child" in err and "missing.pt" in err and "Traceback" not in err
