"""Faster R-CNN detectors built from torchvision parts.

The detector is assembled explicitly (backbone -> FPN -> RPN -> RoI heads) rather than through
``fasterrcnn_resnet50_fpn`` so that the architecture, normalisation layers, FPN width, anchors and
proposal counts are all set from the configuration. The defaults suit small (~100 px) galaxy
images whose clumps are a few pixels across: native resolution (no resize), an FPN on the stride-4
to stride-16 stages (a 96 px image's stride-32 map is 3 x 3 pixels: no clump is resolved there,
and for a ResNet it is three quarters of the weights and a third of a CPU training step), square
anchors from 8 px, a few hundred proposals, RoIAlign with one sample per bin.
"""

from __future__ import annotations

import hashlib
import math
import os
import urllib.error
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import get_model_weights, get_weight
from torchvision.models import mobilenet_v3_large, mobilenet_v3_small, resnet18, resnet34, resnet50
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign, nms
from torchvision.ops.poolers import initLevelMapper
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from clumpfinder.compute import autocast
from clumpfinder.imaging import read_image
from clumpfinder.io import atomic_path, known_fields
from clumpfinder.labels.cache import ImageCache

CLASSES = ("clump", "odd_clump")  # COCO category ids 1 and 2; 0 is background

_RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}
_MOBILENETS = {"mobilenet_v3_large": mobilenet_v3_large, "mobilenet_v3_small": mobilenet_v3_small}
ARCHITECTURES = tuple(_RESNETS) + tuple(_MOBILENETS)  # plus any "timm:<model name>"
INIT_KINDS = ("scratch", "torchvision", "hf_hub", "file", "pretrain")
PRETRAIN_TASKS = ("morphology", "clumpy")
_HEADS = ("fc.", "classifier.", "head.")  # classifier keys an encoder file may lack or carry


def init_kind(init: str) -> str:
    """``scratch``, ``torchvision``, ``hf_hub``, ``file`` or ``pretrain`` (the part before ':')."""
    return init.split(":", 1)[0]


def timm_name(arch: str) -> str | None:
    return arch.split(":", 1)[1] if arch.startswith("timm:") else None


@dataclass
class BackboneSpec:
    """One backbone entry of the configuration.

    ``init`` is one of ``scratch``; ``torchvision:<Weights enum>.<name>``; ``hf_hub:<repo id>``
    (a timm model on the Hugging Face hub, e.g. the Zoobot encoders); ``file:<path>`` (a state
    dict); ``pretrain:morphology`` / ``pretrain:clumpy`` (the workflow's own pretraining stages,
    whose output the workflow passes in as ``init_file``). ``base_init`` is what the clumpy
    classifier of ``pretrain:clumpy`` starts from.
    """

    arch: str
    init: str = "scratch"
    trainable_layers: int = 5
    fpn_channels: int = 64
    normalization: str = "imagenet"  # or "unit": inputs in [0, 1] with no mean/std
    batchnorm: str = "auto"  # "frozen", "trainable"; auto = trainable from scratch, frozen otherwise
    base_init: str | None = None
    init_file: str | None = None

    def __post_init__(self) -> None:
        name = timm_name(self.arch)
        if name is None and self.arch not in ARCHITECTURES:
            raise ValueError(
                f"backbone arch {self.arch!r} is not one of {', '.join(ARCHITECTURES)} or 'timm:<model name>'"
            )
        if name is not None:
            import timm

            if not timm.is_model(name):
                raise ValueError(f"backbone arch {self.arch!r}: timm has no model {name!r}")
        check_init(self.init, self.arch)
        if self.init == "pretrain:clumpy":
            if not self.base_init:
                raise ValueError("backbone init 'pretrain:clumpy' needs base_init (what the classifier starts from)")
            if self.base_init == "pretrain:clumpy":
                raise ValueError("backbone base_init cannot itself be 'pretrain:clumpy'")
            check_init(self.base_init, self.arch)
        if not 0 <= self.trainable_layers <= 5:
            raise ValueError(f"backbone trainable_layers must be in 0..5, got {self.trainable_layers}")
        if self.batchnorm not in ("auto", "frozen", "trainable"):
            raise ValueError(f"backbone batchnorm {self.batchnorm!r} is not 'auto', 'frozen' or 'trainable'")
        if self.init == "scratch" and self.batchnorm == "frozen":
            raise ValueError("backbone batchnorm 'frozen' needs pretrained statistics; init 'scratch' has none")
        if self.normalization not in ("imagenet", "unit"):
            raise ValueError(f"backbone normalization {self.normalization!r} is not 'imagenet' or 'unit'")


