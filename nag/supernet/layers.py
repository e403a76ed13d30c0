"""Elastic layers: they hold the largest weights and run with a prefix of channels or a cropped kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def activation(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "relu":
        return F.relu(x)
    if name == "hswish":
        return F.hardswish(x)
    raise ValueError(f"unknown activation {name!r}")


class ElasticConv(nn.Module):
    """A dense convolution whose output channels are a prefix of `max_out`; input channels follow x."""

    def __init__(self, max_in: int, max_out: int, kernel: int = 1, stride: int = 1, bias: bool = False):
        super().__init__()
        self.kernel = kernel
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(max_out, max_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(max_out)) if bias else None
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, out_channels: int) -> torch.Tensor:
        weight = self.weight[:out_channels, : x.shape[1]]
        bias = None if self.bias is None else self.bias[:out_channels]
        return F.conv2d(x, weight, bias, self.stride, self.kernel // 2)


def size_key(map_size: int, kernel: int) -> str:
    return f"s{map_size}k{kernel}"


def is_kernel_transform(name: str) -> bool:
    """Whether a parameter name is one of the elastic kernel's matrices between kernel sizes."""
    return ".kernel_transforms." in name


def is_size_transform(name: str) -> bool:
    """Whether a parameter name is one of the kernel matrices per input map size."""
    return ".size_transforms." in name


def is_kernel_matrix(name: str) -> bool:
    """Whether a parameter name is any kernel matrix (no weight decay, opt-in learning)."""
    return is_kernel_transform(name) or is_size_transform(name)


class ElasticDepthwiseConv(nn.Module):
    """Depthwise convolution; channels follow x, a smaller kernel comes from the next larger one.

    A kernel of size k is the centre crop of the next larger kernel's (transformed) weights, passed
    through a k²×k² matrix shared by the layer's channels (OFA's elastic kernel, section 3.2): the
    small kernels get weights of their own instead of reusing the large kernel's centre as is. The
    matrices start as the identity (a plain centre crop) and are frozen there unless the training
    recipe lets them learn (`kernel_transform`).

    `map_sizes` are the input map sizes the layer sees at the space's resolutions other than the largest.
    For each of them and each kernel size the kernel passes through one more k²×k² matrix of its own
    (`size_transforms`, identity at first): the same kernel on a 4×4 and on a 7×7 map covers a different
    share of the object, so the resolution-16 children may learn their own version of the weights the
    resolution-28 children use. At the largest resolution the kernels are the shared ones, unchanged.
    """

    def __init__(self, max_channels: int, kernels: tuple[int, ...] | list[int], stride: int,
                 map_sizes: tuple[int, ...] | list[int] = ()):
        super().__init__()
        self.kernels = tuple(sorted(set(kernels), reverse=True))
        self.max_kernel = self.kernels[0]
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(max_channels, 1, self.max_kernel, self.max_kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.kernel_transforms = nn.ParameterList(nn.Parameter(torch.eye(k * k)) for k in self.kernels[1:])
        self.map_sizes = tuple(sorted(set(map_sizes)))
        self.size_transforms = nn.ParameterDict(
            {size_key(size, k): nn.Parameter(torch.eye(k * k)) for size in self.map_sizes for k in self.kernels}
        )

    def active_weight(self, channels: int, kernel: int, map_size: int | None = None) -> torch.Tensor:
        """The kernel of a child: `channels` channels, size `kernel`, on input maps of `map_size`."""
        if kernel not in self.kernels:
            raise ValueError(f"kernel {kernel} is not one of {list(self.kernels)}")
        weight = self.weight[:channels]
        size = self.max_kernel
        for smaller, transform in zip(self.kernels[1:], self.kernel_transforms, strict=True):
            if size == kernel:
                break
            start = (size - smaller) // 2
            crop = weight[:, :, start : start + smaller, start : start + smaller]
            weight = (crop.reshape(channels, smaller * smaller) @ transform).reshape(channels, 1, smaller, smaller)
            size = smaller
        if map_size in self.map_sizes:
            matrix = self.size_transforms[size_key(map_size, kernel)]
            weight = (weight.reshape(channels, kernel * kernel) @ matrix).reshape(channels, 1, kernel, kernel)
        return weight

    def forward(self, x: torch.Tensor, kernel: int) -> torch.Tensor:
        weight = self.active_weight(x.shape[1], kernel, x.shape[-1])
        return F.conv2d(x, weight, None, self.stride, kernel // 2, 1, x.shape[1])

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:  # type: ignore[override]
        # Supernets trained before the elastic kernel carry no matrices: theirs are the identity.
        for i, k in enumerate(self.kernels[1:]):
            state_dict.setdefault(f"{prefix}kernel_transforms.{i}", torch.eye(k * k))
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[arg-type]


class ElasticBatchNorm(nn.Module):
    """BatchNorm over a prefix of channels.

    Training uses batch statistics and accumulates nothing (BigNAS: statistics are ill-defined
    across children). Calibration (`accumulate=True` in train mode) accumulates a cumulative average
    into the running statistics of the active prefix, exactly as `nn.BatchNorm2d(momentum=None)`.
    """

    def __init__(self, max_channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(max_channels))
        self.bias = nn.Parameter(torch.zeros(max_channels))
        self.register_buffer("running_mean", torch.zeros(max_channels))
        self.register_buffer("running_var", torch.ones(max_channels))
        self.accumulate = False
        self.batches_seen = 0

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.batches_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        weight, bias = self.weight[:c], self.bias[:c]
        if not self.training:
            return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], weight, bias, False, 0.0, self.eps)
        if not self.accumulate:
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        self.batches_seen += 1
        # Prefix slices of 1-D buffers are views, so batch_norm updates the buffers in place.
        return F.batch_norm(
            x, self.running_mean[:c], self.running_var[:c], weight, bias, True, 1.0 / self.batches_seen, self.eps
        )
