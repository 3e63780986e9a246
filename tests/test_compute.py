"""Devices, mixed precision, the image cache and data-parallel training, tested on the CPU: GPUs
are faked as CUDA_VISIBLE_DEVICES entries, mixed precision runs through torch's CPU autocast, and
data-parallel training runs two gloo processes (the GPU figures come from benchmarks/gpu_smoke.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from clumpfinder import compute
from clumpfinder.compute import ComputeSpec, acquire_gpus, autocast_dtype, job_devices, job_gpu_count, visible_gpus
from clumpfinder.detection.detector import BackboneSpec, DetectorSpec, load_model, predict, save_model
from clumpfinder.detection.parallel import train_job
from clumpfinder.detection.train import TrainSpec, batch_parts, train_detector
from clumpfinder.labels.cache import ImageCache, write_image_cache

CPU = torch.device("cpu")


def _coco(tiny_survey, rows):
    from clumpfinder.labels.coco import coco_dataset, truth_boxes

    man, truth = tiny_survey["manifest"].iloc[rows], tiny_survey["truth"]
    boxes = truth_boxes(tiny_survey["manifest"], truth, 2.0, 0.03, 0.015)
    return coco_dataset(man.rename(columns={"png": "file_name"}), boxes, "t")


def _digest(model: torch.nn.Module) -> str:
    return hashlib.sha256(b"".join(v.cpu().numpy().tobytes() for v in model.state_dict().values())).hexdigest()


# ----------------------------------------------------------------------------- which device a job gets
@pytest.fixture
def four_gpus(monkeypatch):
    """A machine whose driver reports four GPUs (a CUDA build of torch, as installed)."""
    monkeypatch.setattr(compute, "nvml_gpu_count", lambda: 4)
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for var in ("SLURM_JOB_ID", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE"):
        monkeypatch.delenv(var, raising=False)


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch, four_gpus):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == ["0", "1", "2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-4b1c,5")
    assert visible_gpus() == ["2", "GPU-4b1c", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_no_driver_no_gpu(monkeypatch):
    """A scheduler's CUDA_VISIBLE_DEVICES for a GPU the machine does not have (the test cluster's
    fake GPU) is no GPU: a job given one computes on the CPU."""
    monkeypatch.setattr(compute, "nvml_gpu_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert visible_gpus() == []
    with job_devices(1, ComputeSpec()) as devices:
        assert devices == [CPU]


def test_a_job_without_gpus_computes_on_the_cpu(caplog):
    with job_devices(0, ComputeSpec(), candidates=["0", "1"]) as devices:
        assert devices == [CPU]
    with caplog.at_level(logging.INFO), job_devices(2, ComputeSpec(device="cpu"), candidates=["0", "1"]) as devices:
        assert devices == [CPU]
    assert "compute.device is 'cpu'" in caplog.text
    with caplog.at_level(logging.WARNING), job_devices(1, ComputeSpec(), candidates=[]) as devices:
        assert devices == [CPU]  # auto, given a GPU on a machine without one
    assert "shows none" in caplog.text
    with pytest.raises(ValueError, match="was given no GPU"), job_devices(0, ComputeSpec(device="cuda"), "training"):
        pass
    with pytest.raises(RuntimeError, match="asks for 2 GPU"), job_devices(2, ComputeSpec(device="cuda"),
                                                                           candidates=["0"]):
        pass


def test_concurrent_jobs_get_distinct_gpus(tmp_path, monkeypatch, four_gpus):
    """Four faked GPUs: jobs lock distinct ones, see only their own (renumbered from cuda:0), wait
    while none is free, and free theirs when they end."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    spec = ComputeSpec(gpu_lock_dir=str(tmp_path))
    with job_devices(2, spec, "job a") as a:
        seen_a = os.environ["CUDA_VISIBLE_DEVICES"]
        assert a == [torch.device("cuda", 0), torch.device("cuda", 1)] and seen_a == "0,1"
        with job_devices(1, spec, "job b", candidates=["0", "1", "2", "3"]):
            seen_b = os.environ["CUDA_VISIBLE_DEVICES"]
            held_c = acquire_gpus(1, ["0", "1", "2", "3"], tmp_path)
            with pytest.raises(TimeoutError, match="no 1 free GPU"):
                acquire_gpus(1, ["0", "1", "2", "3"], tmp_path, poll_s=0.05, timeout_s=0.2)
            held_c.release()
        assert {seen_a, seen_b, held_c.gpus[0]} == {"0,1", "2", "3"}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"  # restored
    assert acquire_gpus(4, ["0", "1", "2", "3"], tmp_path, timeout_s=0).gpus == ["0", "1", "2", "3"]