def check_init(init: str, arch: str) -> None:
    """A clear error for an initialisation that cannot apply to ``arch``."""
    kind, _, value = init.partition(":")
    if kind not in INIT_KINDS or (kind == "scratch") != (value == ""):
        raise ValueError(
            f"backbone init {init!r} is not 'scratch', 'torchvision:<weights>', 'hf_hub:<repo>', 'file:<path>' "
            f"or 'pretrain:{{{','.join(PRETRAIN_TASKS)}}}'"
        )
    if kind == "torchvision":
        if timm_name(arch):
            raise ValueError(f"backbone init {init!r}: torchvision weights need a torchvision arch, not {arch!r}")
        try:
            weights = get_weight(value)
        except (ValueError, KeyError, AttributeError):
            raise ValueError(f"backbone init {init!r}: torchvision has no weights {value!r}") from None
        if weights not in list(get_model_weights(arch)):
            raise ValueError(f"backbone init {init!r}: {value} are not weights of {arch}")
    elif kind == "hf_hub" and value.count("/") != 1:
        raise ValueError(f"backbone init {init!r}: expected hf_hub:<owner>/<name>")
    elif kind == "pretrain" and value not in PRETRAIN_TASKS:
        raise ValueError(f"backbone init {init!r}: pretraining task must be one of {', '.join(PRETRAIN_TASKS)}")
    elif kind == "hf_hub" and arch.startswith("mobilenet"):
        raise ValueError(f"backbone init {init!r}: hub (timm) weights fit torchvision ResNets or 'timm:<name>' archs")


#: strides of the backbone stages an FPN can take (a ResNet's layer1..layer4)
STRIDES = (4, 8, 16, 32)
#: what a model file that predates a detector key was built with
_FILE_DEFAULTS = {"max_stride": 32, "roi_sampling_ratio": 2}


@dataclass
class DetectorSpec:
    """Detector head settings shared by all backbones."""

    image_size: int = 128
    anchor_sizes: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    anchor_ratios: list[float] = field(default_factory=lambda: [1.0])
    rpn_pre_nms_top_n_train: int = 300
    rpn_post_nms_top_n_train: int = 150
    rpn_pre_nms_top_n_test: int = 300
    rpn_post_nms_top_n_test: int = 150
    rpn_batch_size_per_image: int = 128
    box_batch_size_per_image: int = 64
    representation_size: int = 256
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 50
    class_agnostic_nms: float | None = 0.5  # IoU; None keeps torchvision's per-class NMS only
    max_stride: int = 16  # the deepest backbone stage that feeds the FPN (4, 8, 16 or 32)
    roi_sampling_ratio: int = 1  # RoIAlign samples per bin side (0: adaptive, as in Detectron2)

    def __post_init__(self) -> None:
        if self.max_stride not in STRIDES:
            raise ValueError(f"detector.max_stride must be one of {list(STRIDES)}, got {self.max_stride}")
        if len(self.anchor_sizes) != self.n_levels:
            raise ValueError(
                f"detector.anchor_sizes needs {self.n_levels} sizes, one per FPN level (strides "
                f"{', '.join(str(s) for s in self.strides)} and the max-pooled level above), got {list(self.anchor_sizes)}"
            )
        if self.roi_sampling_ratio < 0:
            raise ValueError(f"detector.roi_sampling_ratio must be >= 0 (0: adaptive), got {self.roi_sampling_ratio}")

    @property
    def strides(self) -> tuple[int, ...]:
        """Strides of the backbone stages that feed the FPN."""
        return tuple(s for s in STRIDES if s <= self.max_stride)

    @property
    def n_levels(self) -> int:
        """FPN levels: one per backbone stage, and a max-pooled one above the last."""
        return len(self.strides) + 1

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "DetectorSpec":
        return cls(**known_fields(cls, cfg, "detector"))



