"""A dimension added the way docs/extending.md says: one registered `Dimension` (with a default and an
effect on the block's plan) and its choice list in a space's JSON. The whole chain follows from it (tokens,
sampling, analytic MACs and parameters, the supernet, the static child, ONNX, latency features), and
bundles written before it load and build the same networks (the dimension takes its default)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import perturbed_supernet_of
from test_dimensions import check_dimension_drives_the_space

from nag.bundle.bundle import load_bundle
from nag.cost.features import arch_features, feature_names
from nag.errors import ArchitectureError, SpaceError
from nag.export import INPUT_NAME, build_onnx
from nag.space import (
    SPACE_DIMENSIONS,
    Architecture,
    Dimension,
    Scope,
    SearchSpace,
    biggest,
    child_plan,
    count_macs,
    count_params,
    decisions,
    load_space,
    register_dimension,
    sample_uniform,
    smallest,
    space_dimensions,
    unregister_dimension,
)
from nag.space.plan import BlockPlan
from nag.space.space import ACTIVATIONS
from nag.supernet import Supernet, child

BUNDLE = Path(__file__).resolve().parent.parent / "bundles" / "default"


def _squeeze(b: BlockPlan, value: int) -> BlockPlan:
    """1 keeps the stage's squeeze-and-excitation, 0 drops it from this layer."""
    return b if value else replace(b, se_mid=0)


def _activation(b: BlockPlan, value: int) -> BlockPlan:
    """0 keeps the stage's activation, 1 + i takes ACTIVATIONS[i] (choices are integers)."""
    return b if value == 0 else replace(b, act=ACTIVATIONS[value - 1])


SQUEEZE = Dimension("squeeze", Scope.LAYER, source="squeezes", family="squeeze", default=1, effect=_squeeze)
ACTIVATION = Dimension("activation", Scope.STAGE, source="activations", family="activation", default=0,
                       effect=_activation)


@pytest.fixture()
def registered() -> Iterator[None]:
    register_dimension(SQUEEZE)
    register_dimension(ACTIVATION)
    try:
        yield
    finally:
        unregister_dimension(ACTIVATION.name)
        unregister_dimension(SQUEEZE.name)


def _extended(base: SearchSpace) -> SearchSpace:
    """`base` with the two dimensions' choice lists: squeezes in the stages that have SE, activations in all."""
    raw = json.loads(base.to_json())
    for stage in raw["stages"]:
        if stage["se"]:
            stage["squeezes"] = [0, 1]
        stage["activations"] = [0, 1, 2]
    return SearchSpace.from_dict(raw)


def _with(arch: Architecture, space: SearchSpace, **values: int) -> Architecture:
    """`arch` with the named registered dimensions at one value wherever their stage offers it."""
    raw = arch.to_dict()
    for i, stage in enumerate(raw["stages"]):
        for d in (SQUEEZE, ACTIVATION):
            if d.name in values and values[d.name] in d.choices(space, i):
                stage[d.name] = [values[d.name]] * stage["depth"] if d.scope is Scope.LAYER else values[d.name]
    return Architecture.from_dict(raw, space)


