"""Backbone initialisations through their real loaders: the Hugging Face hub cache read by timm
(offline), state-dict files (torch and safetensors, torchvision and timm archs, timm's overlay
file), and the encoders written by the pretraining stage. Each test checks that the tensors
arrive in the detector's backbone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from clumpfinder.detection.detector import BackboneSpec, DetectorSpec, build_detector, build_encoder, read_state_dict
from conftest import REPO

DET = DetectorSpec(image_size=64)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _distinctive(state: dict[str, torch.Tensor], seed: int = 5) -> dict[str, torch.Tensor]:
    """Random values everywhere (BatchNorm statistics included), so loaded tensors are recognisable."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(v.shape, generator=g) * 0.05
    return out


def _timm_state(name: str) -> dict[str, torch.Tensor]:
    import timm

    return _distinctive(timm.create_model(name, num_classes=0).state_dict())


def _assert_arrived(body_state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], rename=lambda k: k,
                    minimum: int = 50) -> None:
    n = 0
    for name, tensor in body_state.items():
        if name.endswith("num_batches_tracked"):
            continue
        assert torch.equal(tensor, reference[rename(name)]), name
        n += 1
    assert n >= minimum, n


def write_hub_cache(hf_home, repo: str, architecture: str, state: dict[str, torch.Tensor]) -> None:
    """A Hugging Face cache entry exactly as huggingface_hub lays it out: refs/main names the
    snapshot, the snapshot holds config.json (timm's format) and model.safetensors."""
    from safetensors.torch import save_file

    root = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    (snap / "config.json").write_text(json.dumps({
        "architecture": architecture, "num_classes": 0, "num_features": 512,
        "pretrained_cfg": {"input_size": [3, 224, 224], "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                           "num_classes": 0, "first_conv": "conv1", "classifier": "fc"},
    }))
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))


def run_offline(hf_home, code: str) -> subprocess.CompletedProcess:
    """huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when imported: a fresh interpreter."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("arch", ["resnet18", "timm:resnet18"])
def test_hf_hub_init_loads_the_cached_zoobot_encoder(tmp_path, arch):
    """A Zoobot-style encoder in the hub cache reaches the detector body offline: copied into a
    torchvision ResNet (Popp's route) or loaded by timm itself for a timm arch; fetch_weights
    finds it in the cache without the network."""
    repo = "mwalmsley/zoobot-encoder-resnet18"
    state = _timm_state("resnet18")
    torch.save(state, tmp_path / "reference.pt")
    write_hub_cache(tmp_path / "hf", repo, "resnet18", state)
    proc = run_offline(tmp_path / "hf", f"""
        import torch
        from clumpfinder.detection.detector import BackboneSpec, DetectorSpec, build_detector, fetch_weights
        spec = BackboneSpec(arch={arch!r}, init="hf_hub:{repo}", trainable_layers=3, normalization="unit")
        record = fetch_weights(spec)
        assert record["path"].endswith("model.safetensors") and record["bytes"] > 0, record
        model = build_detector(spec, DetectorSpec(image_size=64))
        ref = torch.load({str(tmp_path / "reference.pt")!r})
        body = model.backbone.body
        n = 0
        for k, v in body.state_dict().items():
            if k.endswith("num_batches_tracked"):
                continue
            assert torch.equal(v, ref[k]), k
            n += 1
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
        # every tensor of the stages the FPN takes (the stem, layer1..layer3 at max_stride 16)
        stages = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")
        assert n == sum(1 for k in ref if k.startswith(stages) and not k.endswith("num_batches_tracked"))
        print("LOADED", n)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split("LOADED")[1]) >= 60


def test_hf_hub_init_offline_without_cache_names_the_files(tmp_path):
    proc = run_offline(tmp_path / "empty", """
        from clumpfinder.detection.detector import BackboneSpec, DetectorSpec, build_detector
        build_detector(BackboneSpec(arch="resnet50", init="hf_hub:mwalmsley/zoobot-encoder-resnet50"), DetectorSpec())
    """)
    assert proc.returncode != 0
    assert "config.json and model.safetensors are not in the Hugging Face cache" in proc.stderr
    assert "models--mwalmsley--zoobot-encoder-resnet50" in proc.stderr and "fetch_weights" in proc.stderr


def test_hf_hub_architecture_mismatch_is_explained(tmp_path):
    write_hub_cache(tmp_path / "hf", "me/enc", "resnet18", _timm_state("resnet18"))
    proc = run_offline(tmp_path / "hf", """
        from clumpfinder.detection.detector import BackboneSpec, DetectorSpec, build_detector
        build_detector(BackboneSpec(arch="timm:resnet34", init="hf_hub:me/enc"), DetectorSpec())
    """)
    assert proc.returncode != 0 and "holds a timm 'resnet18', but the backbone arch is 'timm:resnet34'" in proc.stderr


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_file_init_torchvision_arch(tmp_path, suffix):
    from torchvision.models import resnet18

    state = _distinctive(resnet18().state_dict())
    path = tmp_path / f"enc{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": state, "epoch": 3}, path)  # a training checkpoint's layout
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    model = build_detector(BackboneSpec(arch="resnet18", init=f"file:{path}", trainable_layers=0), DET)
    _assert_arrived(model.backbone.body.state_dict(), state)
    assert not any(p.requires_grad for p in model.backbone.body.parameters())