def frozen_bn(spec: BackboneSpec) -> bool:
    """Trained from scratch the statistics must be learnt: ordinary BatchNorm. (Frozen BN with
    identity statistics, torchvision's default for detection backbones, would leave the network
    unnormalised.) Pretrained initialisations keep their statistics (FrozenBatchNorm2d, as
    torchvision and Popp et al. do) unless ``batchnorm: trainable``: then the statistics adapt to
    the detection images during training (the affine parameters of frozen stages stay frozen)."""
    return spec.batchnorm == "frozen" or (spec.batchnorm == "auto" and spec.init != "scratch")


def _norm_layer(spec: BackboneSpec):
    return FrozenBatchNorm2d if frozen_bn(spec) else nn.BatchNorm2d


# ----------------------------------------------------------------------------- weights on disk
def torchvision_weights_path(spec: BackboneSpec) -> Path:
    """Where torchvision's loader caches the weights of a ``torchvision:`` init."""
    weights = get_weight(spec.init.split(":", 1)[1])
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def hf_hub_cache_dir(repo: str) -> Path:
    """The Hugging Face cache folder of a hub repository (``$HF_HOME/hub/models--owner--name``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))


def init_digest(spec: BackboneSpec) -> str | None:
    """SHA-256 of the weights file a ``file:`` or ``pretrain:`` init reads (None for other inits):
    part of a checkpoint's fingerprint, so that a re-made encoder never resumes an old run."""
    if init_kind(spec.init) not in ("file", "pretrain"):
        return None
    return hashlib.sha256(init_file(spec).read_bytes()).hexdigest()