def _onnx_macs(model: onnx.ModelProto) -> tuple[int, int]:
    """(all, squeeze-excitation) multiply-accumulates of the graph's Conv and Gemm nodes for one image."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.output]}
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    total = se = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            c_out, c_in_per_group, kh, kw = weights[node.input[1]]
            h, w = shapes[node.output[0]][2:]
            macs = h * w * c_out * c_in_per_group * kh * kw
            total += macs
            se += macs if "_se_" in node.name else 0
        elif node.op_type == "Gemm":
            out_features, in_features = weights[node.input[1]]
            total += out_features * in_features
    return total, se


def test_registered_dimensions_drive_the_space(registered: None) -> None:
    space = _extended(load_space())
    assert space_dimensions(space) == (*SPACE_DIMENSIONS, SQUEEZE, ACTIVATION)
    assert SearchSpace.from_dict(json.loads(space.to_json())) == space
    assert json.loads(space.to_json())["stages"][2]["squeezes"] == [0, 1]
    for dim in (SQUEEZE, ACTIVATION):
        check_dimension_drives_the_space(dim, space)
    assert len(decisions(space)) == len(decisions(load_space())) + len(space.stages) + sum(
        s.max_depth for s in space.stages)


def test_the_chain_agrees_on_a_registered_dimension(registered: None) -> None:
    space = _extended(load_space())
    supernet = perturbed_supernet_of(space).eval()
    rng = random.Random(0)
    base = sample_uniform(space, rng)
    archs = {
        "biggest": biggest(space), "smallest": smallest(space), "sampled": base,
        "no squeeze": _with(base, space, squeeze=0), "relu": _with(base, space, activation=1),
        "hswish": _with(base, space, activation=2), "defaults": _with(base, space, squeeze=1, activation=0),
    }
    x = torch.rand(3, 1, 28, 28)
    names = feature_names(space)
    outputs = {}
    for label, arch in archs.items():
        static = child(supernet, arch, None)
        model = build_onnx(static)
        total, se = _onnx_macs(model)
        assert total == count_macs(arch, space), label
        assert count_params(arch, space) == sum(p.numel() for p in static.parameters()), label
        with torch.no_grad():
            elastic, expected = supernet(x, arch).numpy(), static(x).numpy()
        got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {INPUT_NAME: x.numpy()})[0]
        assert np.abs(elastic - expected).max() <= 1e-4, label
        assert np.abs(got - expected).max() <= 1e-4, label
        outputs[label] = expected
        # The latency features see what the ONNX graph holds: its MACs outside the SE gates, its SE layers.
        features = dict(zip(names, arch_features(arch, space), strict=True))
        mmacs = sum(v for name, v in features.items() if name.endswith("_mmacs"))
        assert mmacs * 1e6 == pytest.approx(total - se, rel=1e-9), label
        gates = sum(node.op_type == "HardSigmoid" for node in model.graph.node)
        assert sum(v for name, v in features.items() if name.endswith("_se_layers")) == gates, label
        relus = sum(node.op_type == "Relu" and "_se_" not in node.name for node in model.graph.node)
        blocks = child_plan(arch, space).blocks
        assert relus == 2 * sum(b.act == "relu" for b in blocks) + [space.stem.act, space.head.act].count("relu")
    # Each dimension changes the network; at their defaults it is the network without them.
    assert count_macs(archs["no squeeze"], space) < count_macs(archs["defaults"], space)
    assert not np.allclose(outputs["relu"], outputs["hswish"])
    plain = Architecture.from_dict(archs["defaults"].to_dict(), load_space())
    assert child_plan(plain, load_space()) == child_plan(archs["defaults"], space)


def test_a_bundle_written_before_the_dimension_loads_with_its_default(registered: None) -> None:
    bundle = load_bundle(BUNDLE)
    plain = bundle.space
    assert plain == SearchSpace.from_dict(json.loads((BUNDLE / "space.json").read_text()))
    assert space_dimensions(plain) == SPACE_DIMENSIONS  # its JSON gives no choices for them: not searched
    assert json.loads(plain.to_json()) == bundle.manifest["space"]  # written back as it was stored
    assert "squeezes" not in plain.to_json() and "squeeze" not in biggest(plain).to_json()
    # Its architectures, read in a space that searches the new dimensions, take the defaults.
    space = _extended(plain)
    with (BUNDLE / "triplets.jsonl").open() as lines:
        stored = [json.loads(json.loads(next(lines))["arch_json"]) for _ in range(20)]
    supernet = Supernet(space)
    supernet.load_state_dict(bundle.trained.supernet.state_dict())  # the same weights fit the extended space
    supernet.eval()
    x = torch.rand(2, 1, 28, 28)
    for n, raw in enumerate(stored):
        old, new = Architecture.from_dict(raw, plain), Architecture.from_dict(raw, space)
        assert "squeeze" not in json.dumps(raw)
        assert all(s.value(SQUEEZE) == (1,) * s.depth and s.value(ACTIVATION) == 0 for s in new.stages)
        assert child_plan(new, space) == child_plan(old, plain)
        assert count_macs(new, space) == count_macs(old, plain)
        if n < 3:
            with torch.no_grad():
                assert torch.equal(supernet(x, new), bundle.trained.supernet(x, old))


def test_a_space_that_does_not_search_a_dimension_takes_only_its_default(registered: None) -> None:
    plain = load_space()
    raw = biggest(plain).to_dict()
    assert Architecture.from_dict({**raw, "stages": [{**s, "activation": 0} for s in raw["stages"]]}, plain) == \
        biggest(plain)
    with pytest.raises(ArchitectureError, match="does not search 'activation'"):
        Architecture.from_dict({**raw, "stages": [{**s, "activation": 1} for s in raw["stages"]]}, plain)
    bad = json.loads(plain.to_json())
    bad["stages"][0]["activations"] = []
    with pytest.raises(SpaceError, match="empty choice list"):
        SearchSpace.from_dict(bad)
    with pytest.raises(ValueError, match="taken already"):
        register_dimension(replace(SQUEEZE, name="squeeze2"))


def test_a_registered_dimension_is_served_without_a_proto_change(registered: None) -> None:
    from nag.server.service import architecture_message

    space = _extended(load_space())
    arch = _with(sample_uniform(space, random.Random(3)), space, squeeze=0, activation=2)
    message = architecture_message(arch)  # the typed message: the fields the proto declares
    assert message.resolution == arch.resolution and [s.depth for s in message.stages] == [s.depth for s in arch.stages]
    assert Architecture.from_json(arch.to_json(), space) == arch  # architecture_json: every dimension
    assert any(s["activation"] == 2 for s in json.loads(arch.to_json())["stages"])
