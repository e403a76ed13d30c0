"""The sandwich's per-child loss terms, and the gradient-conflict benchmark built on them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from benchmarks.gradient_conflict import biggest_vs_students, child_roles, cosines_with_the_rest, flatten
from benchmarks.gradient_conflict import main as gradient_conflict
from nag.config import profile
from nag.recipe.sandwich import SandwichObjective
from nag.space import biggest, sample_uniform, smallest
from nag.supernet.io import save_supernet


def test_child_losses_split_the_step_loss_and_its_gradient_exactly(space, perturbed_supernet) -> None:
    net = perturbed_supernet
    objective = SandwichObjective(net, 0.1, 4e-5, middle_slices=2, student_label_weight=0.5)
    images, labels = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    rng = random.Random(3)
    children = [biggest(space), smallest(space), *(sample_uniform(space, rng) for _ in range(3))]
    params = list(net.parameters())

    torch.manual_seed(7)  # the teacher's dropout
    step_loss = objective(images, labels, children)
    step_grad = torch.autograd.grad(step_loss, params, allow_unused=True)
    torch.manual_seed(7)
    terms = objective.child_losses(images, labels, children)
    decay = 0.5 * 4e-5 * sum(p.pow(2).sum() for p in objective._decayed)
    assert len(terms) == len(children)
    assert torch.allclose(sum(terms) + decay, step_loss, atol=1e-6)
    per_child = [torch.autograd.grad(t, params, allow_unused=True) for t in terms]
    decay_grad = torch.autograd.grad(decay, params, allow_unused=True)
    for i, (whole, p) in enumerate(zip(step_grad, params, strict=True)):
        parts = [g[i] for g in (*per_child, decay_grad) if g[i] is not None]
        if whole is None:
            assert not parts
            continue
        assert torch.allclose(sum(parts), whole, atol=1e-6), f"parameter {i} ({tuple(p.shape)})"
    # The smallest's term reaches fewer weights than the biggest's.
    assert sum(g is not None for g in per_child[1]) < sum(g is not None for g in per_child[0])


def test_conflict_measures_on_gradients_with_known_answers() -> None:
    params = [torch.zeros(2), torch.zeros(3), torch.zeros(1)]
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0, 0.0])
    # A student that agrees with the biggest on the second tensor and points against it on the first; the
    # third tensor the biggest alone uses.
    big = [a, b, torch.tensor([1.0])]
    student = [-a, b, None]
    result = biggest_vs_students(big, flatten(big, params), flatten(student, params), params)
    assert result.shared_tensors == 2 and result.conflicting_tensors == 1
    big_norm2 = 9 + 16 + 1
    assert result.conflicting_norm_share == pytest.approx(9 / big_norm2)
    # Tensor by tensor the projection removes all of the first tensor's part; over the whole gradient the dot
    # product is -9 + 16 = 7 > 0: no conflict, nothing removed.
    assert result.projected_share_per_tensor == pytest.approx(9 / big_norm2)
    assert result.projected_share_whole == 0.0
    assert result.cosine == pytest.approx(7 / (big_norm2 ** 0.5 * 5))
    opposed = biggest_vs_students(big, flatten(big, params), flatten([-a, -b, None], params), params)
    assert opposed.cosine < 0 and opposed.projected_share_whole == pytest.approx(25 / big_norm2)

    # Two identical children agree with each other; a third pointing the other way makes the rest disagree.
    same = cosines_with_the_rest([flatten(big, params)] * 2)
    assert same == pytest.approx([1.0, 1.0])
    negative = [-a, -b, torch.tensor([-1.0])]
    three = cosines_with_the_rest([flatten(g, params) for g in (big, big, negative)])
    assert three[0] == pytest.approx(0.0) and three[2] == pytest.approx(-1.0)


def test_roles_follow_the_trainers_order() -> None:
    cfg = profile("default").with_overrides(resolution_corners=True, num_middle_children=4,
                                            uniform_middle_children=1, lowest_resolution_middle_children=1)
    assert child_roles(cfg) == ["biggest", "smallest", "biggest at the lowest resolution",
                                "smallest at the highest resolution", "middle 1 (uniform)",
                                "middle 2 (uniform at the lowest resolution)", "middle 3 (stratified)",
                                "middle 4 (stratified)"]


def test_gradient_conflict_benchmark_end_to_end(tmp_path: Path, space, perturbed_supernet, capsys) -> None:
    supernet_path = tmp_path / "supernet.pt"
    save_supernet(supernet_path, perturbed_supernet, torch.zeros(4, 1, 28, 28, dtype=torch.uint8), {})
    out = tmp_path / "results"
    args = ["--supernet", str(supernet_path), "--profile", "tiny", "--steps", "2", "--first-step", "1",
            "--threads", "1", "--out", str(out), "--name", "gc"]
    assert gradient_conflict(args) == 0
    data = json.loads((out / "gc.json").read_text())
    assert [row["step"] for row in data["steps"]] == [1, 2]
    roles = child_roles(profile("tiny"))
    assert [c["role"] for c in data["steps"][0]["children"]] == roles
    for row in data["steps"]:
        assert all(-1.0 <= c["cosine_with_the_rest"] <= 1.0 and c["grad_norm"] > 0 for c in row["children"])
        versus = row["biggest_vs_students"]
        assert 0 <= versus["conflicting_tensors"] <= versus["shared_tensors"] > 0
        assert 0.0 <= versus["projected_share_per_tensor"] <= versus["conflicting_norm_share"] <= 1.0
    assert set(data["summary"]["per_role"]) == set(roles)
    assert (out / "gc.md").read_text().startswith("# Gradient conflict")

    # A supernet file given as a checkpoint: one readable line, exit 2, nothing written.
    capsys.readouterr()
    assert gradient_conflict(["--checkpoint", str(supernet_path), "--out", str(out), "--name", "bad"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a training checkpoint" in err and "Traceback" not in err
    assert not (out / "bad.json").exists()