def test_a_slurm_job_takes_its_own_gpus_without_locks(tmp_path, monkeypatch, four_gpus):
    """A SLURM job given GPUs sees exactly its own (renumbered from 0): it takes them even where
    another job on the node holds a lock of the same index. A workstation job that sees one GPU
    and asks for one still locks it, so two such jobs never share it."""
    other = acquire_gpus(1, ["0"], tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    spec = ComputeSpec(gpu_lock_dir=str(tmp_path))
    with pytest.raises(TimeoutError):  # not a SLURM job: the lock holds
        acquire_gpus(1, ["0"], tmp_path, poll_s=0.05, timeout_s=0.2)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_JOB_GPUS", "3")
    with job_devices(1, spec, "slurm job") as devices:
        assert devices == [torch.device("cuda", 0)] and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    other.release()


def test_gpu_count_from_gpu_or_gres():
    from types import SimpleNamespace as R

    assert job_gpu_count(R(gpu=2)) == 2 and job_gpu_count(R(gpu=0)) == 0 and job_gpu_count(R()) == 0
    assert job_gpu_count(R(gpu=0, gres="gpu:1")) == 1 and job_gpu_count(R(gres="gpu:a100:2")) == 2
    assert job_gpu_count(R(gres="tmp:10,gpu:3")) == 3 and job_gpu_count(R(gres="tmp:10")) == 0


_HOLDER = """
import sys, time
from clumpfinder.compute import acquire_gpus
lease = acquire_gpus(2, ["0", "1", "2"], sys.argv[1])
print(",".join(lease.gpus), flush=True)
time.sleep(600)
"""


def test_a_killed_job_frees_its_gpus(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    held = proc.stdout.readline().strip().split(",")
    assert len(held) == 2
    with pytest.raises(TimeoutError):
        acquire_gpus(2, ["0", "1", "2"], tmp_path, poll_s=0.05, timeout_s=0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert sorted(acquire_gpus(2, ["0", "1", "2"], tmp_path, timeout_s=5).gpus) == ["0", "1"]


def test_only_training_takes_several_gpus(tiny_config):
    from clumpfinder.config import check_config

    cfg = json.loads(json.dumps(tiny_config))
    cfg["resources"]["train"]["gpu"] = 2
    with pytest.raises(ValueError, match="micro_batches is 1"):
        check_config(cfg)
    cfg["training"]["micro_batches"] = 4
    check_config(cfg)
    cfg["resources"]["evaluate"]["gpu"] = 2
    with pytest.raises(ValueError, match="resources.evaluate.gpu"):
        check_config(cfg)


# ----------------------------------------------------------------------------- precision
def test_precision_settings():
    assert autocast_dtype("auto", CPU) is None and autocast_dtype("fp32", CPU) is None
    assert autocast_dtype("bf16", CPU) == torch.bfloat16 and autocast_dtype("fp16", CPU) == torch.float16
    with pytest.raises(ValueError, match="compute.precision"):
        ComputeSpec(precision="fp8")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_and_prediction(tiny_survey, tmp_path, precision):
    """Mixed precision on the CPU's autocast (fp16 with its loss scaler): finite losses, fp32 box
    coordinates, the same weights file layout, and predictions close to the fp32 model's."""
    coco = _coco(tiny_survey, slice(0, 6))
    bb, det = BackboneSpec(arch="resnet18"), DetectorSpec(image_size=tiny_survey["spec"].image_size)
    spec = TrainSpec(steps=2, eval_every=1, batch_size=3, lr=1e-3, weight_decay=1e-4, warmup_steps=1, grad_clip=10.0,
                     augment=True, seed=0)
    model, m = train_detector(coco, tiny_survey["root"] / "png", bb, det, spec, threads=1, device=CPU,
                              compute=ComputeSpec(precision=precision), checkpoint=tmp_path / "last.pt")
    assert m["precision"] == {"bf16": "bfloat16", "fp16": "float16"}[precision]
    assert all(np.isfinite(h["loss"]) for h in m["history"]) and m["steps"] == 2
    if precision == "fp16":  # the scaler's state travels in the checkpoint
        assert torch.load(tmp_path / "last.pt", weights_only=False)["scaler"]["scale"] > 0
    save_model(model, bb, det, tmp_path / "model.pt")
    fp32, _ = load_model(tmp_path / "model.pt", CPU)
    mixed, _ = load_model(tmp_path / "model.pt", CPU, autocast_dtype(precision, CPU))
    images = tiny_survey["root"] / "png"
    seen = []  # the RPN head and the box predictor get fp32 inputs, with autocast off

    def fp32_inputs(module, args):
        seen.append((type(module).__name__, args[0][0].dtype if isinstance(args[0], list) else args[0].dtype,
                     torch.is_autocast_enabled("cpu")))
    for head in (mixed.rpn.head, mixed.roi_heads.box_predictor):
        head.register_forward_pre_hook(fp32_inputs)
    with torch.inference_mode():
        out = mixed([torch.rand(3, 96, 96)])[0]
    assert out["boxes"].dtype == torch.float32 and len(seen) == 2
    assert all(dtype == torch.float32 and not on for _, dtype, on in seen), seen
    a, b = predict(fp32, coco, images), predict(mixed, coco, images)
    assert a and b
    top_a = sorted(a, key=lambda r: -r["score"])[0]
    top_b = sorted(b, key=lambda r: -r["score"])[0]
    assert np.allclose(top_a["bbox"], top_b["bbox"], atol=1.5) and abs(top_a["score"] - top_b["score"]) < 0.1


def test_mixed_precision_pretraining(tmp_path):
    from clumpfinder.detection.pretrain import PretrainSpec, pretrain_encoder

    rng = np.random.default_rng(0)
    images = [torch.from_numpy(rng.integers(0, 255, (3, 32, 32), dtype=np.uint8)) for _ in range(12)]
    counts = rng.integers(0, 5, (12, 2)).astype(float)
    spec = PretrainSpec(epochs=1, batch_size=4, lr=1e-3, weight_decay=0.0, warmup_steps=1, views=2,
                        validation_fraction=0.25, seed=0)
    _, m = pretrain_encoder(images, counts, {"q": (("a", "b"), None)}, BackboneSpec("resnet18"), spec, threads=1,
                            compute=ComputeSpec(precision="bf16"), device=CPU)
    assert m["precision"] == "bfloat16" and np.isfinite(m["history"][-1]["loss"])
    assert m["max_logit_change_under_d4"] < 0.1  # still (nearly) invariant in bf16


# ----------------------------------------------------------------------------- image cache
def test_image_cache_holds_the_decoded_images(tiny_survey, tmp_path):
    from clumpfinder.detection.detector import load_images

    coco = _coco(tiny_survey, slice(0, 5))
    coco["images"][1] = {**coco["images"][1], "crop": [10, 20], "width": 40, "height": 30}  # ragged sizes
    index = write_image_cache(coco, tiny_survey["root"] / "png", tmp_path / "c.npy", tmp_path / "c.json")
    assert len(index["images"]) == 5
    cache = ImageCache(tmp_path / "c.npy", tmp_path / "c.json")
    for a, b in zip(cache.images(coco), load_images(coco, tiny_survey["root"] / "png")):
        assert torch.equal(a, b)
    other = _coco(tiny_survey, slice(6, 7))
    with pytest.raises(KeyError, match="not in the image cache"):
        cache.image(other["images"][0])
    (tmp_path / "c.npy").write_bytes((tmp_path / "c.npy").read_bytes()[:-100])
    with pytest.raises(ValueError, match="does not match its index"):
        ImageCache(tmp_path / "c.npy", tmp_path / "c.json").images(coco)


def test_cache_and_loader_workers_change_nothing(tiny_survey, tmp_path):
    """Training from the memory-mapped cache with two DataLoader workers ends with the very weights
    of training from the PNGs in the process (CPU, same seed)."""
    coco = _coco(tiny_survey, slice(0, 8))
    write_image_cache(coco, tiny_survey["root"] / "png", tmp_path / "c.npy", tmp_path / "c.json")
    bb, det = BackboneSpec(arch="resnet18"), DetectorSpec(image_size=tiny_survey["spec"].image_size)
    spec = TrainSpec(steps=3, eval_every=3, batch_size=4, lr=1e-3, weight_decay=1e-4, warmup_steps=1, grad_clip=10.0,
                     augment=True, seed=1)
    a, ma = train_detector(coco, tiny_survey["root"] / "png", bb, det, spec, threads=1, device=CPU)
    b, mb = train_detector(coco, ImageCache(tmp_path / "c.npy", tmp_path / "c.json"), bb, det, spec, threads=1,
                           device=CPU, compute=ComputeSpec(loader_workers=2))
    assert _digest(a) == _digest(b) and ma["history"][0]["loss"] == mb["history"][0]["loss"]
    assert mb["loader_workers"] == 2


# ----------------------------------------------------------------------------- data parallel
def test_batch_parts():
    assert batch_parts(list(range(7)), 2) == [[0, 1, 2, 3], [4, 5, 6]]
    assert batch_parts(list(range(4)), 4) == [[0], [1], [2], [3]]


def test_micro_batches_are_never_empty():
    """With micro-batches every batch is full (9 images, batches of 4: the ninth image of each
    epoch's permutation waits for a later epoch), so no part, and no process's share, is empty;
    the processes' shares put together are the one-process micro-batches."""
    from clumpfinder.detection.train import batch_plan, my_parts

    assert [len(batch_plan(s, 9, 4, 0, True)) for s in range(3)] == [4, 4, 1]  # without micro-batches
    assert [len(batch_plan(s, 9, 4, 0, True, full=True)) for s in range(3)] == [4, 4, 4]
    for step in range(12):
        one = my_parts(step, 9, 4, 0, True, parts=4)
        assert len(one) == 4 and all(len(p) == 1 for p in one)
        two = [my_parts(step, 9, 4, 0, True, parts=4, rank=r, size=2) for r in range(2)]
        assert two[0] + two[1] == one
    assert [len(p) for p in my_parts(0, 9, 7, 0, True, parts=3)] == [3, 2, 2]


def test_two_gloo_processes_train_as_one_process_with_two_micro_batches(tiny_survey, tmp_path):
    """Data-parallel training on two CPU processes (gloo) against one process that computes each
    batch of 4 as two micro-batches of 2: the same losses and weights, to float rounding. The
    samplers of the RPN and RoI heads are set to keep every anchor and proposal, so that their
    random draws (which differ between one and two processes) do not matter."""
    coco = _coco(tiny_survey, slice(0, 9))  # 9 images, batches of 4: every epoch leaves one out
    write_image_cache(coco, tiny_survey["root"] / "png", tmp_path / "c.npy", tmp_path / "c.json")
    bb = BackboneSpec(arch="resnet18", fpn_channels=32)
    det = DetectorSpec(image_size=tiny_survey["spec"].image_size, rpn_batch_size_per_image=100_000,
                       box_batch_size_per_image=100_000)
    common = dict(steps=4, eval_every=1, batch_size=4, lr=1e-3, weight_decay=1e-4, warmup_steps=1, grad_clip=10.0,
                  augment=True, seed=2)
    cache = ImageCache(tmp_path / "c.npy", tmp_path / "c.json")
    one, m_one = train_detector(coco, cache, bb, det, TrainSpec(**common, micro_batches=2), threads=1, device=CPU)
    whole, m_whole = train_detector(coco, cache, bb, det, TrainSpec(**common), threads=1, device=CPU)
    with pytest.raises(ValueError, match="multiple of the 2 processes"):
        train_job([CPU, CPU], tmp_path / "ddp.pt", tmp_path / "ddp.json", coco=coco, images=cache, backbone=bb,
                  detector=det, spec=TrainSpec(**common), threads=1)
    train_job([CPU, CPU], tmp_path / "ddp.pt", tmp_path / "ddp.json", log_path=tmp_path / "ddp.log",
              extra_metrics={"name": "ddp"}, coco=coco, images=cache, backbone=bb, detector=det,
              spec=TrainSpec(**common, micro_batches=2), threads=1)
    m_ddp = json.loads((tmp_path / "ddp.json").read_text())
    ddp, _ = load_model(tmp_path / "ddp.pt", CPU)
    assert m_ddp["processes"] == 2 and m_ddp["name"] == "ddp" and m_ddp["steps"] == 4
    assert "x 2 processes" in (tmp_path / "ddp.log").read_text()
    for key in ("loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"):
        got, want = [h[key] for h in m_ddp["history"]], [h[key] for h in m_one["history"]]
        assert got == pytest.approx(want, rel=1e-3, abs=1e-5), key
    params = dict(one.named_parameters())
    for name, p in ddp.named_parameters():
        assert torch.allclose(p, params[name], rtol=1e-3, atol=1e-5), name
    # a batch of 4 in one piece is another optimisation (the losses are normalised per batch)
    assert [h["loss"] for h in m_whole["history"]] != pytest.approx([h["loss"] for h in m_one["history"]], rel=1e-6)


def test_a_failing_worker_fails_the_job(tiny_survey, tmp_path):
    coco = _coco(tiny_survey, slice(0, 4))
    spec = TrainSpec(steps=1, eval_every=1, batch_size=4, lr=1e-3, weight_decay=0.0, warmup_steps=1, grad_clip=0.0,
                     augment=False, seed=0, micro_batches=2)
    coco["images"][2]["file_name"] = "missing.png"
    with pytest.raises(RuntimeError, match="data-parallel training failed"):
        train_job([CPU, CPU], tmp_path / "m.pt", tmp_path / "m.json", coco=coco, images=tiny_survey["root"] / "png",
                  backbone=BackboneSpec(arch="resnet18"), detector=DetectorSpec(image_size=96), spec=spec, threads=1)
    assert not (tmp_path / "m.pt").exists()
    with pytest.raises(ValueError, match="one kind"):
        train_job([CPU, torch.device("cuda", 0)], tmp_path / "m.pt", tmp_path / "m.json", spec=spec)


def test_each_process_gets_an_equal_share_of_the_micro_batches():
    from clumpfinder.detection.train import check_processes

    check_processes(4, 2)
    check_processes(3, 1)
    with pytest.raises(ValueError, match=r"micro_batches \(3\) must be a multiple of the 2 processes"):
        check_processes(3, 2)
