"""Layer features of an architecture for latency prediction.

Latency on a CPU is close to a sum over operators of (fixed overhead + work / throughput), where the
throughput depends on the operator type, the kernel and the feature-map size. The features are
therefore sums of MACs and of touched activations per operator type and per stage (each stage has
its own spatial size), plus layer counts for the per-operator overheads, depthwise and
squeeze-and-excitation channels for the per-channel overheads (ONNX Runtime's depthwise kernels loop
over channels), and one indicator per input resolution for its fixed costs. A linear model on them is
a learned per-layer lookup table that generalises to layers it has not seen; what each feature group
adds to its accuracy was measured on the `cpu` device (docs/devices.md).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from nag.space.arch import Architecture
from nag.space.plan import child_plan
from nag.space.space import SearchSpace

_GLOBAL = ("bias", "resize", "stem_mmacs", "head_mmacs", "input_kpixels")


def space_kernels(space: SearchSpace) -> tuple[int, ...]:
    """Every depthwise kernel size of the space, ascending: each gets its own MACs and channel features."""
    return tuple(sorted({k for stage in space.stages for k in stage.kernels}))


@functools.lru_cache(maxsize=32)
def _per_stage(kernels: tuple[int, ...]) -> tuple[str, ...]:
    return ("layers", "se_layers", "expand_mmacs", *(f"dw{k}_mmacs" for k in kernels), "project_mmacs",
            "activations_100k", *(f"dw{k}_100ch" for k in kernels), "se_100ch")


def feature_names(space: SearchSpace) -> list[str]:
    per_stage = _per_stage(space_kernels(space))
    return (list(_GLOBAL) + [f"resolution_{r}" for r in space.resolutions]
            + [f"s{i}_{name}" for i in range(len(space.stages)) for name in per_stage])


def arch_features(arch: Architecture, space: SearchSpace) -> np.ndarray:
    p = child_plan(arch, space)
    g = np.zeros(len(_GLOBAL))
    g[0] = 1.0
    g[1] = float(p.resolution != space.input.size)
    g[2] = p.stem_out**2 * p.in_channels * p.stem_width * p.stem_kernel**2 / 1e6
    g[3] = (p.head_size**2 * p.head_in * p.head_width + p.head_width * p.num_classes) / 1e6
    g[4] = p.resolution**2 / 1e3
    kernels = space_kernels(space)
    n = len(kernels)
    # Row layout (`_per_stage`): 0 layers, 1 se_layers, 2 expand, 3.. dw MACs per kernel, then project,
    # activations, dw channels per kernel, se channels.
    project, activations, channels, se = 3 + n, 4 + n, 5 + n, 5 + 2 * n
    stages = np.zeros((len(space.stages), 6 + 2 * n))
    for b in p.blocks:
        row = stages[b.stage]
        slot = kernels.index(b.kernel)
        row[0] += 1
        row[1] += bool(b.se_mid)
        row[2] += b.h_in**2 * b.c_in * b.mid / 1e6
        row[3 + slot] += b.h_out**2 * b.mid * b.kernel**2 / 1e6
        row[channels + slot] += b.mid / 100
        row[se] += b.se_mid / 100
        row[project] += (b.h_out**2 * b.mid * b.c_out + (b.h_out**2 * b.c_in * b.c_out if b.shortcut_conv else 0)) / 1e6
        row[activations] += b.mid * (b.h_in**2 + 2 * b.h_out**2) / 1e5
    resolution = np.array([float(p.resolution == r) for r in space.resolutions])
    return np.concatenate([g, resolution, stages.ravel()])


def features_matrix(archs: Sequence[Architecture], space: SearchSpace) -> np.ndarray:
    return np.stack([arch_features(a, space) for a in archs]) if archs else np.zeros((0, len(feature_names(space))))
