from __future__ import annotations

import random

import pytest
import torch

from nag.data import DataSource, DataSplits, load_splits
from nag.pnag.generator import TokenCost, token_cost
from nag.space import SearchSpace, count_macs, load_space
from nag.supernet import Supernet


@pytest.fixture(scope="session")
def space() -> SearchSpace:
    return load_space()


@pytest.fixture(scope="session")
def splits(space: SearchSpace) -> DataSplits:
    return load_splits(DataSource(), 5000, 0, space.input.size, space.input.channels)


def perturbed_supernet_of(space: SearchSpace) -> Supernet:
    """A supernet (seed 0) whose BN gammas are not zero, so every block contributes to the output."""
    torch.manual_seed(0)
    net = Supernet(space)
    with torch.no_grad():
        for bn in net.batchnorms():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return net


@pytest.fixture()
def perturbed_supernet(space: SearchSpace) -> Supernet:
    return perturbed_supernet_of(space)


@pytest.fixture(scope="session")
def macs_cost(space: SearchSpace) -> TokenCost:
    """Token sequences -> their MMACs: the cost model of the synthetic evaluators in the tests."""
    return token_cost(lambda archs: [count_macs(a, space) / 1e6 for a in archs], space)


@pytest.fixture()
def rng() -> random.Random:
    return random.Random(1234)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory):
    """A complete bundle built by the real pipeline with the `tiny` profile (flops device only)."""
    from nag.config import pipeline
    from nag.pipeline.train_generator import build

    base = tmp_path_factory.mktemp("bundles")
    build(base / "tiny", pipeline("tiny"), run_dir=base / "run", progress=False)
    return base / "tiny"
