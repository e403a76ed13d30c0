from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from nag.space import biggest, sample_uniform, smallest
from nag.space.block import ConvBN, SqueezeExcite, block_ops
from nag.space.plan import child_plan
from nag.supernet import Supernet, calibrate_bn, child, extract_child
from nag.supernet.layers import is_kernel_transform, is_size_transform


def test_child_equals_supernet_after_calibration(space, perturbed_supernet: Supernet, rng: random.Random) -> None:
    calib = torch.rand(500, 1, 28, 28)
    x = torch.rand(16, 1, 28, 28)
    archs = [biggest(space), smallest(space)] + [sample_uniform(space, rng) for _ in range(30)]
    for arch in archs:
        perturbed_supernet.calibrate(arch, calib)
        perturbed_supernet.eval()
        with torch.no_grad():
            expected = perturbed_supernet(x, arch)
            got = child(perturbed_supernet, arch, calib)(x)
        assert got.shape == (16, space.num_classes)
        assert (expected - got).abs().max().item() <= 1e-5, arch.to_json()


def test_supernet_and_static_blocks_hold_the_layers_of_one_op_sequence(space, perturbed_supernet: Supernet,
                                                                       rng: random.Random) -> None:
    kinds = set()
    for arch in [biggest(space), smallest(space), sample_uniform(space, rng)]:
        static = extract_child(perturbed_supernet, arch)
        for b, block in zip(child_plan(arch, space).blocks, static.blocks, strict=True):
            ops = block_ops(b)
            names = [layer.name for layer in ops.layers()]
            assert [name for name, _ in block.named_children()] == names
            assert [name for name, _ in perturbed_supernet.stages[b.stage][b.index].named_children()] == names
            kinds |= {type(op) for op in ops.main} | {ops.shortcut is None}
    assert kinds == {ConvBN, SqueezeExcite, True, False}  # SE and both shortcuts occur in the default space


def test_children_differ_and_calibration_changes_statistics(space, perturbed_supernet: Supernet) -> None:
    calib = torch.rand(250, 1, 28, 28)
    x = torch.rand(4, 1, 28, 28)
    big = child(perturbed_supernet, biggest(space), calib)
    small = child(perturbed_supernet, smallest(space), calib)
    with torch.no_grad():
        assert not torch.allclose(big(x), small(x))
    uncalibrated = extract_child(perturbed_supernet, smallest(space))
    assert torch.allclose(uncalibrated.stem_bn.running_var, torch.ones_like(uncalibrated.stem_bn.running_var))
    assert not torch.allclose(small.stem_bn.running_var, torch.ones_like(small.stem_bn.running_var))


def test_calibration_is_a_cumulative_average(space, perturbed_supernet: Supernet) -> None:
    """Two calibration batches give the same statistics as the mean of two separate calibrations."""
    a, b = torch.rand(100, 1, 28, 28), torch.rand(100, 1, 28, 28) * 0.5
    arch = smallest(space)
    both = calibrate_bn(extract_child(perturbed_supernet, arch), torch.cat([a, b]), batch_size=100)
    only_a = calibrate_bn(extract_child(perturbed_supernet, arch), a, batch_size=100)
    only_b = calibrate_bn(extract_child(perturbed_supernet, arch), b, batch_size=100)
    mean = (only_a.stem_bn.running_mean + only_b.stem_bn.running_mean) / 2
    assert torch.allclose(both.stem_bn.running_mean, mean, atol=1e-6)


def test_biggest_child_trains_every_weight(space) -> None:
    net = Supernet(space)
    x = torch.rand(4, 1, 28, 28)
    F.cross_entropy(net(x, biggest(space), dropout=True), torch.tensor([0, 1, 2, 3])).backward()
    # The elastic-kernel matrices serve the smaller kernels only; the biggest child runs 7x7 everywhere.
    missing = [name for name, p in net.named_parameters() if p.grad is None and not is_kernel_transform(name)]
    assert not missing
    assert all(m.grad is None for m in net.kernel_transforms())
    F.cross_entropy(net(x, smallest(space)), torch.tensor([0, 1, 2, 3])).backward()
    # The smallest child's 3x3 kernels pass through both matrices of each of its active layers (the
    # gradients are zero here only because zero-initialised BN gammas make every block its shortcut).
    assert sum(m.grad is not None for m in net.kernel_transforms()) == 2 * 7  # 7 active layers


