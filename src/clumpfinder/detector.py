"""Faster R-CNN detectors built from torchvision parts.

The detector is assembled explicitly (backbone -> FPN -> RPN -> RoI heads) rather than through
``fasterrcnn_resnet50_fpn`` so that the architecture, normalisation layers, FPN width, anchors and
proposal counts are all set from the configuration. The defaults suit small (~100 px) galaxy
images whose clumps are a few pixels across: native resolution (no resize), an FPN that keeps the
stride-4 level, square anchors from 8 px, a few hundred proposals.
"""

from __future__ import annotations

import os
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import get_model_weights, get_weight
from torchvision.models import mobilenet_v3_large, mobilenet_v3_small, resnet18, resnet34, resnet50
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign, nms
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

CLASSES = ("clump", "odd_clump")  # COCO category ids 1 and 2; 0 is background

_RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}
_MOBILENETS = {"mobilenet_v3_large": mobilenet_v3_large, "mobilenet_v3_small": mobilenet_v3_small}
ARCHITECTURES = tuple(_RESNETS) + tuple(_MOBILENETS)


@dataclass
class BackboneSpec:
    """One backbone entry of the configuration."""

    arch: str
    init: str = "scratch"
    trainable_layers: int = 5
    fpn_channels: int = 64
    normalization: str = "imagenet"  # or "unit": inputs in [0, 1] with no mean/std

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"backbone arch {self.arch!r} is not one of {', '.join(ARCHITECTURES)}")
        if self.init.startswith("torchvision:"):
            name = self.init.split(":", 1)[1]
            try:
                weights = get_weight(name)
            except (ValueError, KeyError, AttributeError):
                raise ValueError(f"backbone init {self.init!r}: torchvision has no weights {name!r}") from None
            if weights not in list(get_model_weights(self.arch)):
                raise ValueError(f"backbone init {self.init!r}: {name} are not weights of {self.arch}")
        elif self.init != "scratch":
            raise ValueError(
                f"backbone init {self.init!r} is not supported yet; use 'scratch' or 'torchvision:<weights>'"
            )
        if self.normalization not in ("imagenet", "unit"):
            raise ValueError(f"backbone normalization {self.normalization!r} is not 'imagenet' or 'unit'")


@dataclass
class DetectorSpec:
    """Detector head settings shared by all backbones."""

    image_size: int = 128
    anchor_sizes: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
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

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "DetectorSpec":
        return cls(**cfg)


def _norm_layer(spec: BackboneSpec):
    # Trained from scratch the statistics must be learnt: ordinary BatchNorm. (Frozen BN with
    # identity statistics, torchvision's default for detection backbones, would leave the
    # network unnormalised.) Pretrained initialisations keep their statistics: FrozenBatchNorm2d.
    return nn.BatchNorm2d if spec.init == "scratch" else FrozenBatchNorm2d


def torchvision_weights_path(spec: BackboneSpec) -> Path:
    """Where torchvision's loader caches the weights of a ``torchvision:`` init."""
    weights = get_weight(spec.init.split(":", 1)[1])
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _load_pretrained(net: nn.Module, spec: BackboneSpec) -> None:
    """Load a ``torchvision:`` init through torchvision's own loader (the torch hub cache under
    $TORCH_HOME; downloaded when missing and the network is reachable)."""
    weights = get_weight(spec.init.split(":", 1)[1])
    try:
        state = weights.get_state_dict(progress=False)
    except (urllib.error.URLError, OSError) as err:
        raise FileNotFoundError(
            f"backbone init {spec.init!r}: weights file {torchvision_weights_path(spec)} is not cached and could "
            f"not be downloaded from {weights.url} ({err}); download it where there is network and copy it there "
            "(or set TORCH_HOME to a cache that has it)"
        ) from None
    net.load_state_dict(state)


def _resnet_body(spec: BackboneSpec, pretrained: bool = True) -> tuple[nn.Module, dict[str, str], list[int]]:
    net = _RESNETS[spec.arch](weights=None, norm_layer=_norm_layer(spec))
    if pretrained and spec.init != "scratch":
        _load_pretrained(net, spec)
    _freeze(net, ["layer4", "layer3", "layer2", "layer1", "conv1"], spec.trainable_layers)
    # keep layer1..layer4 (strides 4..32): the stride-4 level is the one that sees the clumps
    return_layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
    c = net.inplanes // 8  # 64 for basic blocks, 256 for bottlenecks
    return net, return_layers, [c, c * 2, c * 4, c * 8]


def _mobilenet_body(spec: BackboneSpec, pretrained: bool = True) -> tuple[nn.Module, dict[str, str], list[int]]:
    net = _MOBILENETS[spec.arch](weights=None, norm_layer=_norm_layer(spec))
    if pretrained and spec.init != "scratch":
        _load_pretrained(net, spec)
    features = net.features
    # last block of each resolution, i.e. strides 4, 8, 16, 32
    probe = torch.zeros(1, 3, 64, 64)
    last_of_stride: dict[int, tuple[int, int]] = {}
    with torch.no_grad():
        x = probe
        for i, block in enumerate(features):
            x = block(x)
            last_of_stride[64 // x.shape[-1]] = (i, x.shape[1])
    chosen = [last_of_stride[s] for s in (4, 8, 16, 32)]
    n_blocks = len(features)
    n_train = round(spec.trainable_layers / 5 * n_blocks)
    for i, block in enumerate(features):
        if i < n_blocks - n_train:
            block.requires_grad_(False)
    return_layers = {str(i): str(k) for k, (i, _) in enumerate(chosen)}
    return features, return_layers, [ch for _, ch in chosen]


def _freeze(net: nn.Module, order: list[str], trainable: int) -> None:
    if not 0 <= trainable <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable}")
    keep = order[:trainable] + (["bn1"] if trainable == 5 else [])
    for name, param in net.named_parameters():
        if not any(name.startswith(layer) for layer in keep):
            param.requires_grad_(False)


def build_backbone(spec: BackboneSpec, pretrained: bool = True) -> BackboneWithFPN:
    """Backbone + FPN; ``pretrained=False`` skips loading the init's weights (when a trained
    detector's weights are loaded on top anyway)."""
    if spec.arch in _RESNETS:
        body, return_layers, in_channels = _resnet_body(spec, pretrained)
    else:
        body, return_layers, in_channels = _mobilenet_body(spec, pretrained)
    return BackboneWithFPN(
        body, return_layers=return_layers, in_channels_list=in_channels,
        out_channels=spec.fpn_channels, extra_blocks=LastLevelMaxPool(),
    )


def build_detector(spec: BackboneSpec, det: DetectorSpec, num_classes: int = len(CLASSES) + 1,
                   pretrained: bool = True) -> FasterRCNN:
    """Faster R-CNN for ``num_classes`` (background included) at native ``det.image_size``."""
    backbone = build_backbone(spec, pretrained)
    n_levels = 5  # four FPN levels + max-pool level
    sizes = list(det.anchor_sizes)
    if len(sizes) != n_levels:
        raise ValueError(f"detector.anchor_sizes needs {n_levels} sizes (one per FPN level), got {sizes}")
    anchors = AnchorGenerator(
        sizes=tuple((s,) for s in sizes), aspect_ratios=(tuple(det.anchor_ratios),) * n_levels
    )
    roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    resolution = roi_pool.output_size[0]
    box_head = TwoMLPHead(backbone.out_channels * resolution**2, det.representation_size)
    predictor = FastRCNNPredictor(det.representation_size, num_classes)
    if spec.normalization == "imagenet":
        mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    else:
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    return FasterRCNN(
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
