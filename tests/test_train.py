"""Detector construction, augmentation geometry, a short real training run, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clumpfinder.compute import ComputeSpec
from clumpfinder.detection.detector import BackboneSpec, DetectorSpec, build_detector
from clumpfinder.compute import pick_device
from clumpfinder.detection.detector import dihedral, load_images, load_model, predict, save_model
from clumpfinder.detection.loop import lr_at
from clumpfinder.detection.train import TrainSpec, train_detector

# the machine's own device: these tests run on a GPU where there is one (bit-exact resume is
# asserted on the CPU only, where kernels are deterministic)
DEVICE = pick_device("auto")


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("flip", [False, True])
def test_dihedral_moves_boxes_with_pixels(k, flip):
    h, w = 30, 40
    img = torch.zeros(3, h, w)
    img[:, 5:9, 20:26] = 1.0  # a 6 x 4 px block: x 20-26, y 5-9
    boxes = torch.tensor([[20.0, 5.0, 26.0, 9.0]])
    out, b = dihedral(img, boxes, k, flip)
    ys, xs = torch.nonzero(out[0], as_tuple=True)
    x1, y1, x2, y2 = b[0].tolist()
    assert (xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1) == (x1, y1, x2, y2)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_large"])
def test_build_detector_forward(arch):
    torch.manual_seed(0)
    model = build_detector(BackboneSpec(arch=arch), DetectorSpec(image_size=64))
    model.train()
    imgs = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 18.0, 18.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # empty image
    losses = model(imgs, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model(imgs)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4


def test_trainable_layers_freeze_resnet_stem():
    model = build_detector(BackboneSpec(arch="resnet18", trainable_layers=3), DetectorSpec())
    body = model.backbone.body
    assert not any(p.requires_grad for p in body.conv1.parameters())
    assert not any(p.requires_grad for p in body.layer1.parameters())
    # trainable_layers counts from the top of the whole network (layer4, not built at max_stride 16)
    assert all(p.requires_grad for p in body.layer3.parameters()) and not hasattr(body, "layer4")
    full = build_detector(BackboneSpec(arch="resnet18", trainable_layers=3),
                          DetectorSpec(max_stride=32, anchor_sizes=[8, 16, 32, 64, 128])).backbone.body
    assert all(p.requires_grad for p in full.layer4.parameters())
    assert not any(p.requires_grad for p in full.layer1.parameters())


def test_bad_backbone_spec():
    with pytest.raises(ValueError, match="arch 'vgg'"):
        BackboneSpec(arch="vgg")
    with pytest.raises(ValueError, match="init 'imagenet'"):
        BackboneSpec(arch="resnet18", init="imagenet")
    with pytest.raises(ValueError, match="torchvision has no weights 'ResNet18_Weights.NOPE'"):
        BackboneSpec(arch="resnet18", init="torchvision:ResNet18_Weights.NOPE")
    with pytest.raises(ValueError, match="are not weights of resnet18"):
        BackboneSpec(arch="resnet18", init="torchvision:ResNet50_Weights.IMAGENET1K_V2")


@pytest.mark.parametrize("arch, weights", [("resnet18", "ResNet18_Weights.IMAGENET1K_V1"),
                                           ("mobilenet_v3_large", "MobileNet_V3_Large_Weights.IMAGENET1K_V1")])
def test_torchvision_init_loads_the_cached_file(tmp_path, monkeypatch, arch, weights):
    """Weights written in torch hub's cache layout under $TORCH_HOME arrive in the detector's
    backbone through torchvision's own loader (no network: the file is found in the cache)."""
    import urllib.error

    from clumpfinder.detection.detector import _MOBILENETS, _RESNETS, torchvision_weights_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in the test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    spec = BackboneSpec(arch=arch, init=f"torchvision:{weights}", trainable_layers=3)
    with pytest.raises(FileNotFoundError, match=r"weights file .*hub/checkpoints/.*\.pth is not cached"):
        build_detector(spec, DetectorSpec(image_size=64))
    torch.manual_seed(123)
    reference = {**_RESNETS, **_MOBILENETS}[arch](weights=None)
    with torch.no_grad():  # distinctive statistics, so that frozen BatchNorm is seen to keep them
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    path = torchvision_weights_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)  # the failed attempt made the cache folder
    torch.save(reference.state_dict(), path)
    model = build_detector(spec, DetectorSpec(image_size=64))
    body = model.backbone.body
    ref = reference.state_dict()
    prefix = "features." if arch.startswith("mobilenet") else ""
    loaded = 0
    for name, tensor in body.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        assert torch.equal(tensor, ref[prefix + name]), name
        loaded += 1
    assert loaded > 50
    # BatchNorm is frozen and only the last 3 stages train
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert any(p.requires_grad for p in body.parameters()) and not all(p.requires_grad for p in body.parameters())
    # a saved detector reloads without the cache (its own weights replace the init's)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    model_path = tmp_path / "model.pt"
    save_model(model, spec, DetectorSpec(image_size=64), model_path)
    loaded_model, _ = load_model(model_path)
    for (k, a), b in zip(loaded_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_lr_schedule():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.0)