def test_file_init_timm_arch_goes_through_timm_overlay(tmp_path):
    state = _timm_state("resnet18")
    path = tmp_path / "enc.pth"
    torch.save(state, path)
    model = build_detector(BackboneSpec(arch="timm:resnet18", init=f"file:{path}"), DET)
    _assert_arrived(model.backbone.body.state_dict(), state)


def test_file_init_that_does_not_fit_is_an_error(tmp_path):
    from torchvision.models import resnet34

    path = tmp_path / "r34.pt"
    torch.save(resnet34().state_dict(), path)
    with pytest.raises(ValueError, match=r"does not fit arch 'resnet18'"):
        build_detector(BackboneSpec(arch="resnet18", init=f"file:{path}"), DET)
    with pytest.raises(ValueError, match=r"does not fit arch 'timm:resnet18'"):
        build_detector(BackboneSpec(arch="timm:resnet18", init=f"file:{path}"), DET)
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        build_detector(BackboneSpec(arch="resnet18", init=f"file:{tmp_path / 'missing.pt'}"), DET)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt cannot be read"):
        read_state_dict(tmp_path / "junk.pt")


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_large", "timm:resnet18"])
def test_pretrained_encoder_round_trip(tmp_path, arch):
    """An encoder saved by the pretraining stage is what pretrain:* inits load, BatchNorm
    statistics included (they are frozen in the detector)."""
    from clumpfinder.detection.pretrain import save_encoder

    encoder, _ = build_encoder(BackboneSpec(arch=arch))
    encoder.load_state_dict(_distinctive(encoder.state_dict()))
    path = tmp_path / "encoder.pt"
    save_encoder(encoder, path)
    saved = read_state_dict(path)
    spec = BackboneSpec(arch=arch, init="pretrain:morphology", init_file=str(path), normalization="unit")
    body = build_detector(spec, DET).backbone.body
    rename = (lambda k: "features." + k) if arch.startswith("mobilenet") else (lambda k: k)
    _assert_arrived(body.state_dict(), saved, rename, minimum=30)