def init_file(spec: BackboneSpec) -> Path:
    """The weights file of a ``file:`` or ``pretrain:`` init."""
    kind, _, value = spec.init.partition(":")
    if kind == "file":
        return Path(value)
    if kind == "pretrain":
        if not spec.init_file:
            raise ValueError(f"backbone init {spec.init!r}: the workflow did not pass the pretrained encoder file")
        return Path(spec.init_file)
    raise ValueError(f"backbone init {spec.init!r} has no weights file of its own")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` or ``torch.save`` file (plain, or under 'state_dict'
    / 'model' as training checkpoints store it); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"backbone weights file {path} cannot be read: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"backbone weights file {path} is not a state dict of tensors")
    return state


def _hub_error(repo: str, err: Exception) -> FileNotFoundError:
    return FileNotFoundError(
        f"backbone init 'hf_hub:{repo}': config.json and model.safetensors are not in the Hugging Face cache "
        f"{hf_hub_cache_dir(repo)} and could not be downloaded ({type(err).__name__}: {err}). Run the fetch_weights "
        "rule where there is network (it is a localrule), or copy a filled cache there / set HF_HOME to one"
    )


def _hub_architecture(spec: BackboneSpec) -> str:
    """The timm architecture named by the config.json of an ``hf_hub:`` init (from the cache or
    the hub); for a ``timm:`` arch it must be that architecture."""
    from timm.models import load_model_config_from_hf

    repo = spec.init.partition(":")[2]
    try:
        _, model_name, _ = load_model_config_from_hf(repo)
    except Exception as err:
        raise _hub_error(repo, err) from None
    name = timm_name(spec.arch)
    if name is not None and name != model_name:
        raise ValueError(f"backbone init {spec.init!r} holds a timm {model_name!r}, but the backbone arch is {spec.arch!r}")
    return model_name


def fetch_weights(spec: BackboneSpec) -> dict[str, Any]:
    """Download a hub init into its library's cache (a no-op when cached) and describe the file;
    fails with an error naming the file and where to put it when it cannot be fetched."""
    kind, _, value = spec.init.partition(":")
    if kind == "torchvision":
        state_path = torchvision_weights_path(spec)
        _torchvision_state(spec)
    elif kind == "hf_hub":
        from huggingface_hub import try_to_load_from_cache
        from timm.models import load_state_dict_from_hf

        _hub_architecture(spec)
        try:
            load_state_dict_from_hf(value)
        except Exception as err:
            raise _hub_error(value, err) from None
        cached = try_to_load_from_cache(value, "model.safetensors") or try_to_load_from_cache(value, "pytorch_model.bin")
        state_path = Path(cached) if isinstance(cached, str) else hf_hub_cache_dir(value)
    else:
        raise ValueError(f"backbone init {spec.init!r} is not fetched from a hub")
    return {"init": spec.init, "path": str(state_path), "bytes": state_path.stat().st_size if state_path.is_file() else None}


def _torchvision_state(spec: BackboneSpec) -> dict[str, torch.Tensor]:
    weights = get_weight(spec.init.split(":", 1)[1])
    try:
        return weights.get_state_dict(progress=False)
    except (urllib.error.URLError, OSError) as err:
        raise FileNotFoundError(
            f"backbone init {spec.init!r}: weights file {torchvision_weights_path(spec)} is not cached and could "
            f"not be downloaded from {weights.url} ({err}); run the fetch_weights rule where there is network, or "
            "download it and copy it there (or set TORCH_HOME to a cache that has it)"
        ) from None


def init_state_dict(spec: BackboneSpec) -> dict[str, torch.Tensor]:
    """The initial weights of a torchvision-architecture backbone, through each source's real
    loader: torchvision's weights cache, timm's Hugging Face hub loader, or a file."""
    kind, _, value = spec.init.partition(":")
    if kind == "torchvision":
        return _torchvision_state(spec)
    if kind == "hf_hub":
        import timm

        _hub_architecture(spec)  # a clear error when the hub files are missing
        try:
            model = timm.create_model(f"hf-hub:{value}", pretrained=True, num_classes=0,
                                      pretrained_cfg_overlay={"num_classes": 0})
        except OSError as err:
            raise _hub_error(value, err) from None
        return model.state_dict()
    if kind in ("file", "pretrain"):
        return read_state_dict(init_file(spec))
    raise ValueError(f"backbone init {spec.init!r} has no weights")


def _load_into(net: nn.Module, spec: BackboneSpec) -> None:
    """Copy the init's tensors into ``net``; every parameter and buffer of the network except its
    classifier must be present, and nothing else (classifier keys are ignored)."""
    state = {k: v for k, v in init_state_dict(spec).items() if not k.startswith(_HEADS)}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(_HEADS) and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"backbone init {spec.init!r} does not fit arch {spec.arch!r}: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
        )


# ----------------------------------------------------------------------------- networks
def _torchvision_net(spec: BackboneSpec, pretrained: bool) -> nn.Module:
    builder = _RESNETS.get(spec.arch) or _MOBILENETS[spec.arch]
    net = builder(weights=None, norm_layer=_norm_layer(spec))
    if pretrained and spec.init != "scratch":
        _load_into(net, spec)
    return net


def _timm_kwargs(spec: BackboneSpec, pretrained: bool) -> tuple[str, dict[str, Any]]:
    """Model name and create_model arguments that load the init through timm's own loaders
    (hub cache, or ``pretrained_cfg_overlay=dict(file=...)``), strictly, without a classifier."""
    name = timm_name(spec.arch)
    kind, _, value = spec.init.partition(":")
    kwargs: dict[str, Any] = {"num_classes": 0}
    if not pretrained or kind == "scratch":
        return name, kwargs
    overlay: dict[str, Any] = {"num_classes": 0}  # (check_init refuses torchvision weights here)
    if kind == "hf_hub":
        _hub_architecture(spec)
        name = f"hf-hub:{value}"
    else:
        path = init_file(spec)
        if not path.is_file():
            raise FileNotFoundError(f"backbone init {spec.init!r}: weights file {path} does not exist")
        overlay["file"] = str(path)
    kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay, pretrained_strict=True)
    return name, kwargs


def _timm_create(name: str, kwargs: dict[str, Any], spec: BackboneSpec) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as err:  # strict loading: the file does not fit the architecture
        raise ValueError(f"backbone init {spec.init!r} does not fit arch {spec.arch!r}: {err}") from err
    except OSError as err:
        raise _hub_error(spec.init.partition(":")[2], err) from None


def _freeze_bn(net: nn.Module, spec: BackboneSpec) -> nn.Module:
    if not frozen_bn(spec):
        return net
    from timm.layers import freeze_batch_norm_2d

    return freeze_batch_norm_2d(net)


def build_encoder(spec: BackboneSpec, pretrained: bool = True) -> tuple[nn.Module, int]:
    """The backbone as an image encoder (pooled feature vector), for the pretraining stages; its
    ``state_dict()`` is an encoder file that ``file:`` / ``pretrain:`` inits of the same arch load."""
    name = timm_name(spec.arch)
    if name is not None:
        model_name, kwargs = _timm_kwargs(spec, pretrained)
        net = _freeze_bn(_timm_create(model_name, kwargs, spec), spec)
        return net, net.num_features
    net = _torchvision_net(spec, pretrained)
    if spec.arch in _RESNETS:
        n = net.fc.in_features
        net.fc = nn.Identity()
    else:
        n = net.classifier[0].in_features
        net.classifier = nn.Identity()
    return net, n


def _resnet_body(spec: BackboneSpec, strides: tuple[int, ...],
                 pretrained: bool = True) -> tuple[nn.Module, dict[str, str], list[int]]:
    net = _torchvision_net(spec, pretrained)
    _freeze(net, ["layer4", "layer3", "layer2", "layer1", "conv1"], spec.trainable_layers)
    # layer1..layer4 have strides 4..32: the stride-4 level is the one that sees the clumps; the
    # stages above the last one named are dropped (IntermediateLayerGetter stops there)
    c = net.inplanes // 8  # 64 for basic blocks, 256 for bottlenecks
    return_layers = {f"layer{k + 1}": str(k) for k in range(len(strides))}
    return net, return_layers, [c * 2**k for k in range(len(strides))]


def _mobilenet_body(spec: BackboneSpec, strides: tuple[int, ...],
                    pretrained: bool = True) -> tuple[nn.Module, dict[str, str], list[int]]:
    features = _torchvision_net(spec, pretrained).features
    # last block of each resolution, i.e. strides 4, 8, 16, 32
    probe = torch.zeros(1, 3, 64, 64)
    last_of_stride: dict[int, tuple[int, int]] = {}
    with torch.no_grad():
        x = probe
        for i, block in enumerate(features):
            x = block(x)
            last_of_stride[64 // x.shape[-1]] = (i, x.shape[1])
    chosen = [last_of_stride[s] for s in strides]
    n_blocks = len(features)
    n_train = round(spec.trainable_layers / 5 * n_blocks)
    for i, block in enumerate(features):
        if i < n_blocks - n_train:
            block.requires_grad_(False)
    return_layers = {str(i): str(k) for k, (i, _) in enumerate(chosen)}
    return features, return_layers, [ch for _, ch in chosen]


class _MixedPrecisionFeatures:
    """Backbone + FPN (most of a detector's compute) under mixed precision in ``autocast_dtype``
    (None: fp32), handing fp32 feature maps to the RPN and RoI heads: box coordinates of an 800 px
    image need more than bf16's 8 bits of mantissa. Set through :func:`set_precision`."""

    autocast_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.autocast_dtype is None:
            return self.features(x)
        with autocast(x.device, self.autocast_dtype):
            out = self.features(x)
        return type(out)((k, v.float()) for k, v in out.items())


class _TorchvisionFPN(_MixedPrecisionFeatures, BackboneWithFPN):
    """torchvision's backbone + FPN (same weights and state-dict keys)."""

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return BackboneWithFPN.forward(self, x)


class _TimmFPN(_MixedPrecisionFeatures, nn.Module):
    """A timm ``features_only`` model (stride 4-32 maps) + torchvision's FPN, with the
    ``out_channels`` attribute FasterRCNN expects."""

    def __init__(self, body: nn.Module, out_channels: int):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fpn({str(i): f for i, f in enumerate(self.body(x))})


def set_precision(model: FasterRCNN, dtype: torch.dtype | None) -> FasterRCNN:
    """Compute the detector's backbone and FPN in ``dtype`` under autocast (None: fp32); the RPN,
    RoI heads and losses stay fp32."""
    model.backbone.autocast_dtype = dtype
    return model


def _timm_backbone(spec: BackboneSpec, strides: tuple[int, ...], pretrained: bool) -> _TimmFPN:
    import timm

    name = timm_name(spec.arch)
    reductions = timm.create_model(name, features_only=True, pretrained=False).feature_info.reduction()
    if not all(r in reductions for r in strides):
        raise ValueError(f"backbone arch {spec.arch!r} has no stride {'/'.join(map(str, strides))} feature maps "
                         f"({reductions})")
    out_indices = tuple(reductions.index(r) for r in strides)
    model_name, kwargs = _timm_kwargs(spec, pretrained)
    net = _freeze_bn(_timm_create(model_name, dict(kwargs, features_only=True, out_indices=out_indices), spec), spec)
    # five groups from the input: the stem, then the four stages (those above max_stride absent);
    # the last `trainable_layers` of the five train
    children = [n for n, _ in net.named_children()]
    ends = [children.index(m.replace(".", "_")) for m in net.feature_info.module_name()]
    bounds = [0, ends[0]] + [e + 1 for e in ends]
    modules = dict(net.named_children())
    for group in range(min(5 - spec.trainable_layers, len(bounds) - 1)):
        for child in children[bounds[group] : bounds[group + 1]]:
            modules[child].requires_grad_(False)
    return _TimmFPN(net, spec.fpn_channels)


def _freeze(net: nn.Module, order: list[str], trainable: int) -> None:
    if not 0 <= trainable <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable}")
    keep = order[:trainable] + (["bn1"] if trainable == 5 else [])
    for name, param in net.named_parameters():
        if not any(name.startswith(layer) for layer in keep):
            param.requires_grad_(False)


class GridRoIAlign(MultiScaleRoIAlign):
    """RoIAlign with one sample at the centre of each output bin: torchvision's
    ``MultiScaleRoIAlign`` with ``sampling_ratio=1`` (not aligned), the same values and gradients
    to float rounding (``tests/test_backbones.py``), computed with ``grid_sample``, whose CPU
    backward is vectorised: torchvision's CPU ``roi_align`` backward visits the samples one by one,
    and took ~2.5 times as long for a training batch's RoIs (a tenth of a step; docs/detector.md).
    RoIs are pooled from the level their size maps to (torchvision's level mapper, canonical 224
    px at level 4), the images of a level laid side by side so that one call samples them all;
    sample points are clamped inside their own image as roi_align clamps them, and those beyond its
    edge by more than a pixel (a RoI under one pixel wide at the border) count zero, as there."""

    def __init__(self, featmap_names: list[str], output_size: int = 7):
        super().__init__(featmap_names, output_size, sampling_ratio=1)

    def _setup(self, features: list[torch.Tensor], image_shapes: list[tuple[int, int]]) -> None:
        height = max(s[0] for s in image_shapes)
        self.scales = [2.0 ** round(math.log2(f.shape[-2] / height)) for f in features]
        self.map_levels = initLevelMapper(int(-math.log2(self.scales[0])), int(-math.log2(self.scales[-1])))

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        features = [x[k] for k in self.featmap_names]
        if self.scales is None:
            self._setup(features, image_shapes)
        n = self.output_size[0]
        image_of = torch.cat([torch.full((len(b),), i, dtype=torch.long, device=b.device) for i, b in enumerate(boxes)])
        rois = torch.cat(boxes)
        levels = (self.map_levels(boxes) if len(features) > 1
                  else torch.zeros(len(rois), dtype=torch.long, device=rois.device))
        out = features[0].new_zeros((len(rois), features[0].shape[1], n, n))
        bins = torch.arange(n, device=rois.device, dtype=rois.dtype) + 0.5
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            idx = torch.nonzero(levels == level).flatten()
            if not len(idx):
                continue
            b, c, h, w = feature.shape
            x1, y1, x2, y2 = (rois[idx, k] * scale for k in range(4))
            xs = x1[:, None] + bins * ((x2 - x1).clamp(min=1.0) / n)[:, None]  # RoIs x bins, bin centres
            ys = y1[:, None] + bins * ((y2 - y1).clamp(min=1.0) / n)[:, None]
            inside = ((ys >= -1) & (ys <= h))[:, :, None] & ((xs >= -1) & (xs <= w))[:, None, :]  # RoIs x y x x
            xs = xs.clamp(0, w - 1) + (image_of[idx] * w)[:, None]  # inside its own image, then side by side
            ys = ys.clamp(0, h - 1)
            grid = torch.stack(torch.broadcast_tensors(xs[:, None, :] / (b * w - 1) * 2 - 1,
                                                       ys[:, :, None] / (h - 1) * 2 - 1), dim=-1)
            wide = feature.permute(1, 2, 0, 3).reshape(1, c, h, b * w)  # the level's images side by side
            sampled = F.grid_sample(wide, grid.reshape(1, len(idx) * n, n, 2).to(wide.dtype), mode="bilinear",
                                    padding_mode="border", align_corners=True)
            sampled = sampled.reshape(c, len(idx), n, n).permute(1, 0, 2, 3) * inside[:, None].to(sampled.dtype)
            out[idx] = sampled.to(out.dtype)
        return out


def build_backbone(spec: BackboneSpec, strides: tuple[int, ...] = STRIDES, pretrained: bool = True) -> nn.Module:
    """Backbone + FPN on the backbone stages of ``strides`` (4 up to 8, 16 or 32), the stages
    above left out; ``pretrained=False`` skips loading the init's weights (when a trained
    detector's weights are loaded on top anyway)."""
    if tuple(strides) != STRIDES[: len(strides)] or not strides:
        raise ValueError(f"FPN strides must be 4 up to 8, 16 or 32 in order, got {list(strides)}")
    if timm_name(spec.arch):
        return _timm_backbone(spec, tuple(strides), pretrained)
    if spec.arch in _RESNETS:
        body, return_layers, in_channels = _resnet_body(spec, tuple(strides), pretrained)
    else:
        body, return_layers, in_channels = _mobilenet_body(spec, tuple(strides), pretrained)
    return _TorchvisionFPN(
        body, return_layers=return_layers, in_channels_list=in_channels,
        out_channels=spec.fpn_channels, extra_blocks=LastLevelMaxPool(),
    )


def build_detector(spec: BackboneSpec, det: DetectorSpec, num_classes: int = len(CLASSES) + 1,
                   pretrained: bool = True) -> FasterRCNN:
    """Faster R-CNN for ``num_classes`` (background included) at native ``det.image_size``, its
    weights in channels-last layout."""
    backbone = build_backbone(spec, det.strides, pretrained)
    anchors = AnchorGenerator(
        sizes=tuple((s,) for s in det.anchor_sizes), aspect_ratios=(tuple(det.anchor_ratios),) * det.n_levels
    )
    # RoIs are pooled from the backbone stages' levels (each RoI from the level its size maps to);
    # one sample per bin is computed with grid_sample (the same values, a faster CPU backward)
    levels = [str(k) for k in range(len(det.strides))]
    roi_pool = (GridRoIAlign(levels, output_size=7) if det.roi_sampling_ratio == 1
                else MultiScaleRoIAlign(featmap_names=levels, output_size=7, sampling_ratio=det.roi_sampling_ratio))
    resolution = roi_pool.output_size[0]
    box_head = TwoMLPHead(backbone.out_channels * resolution**2, det.representation_size)
    predictor = FastRCNNPredictor(det.representation_size, num_classes)
    if spec.normalization == "imagenet":
        mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    else:
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    model = FasterRCNN(
        backbone,
        num_classes=None,
        min_size=det.image_size,
        max_size=det.image_size,
        image_mean=mean,
        image_std=std,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=det.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=det.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=det.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=det.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=det.rpn_batch_size_per_image,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=predictor,
        box_batch_size_per_image=det.box_batch_size_per_image,
        box_score_thresh=det.box_score_thresh,
        box_nms_thresh=det.box_nms_thresh,
        box_detections_per_img=det.box_detections_per_img,
    )
    # channels-last weights: ~15 % faster training on a CPU (benchmarks/train_throughput.py), and
    # the layout convolutions prefer under mixed precision on a GPU
    return model.to(memory_format=torch.channels_last)


def class_agnostic_nms(outputs: list[dict[str, torch.Tensor]], iou: float | None) -> list[dict[str, torch.Tensor]]:
    """Suppress overlapping detections of different classes (torchvision's NMS is per class, so
    one clump can come out both as 'clump' and 'odd_clump'). Popp et al. used IoU 0.2 on their
    upsampled images; keep it above the overlap of two boxes of neighbouring, resolved clumps."""
    if iou is None:
        return outputs
    out = []
    for o in outputs:
        keep = nms(o["boxes"], o["scores"], iou)
        out.append({k: v[keep] for k, v in o.items()})
    return out


@torch.inference_mode()
def predict_images(model: nn.Module, images: list[torch.Tensor], image_ids: list[int],
                   agnostic_nms: float | None = None, batch_size: int = 16) -> list[dict[str, Any]]:
    """COCO results (bbox as x, y, w, h) of ``model`` on uint8 (3, H, W) images; ``agnostic_nms``
    (an IoU) suppresses overlapping detections across classes. Leaves the model in eval mode."""
    device = next(model.parameters()).device
    model.eval()
    results = []
    for b0 in range(0, len(images), batch_size):
        batch = [im.to(device, torch.float32) / 255.0 for im in images[b0 : b0 + batch_size]]
        outs = class_agnostic_nms(model(batch), agnostic_nms)
        for image_id, out in zip(image_ids[b0 : b0 + batch_size], outs):
            for box, score, label in zip(out["boxes"].cpu().numpy(), out["scores"].cpu().numpy(),
                                         out["labels"].cpu().numpy()):
                x1, y1, x2, y2 = (float(v) for v in box)
                results.append(
                    {"image_id": int(image_id), "category_id": int(label),
                     "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                     "score": round(float(score), 5)}
                )
    return results


# ------------------------------------------------------------------ device, model files, images, prediction


def dihedral(img: torch.Tensor, boxes: torch.Tensor | None, k: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The one dihedral transform of the package (training augmentation, pretraining views): rotate
    an image (..., H, W) and its boxes (x1, y1, x2, y2; None: image only) by k x 90 degrees
    (counter-clockwise as displayed), then optionally flip left-right."""
    h, w = img.shape[-2:]
    b = None if boxes is None else boxes.clone()
    for _ in range(k % 4):
        img = torch.rot90(img, 1, dims=(-2, -1))
        if b is not None:  # (x, y) -> (y, w - x) for a counter-clockwise quarter turn of a w x h image
            x1, y1, x2, y2 = b.unbind(-1)
            b = torch.stack([y1, w - x2, y2, w - x1], dim=-1)
        h, w = w, h
    if flip:
        img = torch.flip(img, dims=(-1,))
        if b is not None:
            x1, y1, x2, y2 = b.unbind(-1)
            b = torch.stack([w - x2, y1, w - x1, y2], dim=-1)
    return img, b


def save_model(model: torch.nn.Module, backbone: BackboneSpec, detector: DetectorSpec, path: str | Path) -> None:
    """Weights plus everything needed to rebuild the detector."""
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "backbone": asdict(backbone), "detector": asdict(detector), "classes": list(CLASSES),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_model(path: str | Path, device: torch.device | None = None,
               dtype: torch.dtype | None = None) -> tuple[torch.nn.Module, DetectorSpec]:
    """The trained detector (in eval mode) and its detector settings; ``dtype``: the mixed
    precision of its backbone (None: fp32, see :func:`set_precision`)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    detector = DetectorSpec(**{**_FILE_DEFAULTS, **payload["detector"]})
    model = build_detector(BackboneSpec(**payload["backbone"]), detector, num_classes=len(payload["classes"]) + 1,
                           pretrained=False)  # the trained weights replace the init's anyway
    model.load_state_dict(payload["state_dict"])
    return set_precision(model.to(device or torch.device("cpu")).eval(), dtype), detector


def as_tensor(rgb: np.ndarray) -> torch.Tensor:
    """The detector's input: an RGB uint8 array (H, W, 3) as a uint8 tensor (3, H, W). Training,
    evaluation and catalogues all go through here (the model scales to [0, 1] itself)."""
    return torch.from_numpy(np.require(rgb, requirements=["C", "W"])).permute(2, 0, 1).contiguous()


def load_images(coco: dict[str, Any], image_dir: str | Path) -> list["torch.Tensor"]:
    """RGB uint8 tensors (3, H, W) in the order of ``coco['images']`` (cut to each image's crop
    window): what the detector trains and predicts on; errors name the file."""
    return [as_tensor(read_image(image_dir, im)) for im in coco["images"]]


def predict(
    model: torch.nn.Module, coco: dict[str, Any], images: "str | Path | ImageCache", agnostic_nms: float | None = None,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """COCO results list (bbox in x, y, w, h) for every image of ``coco``, read from a folder of
    PNGs or a split's image cache; ``agnostic_nms`` (an IoU) suppresses overlapping detections
    across classes."""
    tensors = images.images(coco) if isinstance(images, ImageCache) else load_images(coco, images)
    return predict_images(model, tensors, [im["id"] for im in coco["images"]], agnostic_nms, batch_size)