def _coco_for(tiny_survey, n=6):
    from clumpfinder.labels.coco import coco_dataset, truth_boxes

    man, truth = tiny_survey["manifest"].iloc[:n], tiny_survey["truth"]
    boxes = truth_boxes(tiny_survey["manifest"], truth, 2.0, 0.03, 0.015)
    return coco_dataset(man.rename(columns={"png": "file_name"}), boxes, "t")


def test_short_training_run_and_round_trip(tiny_survey, tmp_path):
    coco = _coco_for(tiny_survey)
    bb, det = BackboneSpec(arch="resnet18"), DetectorSpec(image_size=tiny_survey["spec"].image_size)
    spec = TrainSpec(steps=2, eval_every=2, batch_size=3, lr=1e-3, weight_decay=1e-4, warmup_steps=1,
                     grad_clip=10.0, augment=True, seed=0)
    fp32 = ComputeSpec(precision="fp32")  # (the mixed-precision round trip: tests/test_compute.py)
    model, metrics = train_detector(coco, tiny_survey["root"] / "png", bb, det, spec, threads=1, device=DEVICE,
                                    compute=fp32)
    assert metrics["steps"] == 2 and metrics["n_train"] == 6 and metrics["device"] == DEVICE.type
    assert len(metrics["history"]) == 1 and np.isfinite(metrics["history"][0]["loss"])
    assert metrics["best_step"] is None and "val_f1" not in metrics["history"][0]  # no validation split given
    path = tmp_path / "model.pt"
    save_model(model, bb, det, path)
    loaded, det2 = load_model(path, DEVICE)
    assert det2 == det and next(loaded.parameters()).device.type == DEVICE.type
    a = predict(model.eval(), coco, tiny_survey["root"] / "png")
    b = predict(loaded, coco, tiny_survey["root"] / "png")
    assert json.dumps(a) == json.dumps(b)
    # same seed, same result (to rounding on a GPU, whose kernels need not be deterministic)
    model2, metrics2 = train_detector(coco, tiny_survey["root"] / "png", bb, det, spec, threads=1, device=DEVICE,
                                      compute=fp32)
    exact = DEVICE.type == "cpu"
    assert metrics2["history"][0]["loss"] == pytest.approx(metrics["history"][0]["loss"], rel=0 if exact else 1e-3)


def test_missing_image_named(tiny_survey, tmp_path):
    coco = _coco_for(tiny_survey, 2)
    coco["images"][1]["file_name"] = "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_images(coco, tiny_survey["root"] / "png")
    coco = _coco_for(tiny_survey, 1)
    coco["images"][0]["width"] = 10
    with pytest.raises(ValueError, match="labels say 10x"):
        load_images(coco, tiny_survey["root"] / "png")