def test_bad_init_specs():
    with pytest.raises(ValueError, match="needs base_init"):
        BackboneSpec(arch="resnet18", init="pretrain:clumpy")
    with pytest.raises(ValueError, match="pretraining task must be one of"):
        BackboneSpec(arch="resnet18", init="pretrain:colour")
    with pytest.raises(ValueError, match="timm has no model 'nope'"):
        BackboneSpec(arch="timm:nope")
    with pytest.raises(ValueError, match="torchvision weights need a torchvision arch"):
        BackboneSpec(arch="timm:resnet18", init="torchvision:ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(ValueError, match="did not pass the pretrained encoder file"):
        build_detector(BackboneSpec(arch="resnet18", init="pretrain:morphology"), DET)


@pytest.mark.parametrize("arch", ["resnet18", "timm:resnet18"])
def test_trainable_batchnorm_keeps_the_loaded_statistics(tmp_path, arch):
    from clumpfinder.detection.pretrain import save_encoder

    encoder, _ = build_encoder(BackboneSpec(arch=arch))
    encoder.load_state_dict(_distinctive(encoder.state_dict()))
    save_encoder(encoder, tmp_path / "e.pt")
    spec = BackboneSpec(arch=arch, init=f"file:{tmp_path / 'e.pt'}", batchnorm="trainable", trainable_layers=3)
    body = build_detector(spec, DET).backbone.body
    bns = [m for m in body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 15  # ResNet-18 up to layer3 (max_stride 16): every BatchNorm stays a BatchNorm
    _assert_arrived(body.state_dict(), read_state_dict(tmp_path / "e.pt"))
    assert not body.bn1.weight.requires_grad and body.layer3[0].bn1.weight.requires_grad
    with pytest.raises(ValueError, match="batchnorm 'frozen' needs pretrained statistics"):
        BackboneSpec(arch=arch, batchnorm="frozen")


def test_timm_arch_trainable_layers():
    body = build_detector(BackboneSpec(arch="timm:resnet18", trainable_layers=2), DET).backbone.body
    assert not any(p.requires_grad for p in body.layer2.parameters())
    assert all(p.requires_grad for p in body.layer3.parameters())
    assert not any(p.requires_grad for p in body.conv1.parameters())


@pytest.mark.parametrize("arch", ["resnet18", "timm:resnet18", "mobilenet_v3_small"])
def test_the_fpn_takes_the_stages_up_to_max_stride_and_builds_none_above(arch):
    for max_stride, anchors in ((8, [8, 16, 32]), (16, [8, 16, 32, 64]), (32, [8, 16, 32, 64, 128])):
        det = DetectorSpec(image_size=64, max_stride=max_stride, anchor_sizes=anchors)
        model = build_detector(BackboneSpec(arch=arch), det).eval()
        maps = model.backbone(torch.zeros(1, 3, 64, 64))
        # one map per stage (strides 4 .. max_stride) and the max-pooled one above
        assert [64 // m.shape[-1] for m in maps.values()] == [s for s in (4, 8, 16, 32) if s <= max_stride] + [
            2 * max_stride]
        if arch == "resnet18":
            stages = [n for n, _ in model.backbone.body.named_children() if n.startswith("layer")]
            assert stages == [f"layer{k}" for k in range(1, len(anchors))]  # the stages above are never built
        assert len(model([torch.rand(3, 64, 64)])) == 1


def test_detector_levels_and_anchors_must_agree():
    with pytest.raises(ValueError, match=r"anchor_sizes needs 4 sizes, one per FPN level \(strides 4, 8, 16"):
        DetectorSpec(max_stride=16, anchor_sizes=[8, 16, 32, 64, 128])
    with pytest.raises(ValueError, match="max_stride must be one of"):
        DetectorSpec(max_stride=64, anchor_sizes=[8, 16, 32, 64, 128, 256])
    with pytest.raises(ValueError, match="roi_sampling_ratio must be >= 0"):
        DetectorSpec(roi_sampling_ratio=-1)


def test_a_model_file_from_before_the_level_settings_loads_as_it_was_built(tmp_path):
    from clumpfinder.detection.detector import load_model, save_model

    old = DetectorSpec(image_size=64, max_stride=32, anchor_sizes=[8, 16, 32, 64, 128], roi_sampling_ratio=2)
    model = build_detector(BackboneSpec(arch="resnet18"), old)
    save_model(model, BackboneSpec(arch="resnet18"), old, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    for key in ("max_stride", "roi_sampling_ratio"):  # as written before these keys existed
        del payload["detector"][key]
    torch.save(payload, tmp_path / "old.pt")
    loaded, det = load_model(tmp_path / "old.pt")
    assert det.max_stride == 32 and det.roi_sampling_ratio == 2 and det.anchor_sizes == [8, 16, 32, 64, 128]
    assert torch.equal(loaded.backbone.body.layer4[0].conv1.weight, model.backbone.body.layer4[0].conv1.weight)


def test_grid_roi_align_equals_torchvision_roi_align_with_one_sample_per_bin():
    """The detector's RoIAlign (one sample per bin, computed with grid_sample) gives torchvision's
    MultiScaleRoIAlign(sampling_ratio=1) values and gradients, over three levels, with RoIs that
    fill the image, touch its edges, and are under a pixel wide at its corner."""
    from torchvision.ops import MultiScaleRoIAlign

    from clumpfinder.detection.detector import GridRoIAlign

    g = torch.Generator().manual_seed(0)
    images, size = 3, 256
    feats = {str(k): torch.randn(images, 8, size // 4 // 2**k, size // 4 // 2**k, generator=g).requires_grad_()
             for k in range(3)}
    boxes = []
    for _ in range(images):
        xy = torch.rand(30, 2, generator=g) * (size - 10)
        box = torch.cat([xy, (xy + torch.rand(30, 2, generator=g) * size).clamp(max=size)], 1)
        box[0] = torch.tensor([0.0, 0.0, size, size])
        box[1] = torch.tensor([size - 3.0, size - 2.0, size, size])  # a fraction of a stride-4 pixel
        boxes.append(box)
    shapes = [(size, size)] * images
    ours, theirs = GridRoIAlign(list(feats), 7), MultiScaleRoIAlign(list(feats), 7, sampling_ratio=1)
    a, b = ours(feats, boxes, shapes), theirs(feats, boxes, shapes)
    assert len(set(ours.map_levels(boxes).tolist())) == 3  # every level is used
    assert a.shape == (90, 8, 7, 7) and torch.allclose(a, b, atol=1e-4)
    ga = torch.autograd.grad((a * b.detach()).sum(), list(feats.values()))
    gb = torch.autograd.grad((b * b.detach()).sum(), list(feats.values()))
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, atol=1e-3, rtol=1e-4)
    empty = ours(feats, [torch.zeros(0, 4)] * images, shapes)
    assert empty.shape == (0, 8, 7, 7)
    # the detector uses it for one sample per bin, torchvision's op otherwise
    assert isinstance(build_detector(BackboneSpec(arch="resnet18"), DET).roi_heads.box_roi_pool, GridRoIAlign)
    two = DetectorSpec(image_size=64, roi_sampling_ratio=2)
    assert type(build_detector(BackboneSpec(arch="resnet18"), two).roi_heads.box_roi_pool) is MultiScaleRoIAlign