def test_small_child_leaves_unused_weights_untouched(space, perturbed_supernet: Supernet) -> None:
    net = perturbed_supernet
    x = torch.rand(4, 1, 28, 28)
    arch = smallest(space)
    F.cross_entropy(net(x, arch), torch.tensor([0, 1, 2, 3])).backward()
    # The deepest layers of every stage are skipped by the smallest child.
    assert net.stages[1][3].expand.weight.grad is None
    # Only the centre 3x3 of the first depthwise kernel receives a gradient.
    grad = net.stages[0][0].depthwise.weight.grad
    assert grad is not None and grad[:, :, 0].abs().sum() == 0 and grad[:, :, 3, 3].abs().sum() > 0


def test_zero_init_residual_makes_blocks_start_as_shortcuts(space) -> None:
    net = Supernet(space)
    assert all(float(layer.project_bn.weight.detach().abs().sum()) == 0 for stage in net.stages for layer in stage)


def test_training_does_not_touch_running_statistics(space) -> None:
    net = Supernet(space).train()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    net(torch.rand(8, 1, 28, 28), biggest(space))
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_supernet_runs_channels_last(space) -> None:
    net = Supernet(space)
    assert net.stem.weight.is_contiguous(memory_format=torch.channels_last)


def test_child_correct_in_onnx_runtime_matches_the_calibrated_supernet(space, perturbed_supernet: Supernet,
                                                                        splits) -> None:
    from nag.export.evaluate import child_accuracy, child_correct

    calib = splits.train.as_float(slice(0, 250))
    data = splits.val.subset(torch.arange(300))
    for arch in [biggest(space), smallest(space), sample_uniform(space, random.Random(5))]:
        perturbed_supernet.calibrate(arch, calib)
        perturbed_supernet.eval()
        with torch.no_grad():
            expected = (perturbed_supernet(data.as_float(), arch).argmax(1) == data.labels).numpy()
        got = child_correct(perturbed_supernet, arch, calib, data, batch_size=128)
        assert got.shape == (300,) and got.dtype == bool
        assert (got == expected).mean() >= 0.99, arch.to_json()
        assert child_accuracy(perturbed_supernet, arch, calib, data, 128) == 100.0 * got.sum() / 300


def test_elastic_kernel_identity_is_the_centre_crop(space, perturbed_supernet: Supernet) -> None:
    """Untrained kernel transforms are the identity: a smaller kernel is exactly the centre of the largest."""
    conv = perturbed_supernet.stages[2][0].depthwise
    assert conv.kernels == (7, 5, 3)
    for kernel in (5, 3):
        start = (7 - kernel) // 2
        crop = conv.weight[:8, :, start : start + kernel, start : start + kernel]
        assert torch.equal(conv.active_weight(8, kernel), crop)


def test_learned_kernel_transforms_reach_the_static_child(space, perturbed_supernet: Supernet,
                                                         rng: random.Random) -> None:
    import copy

    net = copy.deepcopy(perturbed_supernet)
    with torch.no_grad():
        for matrix in net.kernel_transforms():
            matrix.add_(torch.randn_like(matrix) * 0.2)
    calib, x = torch.rand(250, 1, 28, 28), torch.rand(8, 1, 28, 28)
    archs = [sample_uniform(space, rng) for _ in range(8)]
    changed = 0
    for arch in archs:
        net.calibrate(arch, calib)
        net.eval()
        with torch.no_grad():
            expected = net(x, arch)
            static = child(net, arch, calib)
            assert (expected - static(x)).abs().max().item() <= 1e-5, arch.to_json()
            changed += not torch.allclose(static(x), child(perturbed_supernet, arch, calib)(x))
    assert changed == len(archs)  # every child has a kernel below 7 somewhere


def test_a_supernet_saved_without_kernel_transforms_loads_with_identities(space, perturbed_supernet: Supernet
                                                                          ) -> None:
    state = {k: v for k, v in perturbed_supernet.state_dict().items() if not is_kernel_transform(k)}
    net = Supernet(space)
    with torch.no_grad():
        for matrix in net.kernel_transforms():
            matrix.mul_(2.0)
    net.load_state_dict(state)
    assert all(torch.equal(m, torch.eye(m.shape[0])) for m in net.kernel_transforms())
    assert len(net.kernel_transforms()) == sum(len(stage) for stage in net.stages) * 2


