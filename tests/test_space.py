from __future__ import annotations

import json
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from nag.errors import ArchitectureError, SpaceError
from nag.space import (
    DIMENSIONS,
    Architecture,
    biggest,
    count_macs,
    count_params,
    decisions,
    from_tokens,
    load_space,
    mutate,
    sample_uniform,
    smallest,
    to_tokens,
    validate,
    with_dimension_of,
)
from nag.space.space import SearchSpace
from nag.supernet import extract_child


def test_default_space_shape(space: SearchSpace) -> None:
    assert space.input.size == 28 and space.input.channels == 1
    assert 4 <= len(space.stages) <= 5
    assert space.stem.stride == 2
    assert all(s.kernels == (3, 5, 7) and s.expansions == (3, 4, 6) for s in space.stages)
    assert any(s.se for s in space.stages[2:]) and not space.stages[0].se


def test_bad_space_files_are_refused(tmp_path) -> None:
    raw = json.loads(load_space().to_json())
    bad = dict(raw, resolutions=[4, 28])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(SpaceError, match="resolutions"):
        load_space(tmp_path / "bad.json")
    del raw["stem"]
    (tmp_path / "missing.json").write_text(json.dumps(raw))
    with pytest.raises(SpaceError, match="stem"):
        load_space(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(SpaceError, match="not valid JSON"):
        load_space(tmp_path / "junk.json")
    with pytest.raises(SpaceError, match="does not exist"):
        load_space(tmp_path / "nope.json")


def test_space_json_round_trip(space: SearchSpace) -> None:
    assert SearchSpace.from_dict(json.loads(space.to_json())) == space


def test_canonical_json_and_stable_id(space: SearchSpace, rng: random.Random) -> None:
    arch = sample_uniform(space, rng)
    again = Architecture.from_json(arch.to_json(), space)
    assert again == arch and again.arch_id == arch.arch_id
    shuffled = json.dumps(dict(reversed(list(arch.to_dict().items()))))
    assert Architecture.from_json(shuffled, space).to_json() == arch.to_json()
    assert biggest(space).arch_id != smallest(space).arch_id
    assert len(arch.arch_id) == 16


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d.update(resolution=27), "resolution"),
        (lambda d: d["stages"][2].update(width=33), r"stages\[2\].width"),
        (lambda d: d["stages"][1]["kernels"].__setitem__(1, 9), r"stages\[1\].kernels\[1\]"),
        (lambda d: d["stages"][0].update(depth=2, kernels=[3], expansions=[3]), r"stages\[0\].kernels has 1"),
        (lambda d: d["stages"].pop(), "stages has 3 entries"),
        (lambda d: d.update(stem_width="8"), "stem_width"),
        (lambda d: d.pop("resolution"), "resolution"),
    ],
)
def test_validation_names_the_bad_field(space: SearchSpace, edit, field: str) -> None:
    raw = smallest(space).to_dict()
    edit(raw)
    with pytest.raises(ArchitectureError, match=field):
        Architecture.from_dict(raw, space)


def test_extremes(space: SearchSpace, rng: random.Random) -> None:
    lo, hi = count_macs(smallest(space), space), count_macs(biggest(space), space)
    assert lo * 10 < hi
    for _ in range(200):
        macs = count_macs(sample_uniform(space, rng), space)
        assert lo <= macs <= hi


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_tokens_round_trip(seed: int) -> None:
    space = load_space()
    arch = sample_uniform(space, random.Random(seed))
    tokens = to_tokens(arch, space)
    assert len(tokens) == len(decisions(space))
    assert from_tokens(tokens, space) == arch


@settings(max_examples=100, deadline=None)
@given(tokens=st.data())
def test_any_token_sequence_decodes_to_a_valid_architecture(tokens) -> None:
    space = load_space()
    seq = [tokens.draw(st.integers(0, len(d.choices) - 1)) for d in decisions(space)]
    validate(from_tokens(seq, space), space)


def test_bad_tokens_are_refused(space: SearchSpace) -> None:
    with pytest.raises(ArchitectureError, match="tokens"):
        from_tokens([0, 0], space)
    seq = to_tokens(smallest(space), space)
    seq[0] = 99
    with pytest.raises(ArchitectureError, match="resolution"):
        from_tokens(seq, space)


def test_mutation_changes_some_and_stays_valid(space: SearchSpace, rng: random.Random) -> None:
    arch = sample_uniform(space, rng)
    mutants = [mutate(arch, space, rng, prob=0.3) for _ in range(50)]
    for m in mutants:
        validate(m, space)
    assert any(m != arch for m in mutants)
    assert mutate(arch, space, rng, prob=0.0) == arch


def test_sampling_is_seeded(space: SearchSpace) -> None:
    a = [sample_uniform(space, random.Random(5)) for _ in range(2)]
    assert a[0] == a[1]


def test_analytic_macs_and_params_match_the_static_child(space: SearchSpace, perturbed_supernet, rng) -> None:
    archs = [biggest(space), smallest(space)] + [sample_uniform(space, rng) for _ in range(20)]
    x = torch.rand(1, 1, 28, 28)
    for arch in archs:
        child = extract_child(perturbed_supernet, arch)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            child(x)
        counted = counter.get_total_flops() / 2
        assert abs(count_macs(arch, space) - counted) <= 0.01 * counted, arch.to_json()
        assert count_params(arch, space) == sum(p.numel() for p in child.parameters())


def test_one_dimension_from_the_other_end_changes_only_that_dimension() -> None:
    space = load_space()
    low, high = smallest(space), biggest(space)
    kernels = with_dimension_of(low, high, "kernel", space)
    assert all(set(s.kernels) == {max(space.stages[i].kernels)} for i, s in enumerate(kernels.stages))
    assert [s.depth for s in kernels.stages] == [s.depth for s in low.stages] and kernels.resolution == low.resolution
    deeper = with_dimension_of(low, high, "depth", space)
    assert [s.depth for s in deeper.stages] == [s.depth for s in high.stages]
    assert all(set(s.kernels) == {min(space.stages[i].kernels)} for i, s in enumerate(deeper.stages))
    for dim in DIMENSIONS:
        assert with_dimension_of(low, high, dim, space) not in (low, high)
        assert with_dimension_of(low, low, dim, space) == low