def test_class_agnostic_nms():
    from clumpfinder.detection.detector import class_agnostic_nms

    out = [{"boxes": torch.tensor([[10.0, 10, 18, 18], [10.5, 10, 18.5, 18], [40, 40, 48, 48]]),
            "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([1, 2, 1])}]
    kept = class_agnostic_nms(out, 0.5)[0]
    assert kept["labels"].tolist() == [1, 1] and kept["scores"].tolist() == pytest.approx([0.9, 0.7])
    assert class_agnostic_nms(out, None)[0]["boxes"].shape[0] == 3


_RESUME_SCRIPT = """
import json, sys
import torch
from clumpfinder.detection.detector import BackboneSpec, DetectorSpec
from clumpfinder.detection.train import TrainSpec, train_detector
a = json.loads(sys.argv[1])
train_detector(json.load(open(a["coco"])), a["images"], BackboneSpec(arch="resnet18"),
               DetectorSpec(image_size=a["size"]), TrainSpec(**a["spec"]), threads=1, checkpoint=a["checkpoint"],
               val=json.load(open(a["coco"])), device=torch.device("cpu"))
"""


def test_killed_training_resumes_and_ends_as_an_uninterrupted_run(tiny_survey, tmp_path):
    """SIGKILL after the first evaluation's checkpoint; the rerun continues from it and ends with
    the same losses, validation scores and chosen weights as a run that was never interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    coco = _coco_for(tiny_survey, 8)
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    spec = dict(steps=8, eval_every=2, batch_size=3, lr=1e-3, weight_decay=1e-4, warmup_steps=1, grad_clip=10.0,
                augment=True, seed=3)
    ckpt = tmp_path / "ckpt" / "last.pt"
    args = {"coco": str(tmp_path / "coco.json"), "images": str(tiny_survey["root"] / "png"),
            "size": tiny_survey["spec"].image_size, "spec": spec, "checkpoint": str(ckpt)}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", _RESUME_SCRIPT, json.dumps(args)], env=env)
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "training finished before it could be killed"
    done = torch.load(ckpt, weights_only=False)["step"]
    assert done < 8  # killed part-way

    bb, det = BackboneSpec(arch="resnet18"), DetectorSpec(image_size=tiny_survey["spec"].image_size)
    cpu = torch.device("cpu")  # bit-exact on the CPU
    resumed, m_resumed = train_detector(coco, tiny_survey["root"] / "png", bb, det, TrainSpec(**spec), threads=1,
                                        checkpoint=ckpt, val=coco, device=cpu)
    assert m_resumed["resumed_at_step"] == done
    whole, m_whole = train_detector(coco, tiny_survey["root"] / "png", bb, det, TrainSpec(**spec), threads=1, val=coco,
                                    device=cpu)
    for key in ("loss", "val_f1"):
        assert [h[key] for h in m_resumed["history"]] == [h[key] for h in m_whole["history"]]
    assert m_resumed["steps"] == m_whole["steps"] == 8 and m_whole["resumed_at_step"] is None
    assert m_resumed["best_step"] == m_whole["best_step"]
    for (k, a), b in zip(resumed.state_dict().items(), whole.state_dict().values()):
        assert torch.equal(a, b), k


def test_checkpoint_of_other_settings_is_not_resumed(tiny_survey, tmp_path, caplog):
    coco = _coco_for(tiny_survey, 4)
    bb, det = BackboneSpec(arch="resnet18"), DetectorSpec(image_size=tiny_survey["spec"].image_size)
    spec = TrainSpec(steps=1, eval_every=1, batch_size=4, lr=1e-3, weight_decay=1e-4, warmup_steps=1,
                     grad_clip=10.0, augment=False, seed=0)
    ckpt = tmp_path / "last.pt"
    train_detector(coco, tiny_survey["root"] / "png", bb, det, spec, threads=1, checkpoint=ckpt)
    assert ckpt.exists()
    other = TrainSpec(**{**spec.__dict__, "lr": 5e-4})
    _, m = train_detector(coco, tiny_survey["root"] / "png", bb, det, other, threads=1, checkpoint=ckpt)
    assert m["resumed_at_step"] is None and "other settings or data" in caplog.text
    ckpt.write_bytes(b"not a checkpoint")
    _, m = train_detector(coco, tiny_survey["root"] / "png", bb, det, other, threads=1, checkpoint=ckpt)
    assert m["resumed_at_step"] is None and "unreadable" in caplog.text


def test_batches_depend_only_on_seed_and_step():
    from clumpfinder.detection.train import batch_plan

    # 10 images in batches of 4: steps 0-2 are epoch 0 (4 + 4 + 2 images), step 3 starts epoch 1
    epoch0 = [i for s in range(3) for i, _, _ in batch_plan(s, 10, 4, seed=5, augment=True)]
    assert sorted(epoch0) == list(range(10))
    assert [len(batch_plan(s, 10, 4, 5, True)) for s in range(4)] == [4, 4, 2, 4]
    assert batch_plan(7, 10, 4, 5, True) == batch_plan(7, 10, 4, 5, True)
    assert batch_plan(3, 10, 4, 5, True) != batch_plan(3, 10, 4, 6, True)
    assert all(k == 0 and not f for _, k, f in batch_plan(3, 10, 4, 5, augment=False))
    turns = {(k, f) for s in range(40) for _, k, f in batch_plan(s, 10, 4, 5, True)}
    assert turns == {(k, f) for k in range(4) for f in (False, True)}  # every dihedral element occurs


def test_survey_look_changes_the_look_not_the_clumps_and_is_drawn_from_seed_step_and_image(tiny_survey):
    from clumpfinder.detection.train import _Plan, look_seed, survey_look

    img = torch.zeros(3, 64, 64, dtype=torch.uint8)
    img[:, 30:34, 40:44] = 200  # a clump on an empty sky
    a, b = survey_look(img, 7), survey_look(img, 7)
    assert a.dtype == torch.uint8 and a.shape == img.shape and torch.equal(a, b)
    assert not torch.equal(a, survey_look(img, 8)) and not torch.equal(a, img)
    # the clump stays where it was: still the brightest patch, at its place
    peak = divmod(int(a.float().mean(0).argmax()), 64)
    assert 28 <= peak[0] <= 35 and 38 <= peak[1] <= 45
    # which images get a look: a function of seed, step and image alone, at the configured share
    assert look_seed(0, 3, 5, 0.0) == 0 and look_seed(0, 3, 5, 1.0) > 0
    assert look_seed(0, 3, 5, 0.5) == look_seed(0, 3, 5, 0.5)
    share = np.mean([look_seed(0, s, i, 0.3) > 0 for s in range(200) for i in range(5)])
    assert 0.25 < share < 0.35
    items = next(iter(_Plan(0, 1, 10, 4, 5, True, 1, 0, 1, look=1.0)))
    assert len(items) == 4 and all(len(it) == 4 and it[3] > 0 for it in items)
    assert all(it[3] == 0 for it in next(iter(_Plan(0, 1, 10, 4, 5, True, 1, 0, 1))))
    with pytest.raises(ValueError, match="survey_look"):
        TrainSpec(steps=2, eval_every=2, batch_size=3, lr=1e-3, weight_decay=1e-4, warmup_steps=1, grad_clip=10.0,
                  augment=True, seed=0, survey_look=1.5)
    # a short training with every image given a look runs and learns from finite losses
    coco = _coco_for(tiny_survey)
    spec = TrainSpec(steps=2, eval_every=2, batch_size=3, lr=1e-3, weight_decay=1e-4, warmup_steps=1,
                     grad_clip=10.0, augment=True, seed=0, survey_look=1.0)
    _, m = train_detector(coco, tiny_survey["root"] / "png", BackboneSpec(arch="resnet18"),
                          DetectorSpec(image_size=tiny_survey["spec"].image_size), spec, threads=1, device=DEVICE,
                          compute=ComputeSpec(precision="fp32"))
    assert np.isfinite(m["history"][0]["loss"])


def test_validation_subset_is_fixed_and_keeps_its_boxes():
    from clumpfinder.detection.train import validation_subset

    val = {"images": [{"id": i} for i in range(20)], "categories": [],
           "annotations": [{"id": 100 + i, "image_id": i % 20} for i in range(30)]}
    a, b = validation_subset(val, 5), validation_subset(val, 5)
    assert a == b and len(a["images"]) == 5
    ids = {im["id"] for im in a["images"]}
    assert {x["image_id"] for x in a["annotations"]} <= ids
    assert len(a["annotations"]) == sum(1 for x in val["annotations"] if x["image_id"] in ids)
    assert validation_subset(val, 50)["images"] == val["images"]


def test_best_validation_weights_are_kept_and_patience_stops(tiny_survey, monkeypatch):
    """The returned weights are those of the evaluation with the best validation F1; with patience
    1 training stops at the first evaluation that does not beat it."""
    import clumpfinder.detection.train as train_mod

    coco = _coco_for(tiny_survey, 6)
    bb, det = BackboneSpec(arch="resnet18"), DetectorSpec(image_size=tiny_survey["spec"].image_size)
    scores = iter([0.2, 0.5, 0.4, 0.9, 0.1])
    seen = {}

    def fake_score(model, val, images, detector, selection):  # the F1 of each evaluation, in order
        step = len(seen) + 1
        seen[step] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"val_f1": next(scores), "val_completeness": None, "val_purity": None, "val_score": 0.5}

    monkeypatch.setattr(train_mod, "validation_score", fake_score)
    spec = TrainSpec(steps=10, eval_every=2, batch_size=3, lr=1e-3, weight_decay=1e-4, warmup_steps=1,
                     grad_clip=10.0, augment=False, seed=0, patience=1)
    model, m = train_detector(coco, tiny_survey["root"] / "png", bb, det, spec, threads=1, val=coco)
    assert m["steps"] == 6 and m["stopped_early"]  # 0.2, 0.5 (best), 0.4: one evaluation without progress
    assert m["best_step"] == 4 and m["best_val_f1"] == 0.5
    for k, v in model.state_dict().items():
        assert torch.equal(v, seen[2][k]), k
    assert not torch.equal(seen[2]["roi_heads.box_predictor.cls_score.weight"],
                           seen[3]["roi_heads.box_predictor.cls_score.weight"])
    scores = iter([0.2, 0.5, 0.4, 0.9, 0.1])
    seen.clear()
    spec = TrainSpec(**{**spec.__dict__, "patience": 0})
    model, m = train_detector(coco, tiny_survey["root"] / "png", bb, det, spec, threads=1, val=coco)
    assert m["steps"] == 10 and not m["stopped_early"] and m["best_step"] == 8
    assert [h["val_f1"] for h in m["history"]] == [0.2, 0.5, 0.4, 0.9, 0.1]


def test_train_spec_refuses_unknown_settings():
    with pytest.raises(ValueError, match="unknown training settings.*epochs"):
        TrainSpec.from_config({"steps": 3, "eval_every": 1, "batch_size": 2, "lr": 1e-3, "weight_decay": 0.0,
                               "warmup_steps": 0, "grad_clip": 0.0, "augment": False, "seed": 0, "epochs": 3})


@pytest.mark.skipif(DEVICE.type != "cuda", reason="the GPU's random state in checkpoints: needs a GPU")
def test_resume_on_the_gpu_restores_its_random_state(tiny_survey, tmp_path, monkeypatch):
    """On a GPU, a training stopped after its first checkpoint resumes with the CUDA random state
    it saved and ends where an uninterrupted run does (to GPU rounding)."""
    import clumpfinder.detection.loop as loop

    coco = _coco_for(tiny_survey, 8)
    bb, det = BackboneSpec(arch="resnet18"), DetectorSpec(image_size=tiny_survey["spec"].image_size)
    spec = TrainSpec(steps=4, eval_every=2, batch_size=3, lr=1e-3, weight_decay=1e-4, warmup_steps=1, grad_clip=10.0,
                     augment=True, seed=3)
    ckpt, real = tmp_path / "last.pt", loop.evals_since_best

    def stop_after_first_checkpoint(history, *args):  # (called after each evaluation, before its checkpoint)
        if len(history) == 2 and ckpt.exists():
            raise KeyboardInterrupt
        return real(history, *args)

    monkeypatch.setattr(loop, "evals_since_best", stop_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_detector(coco, tiny_survey["root"] / "png", bb, det, spec, threads=1, checkpoint=ckpt, device=DEVICE)
    assert torch.load(ckpt, weights_only=False)["cuda_rng"] is not None
    monkeypatch.setattr(loop, "evals_since_best", real)
    _, resumed = train_detector(coco, tiny_survey["root"] / "png", bb, det, spec, threads=1, checkpoint=ckpt,
                                device=DEVICE)
    _, whole = train_detector(coco, tiny_survey["root"] / "png", bb, det, spec, threads=1, device=DEVICE)
    assert resumed["resumed_at_step"] == 2
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in whole["history"]], rel=1e-2)