def _with_size_transforms(net: Supernet, space) -> Supernet:
    sized = Supernet(space, size_transforms=True)
    missing, unexpected = sized.load_state_dict(net.state_dict(), strict=False)
    assert not unexpected and missing and all(is_size_transform(name) for name in missing)
    return sized


def test_size_transforms_start_as_the_shared_kernels_and_skip_the_largest_resolution(
        space, perturbed_supernet: Supernet, rng: random.Random) -> None:
    sized = _with_size_transforms(perturbed_supernet, space)
    # One matrix per kernel size and per input map size below the largest resolution's: 3 resolutions make
    # 3 sizes everywhere but the last stage's deeper layers, where 20 and 24 both give 3x3 maps.
    plan = child_plan(biggest(space), space)
    for b in plan.blocks:
        conv = sized.stages[b.stage][b.index].depthwise
        assert b.h_in not in conv.map_sizes and len(conv.map_sizes) == (2 if b.h_in == 4 and b.stage == 3 else 3)
    assert len(sized.size_transforms()) == sum(3 * len(sized.stages[b.stage][b.index].depthwise.map_sizes)
                                               for b in plan.blocks)
    x = torch.rand(4, 1, 28, 28)
    for arch in [biggest(space), smallest(space)] + [sample_uniform(space, rng) for _ in range(6)]:
        with torch.no_grad():
            assert torch.equal(sized(x, arch), perturbed_supernet(x, arch)), arch.to_json()


def test_learned_size_transforms_reach_the_static_child_below_the_largest_resolution(
        space, perturbed_supernet: Supernet, rng: random.Random) -> None:
    sized = _with_size_transforms(perturbed_supernet, space)
    with torch.no_grad():
        for matrix in sized.size_transforms():
            matrix.add_(torch.randn_like(matrix) * 0.2)
    calib, x = torch.rand(250, 1, 28, 28), torch.rand(8, 1, 28, 28)
    archs = [smallest(space), biggest(space)] + [sample_uniform(space, rng) for _ in range(8)]
    for arch in archs:
        sized.calibrate(arch, calib)
        sized.eval()
        with torch.no_grad():
            static = child(sized, arch, calib)
            assert (sized(x, arch) - static(x)).abs().max().item() <= 1e-5, arch.to_json()
            shared = child(perturbed_supernet, arch, calib)(x)
        # The largest resolution keeps the shared kernels; every other one runs its own.
        assert torch.allclose(static(x), shared) == (arch.resolution == space.max_resolution), arch.to_json()


def test_size_transforms_learn_from_their_resolution_only_and_carry_no_weight_decay(space) -> None:
    from nag.recipe.sandwich import SandwichObjective

    net = Supernet(space, size_transforms=True)
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(net(x, biggest(space)), y).backward()
    assert all(m.grad is None for m in net.size_transforms())
    F.cross_entropy(net(x, smallest(space)), y).backward()
    used = {name for name, p in net.named_parameters() if is_size_transform(name) and p.grad is not None}
    # The smallest child's 7 layers, each on its map at resolution 16, with its 3x3 kernel.
    assert len(used) == 7 and all(name.endswith("k3") for name in used)
    decayed = {id(p) for p in SandwichObjective(net, 0.1, 4e-5)._decayed}
    assert decayed and not decayed & {id(m) for m in net.size_transforms() + net.kernel_transforms()}


def test_a_supernet_saved_with_size_transforms_loads_with_them(space, perturbed_supernet: Supernet,
                                                               tmp_path) -> None:
    from nag.supernet.io import load_supernet, save_supernet

    sized = _with_size_transforms(perturbed_supernet, space)
    with torch.no_grad():
        for matrix in sized.size_transforms():
            matrix.mul_(1.5)
    images = torch.randint(0, 256, (250, 1, 28, 28), dtype=torch.uint8)
    save_supernet(tmp_path / "sized.pt", sized, images, {})
    save_supernet(tmp_path / "plain.pt", perturbed_supernet, images, {})
    loaded = load_supernet(tmp_path / "sized.pt").supernet
    assert [m.tolist() for m in loaded.size_transforms()] == [m.tolist() for m in sized.size_transforms()]
    assert load_supernet(tmp_path / "plain.pt").supernet.size_transforms() == []
