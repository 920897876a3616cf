"""The training loader: uint8 batches finished on the device (bit-exact), errors that end the run with
plsc's one-line message for 0, 1 and N workers and on every rank, and no process or file left behind."""
import os
import subprocess
import sys
import threading

import cv2
import numpy as np
import paddle
import pytest

import procs
from dist_utils import launch, rank_logs
from plsc.data.loader import SHM_DIR, build_loader
from plsc.registry import DATASETS, SAMPLERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "smoke", "IResNet_tiny_random.yaml")
NORM = {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "order": ""}}
IMAGENET = {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                               "order": "chw"}}
PIPELINES = {
    "plsc default (flip, RGB)": [{"DecodeImage": {"to_rgb": True}}, {"RandFlipImage": {"flip_code": 1}}, NORM,
                                 {"ToCHWImage": None}],
    "AdaFace augmentations, BGR": [{"DecodeImage": {"to_rgb": False}}, {"AdaFaceCrop": {"prob": 0.5}},
                                   {"AdaFaceLowRes": {"prob": 0.5}}, {"RandFlipImage": {"flip_code": -1}}, NORM,
                                   {"ToCHWImage": None}],
    "CHW decode, imagenet stats, vertical flip": [{"DecodeImage": {"to_rgb": True, "channel_first": True}},
                                                  {"RandFlipImage": {"flip_code": 0, "prob": 0.7}}, IMAGENET],
    "ToCHW before a chw normalize, no flip": [{"DecodeImage": {"to_rgb": True}}, {"ToCHWImage": None}, IMAGENET],
}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """32 noisy 112x112 JPEGs of 4 identities, a label.txt, and one naming a missing / a corrupt image."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    lines = []
    for k in range(32):
        img = cv2.resize(rng.integers(0, 256, (14, 14, 3), dtype=np.uint8), (112, 112))
        cv2.imwrite(str(root / f"{k}.jpg"), np.clip(img + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8))
        lines.append(f"{k}.jpg\t{k % 4}")
    (root / "label.txt").write_text("\n".join(lines) + "\n")
    (root / "missing.txt").write_text("\n".join(lines[:20] + ["gone.jpg\t1"] + lines[20:]) + "\n")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "corrupt.txt").write_text("\n".join(lines[:9] + ["broken.jpg\t2"] + lines[9:]) + "\n")
    return root


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_device_tail_equals_the_host_pipeline_bit_for_bit(image_folder, name):
    # the device tail's Paddle body (what GPUs run) equals its CPU body: tests/test_speed_settings.py
    spec = dict(image_root=str(image_folder), cls_label_path=str(image_folder / "label.txt"),
                transform_ops=PIPELINES[name], seed=3)
    host, dev = DATASETS.build("FaceIdentificationDataset", **spec), DATASETS.build("FaceIdentificationDataset", **spec)
    device = dev.defer_to_device()
    assert device is not None
    for epoch in (0, 1):
        host.set_epoch(epoch)
        dev.set_epoch(epoch)
        items = [dev[i] for i in range(32)]
        assert all(item[0].dtype == np.uint8 for item in items)
        flips = paddle.to_tensor(np.array([item[2] for item in items])) if len(items[0]) == 3 else None
        out = device(paddle.to_tensor(np.stack([item[0] for item in items])), flips).numpy()
        ref = np.stack([host[i][0] for i in range(32)])
        assert out.dtype == np.float32 and np.array_equal(out, ref), np.abs(out - ref).max()
        assert [item[1] for item in items] == [host[i][1] for i in range(32)]
    if flips is not None:
        assert 0 < flips.numpy().sum() < 32  # both flipped and unflipped samples were compared


def test_lists_without_a_device_tail_stay_on_the_host(image_folder):
    ops = [{"DecodeImage": {"to_rgb": True}}, NORM, {"AdaFaceLowRes": {"prob": 1.0}}, {"ToCHWImage": None}]
    ds = DATASETS.build("FaceIdentificationDataset", image_root=str(image_folder),
                        cls_label_path=str(image_folder / "label.txt"), transform_ops=ops)
    assert ds.defer_to_device() is None and ds[0][0].dtype == np.float32


@pytest.mark.parametrize("workers", [0, 3])
def test_loader_keeps_the_sampler_order_and_leaves_nothing_behind(image_folder, workers):
    ds = DATASETS.build("FaceIdentificationDataset", image_root=str(image_folder),
                        cls_label_path=str(image_folder / "label.txt"))
    sampler = SAMPLERS.build("DistributedBatchSampler", dataset=ds, batch_size=5, shuffle=True, seed=1, rank=0,
                             world_size=1)
    expect = [np.stack([ds[i][0] for i in idx]) for idx in sampler]
    got = [b[0].numpy() for b in build_loader(ds, sampler, num_workers=workers)]
    assert len(got) == len(expect) == 7 and all(np.array_equal(a, b) for a, b in zip(got, expect))
    it = iter(build_loader(ds, sampler, num_workers=workers))
    next(it)
    del it  # an early stop (max_train_step): workers and their batch files go away
    procs.wait_until(lambda: not _batch_files(), 30, "the batch files to go")
    procs.wait_until(lambda: not procs.children(), 30, "the worker processes to end")
    procs.wait_until(lambda: not [t for t in threading.enumerate() if t.name == "plsc-loader"], 30,
                     "the reader thread to end")


class _Sized:
    """Items whose image size changes every 6 batches (the reused shared-memory slots must grow and shrink)."""

    def __init__(self, n, batch):
        self.n, self.batch = n, batch

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        side = (3, 20, 5, 40)[(i // (6 * self.batch)) % 4]
        img = (np.arange(side * side * 3, dtype=np.uint8).reshape(side, side, 3) + i).astype(np.uint8)
        return img, np.int64(i), np.float32(i) / 7


@pytest.mark.parametrize("shared", [True, False])
def test_worker_batches_stay_exact_when_slots_are_reused_and_resized(shared):
    """48 batches over 2 workers: every worker's PREFETCH + 1 slots are reused ~8 times, with larger and
    smaller batches in turn; every batch equals the dataset's own stacked items, in order."""
    ds, bs = _Sized(48 * 4 - 3, 4), 4
    sampler = SAMPLERS.build("DistributedBatchSampler", dataset=ds, batch_size=bs, shuffle=False, drop_last=False,
                             rank=0, world_size=1)
    expect = [[np.stack([ds[i][k] for i in idx]) for k in range(3)] for idx in sampler]
    got = [[t.numpy() for t in batch] for batch in build_loader(ds, sampler, num_workers=2, use_shared_memory=shared)]
    assert len(got) == len(expect) == 48 and got[-1][0].shape[0] == 1
    for a, b in zip(got, expect):
        assert all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))
    procs.wait_until(lambda: not _batch_files(), 30, "the batch files to go")
    procs.wait_until(lambda: not procs.children(), 30, "the worker processes to end")


ABANDON = """
import sys
from plsc.env import setup_threads
setup_threads()
from plsc.data.loader import build_loader
from plsc.registry import DATASETS, SAMPLERS
ds = DATASETS.build("FaceIdentificationDataset", image_root=sys.argv[1], cls_label_path=sys.argv[2],
                    transform_ops=[{"DecodeImage": {"to_rgb": True}}, {"RandFlipImage": {}}, {"NormalizeImage": {}},
                                   {"ToCHWImage": None}])
ds.defer_to_device()  # uint8 items, as in training
sampler = SAMPLERS.build("DistributedBatchSampler", dataset=ds, batch_size=2, shuffle=False, rank=0, world_size=1)
batches = iter(build_loader(ds, sampler, num_workers=0))
next(batches)
print("stopping early", flush=True)
"""


def test_a_run_that_stops_while_the_reader_decodes_exits_cleanly(tmp_path):
    # large JPEGs keep the reader thread inside cv2 when the script ends: it must be stopped before Python
    # finalizes (a daemon thread in C++ code at finalization aborts the process: exit 134, "terminate called")
    rng = np.random.default_rng(0)
    for k in range(12):
        img = cv2.resize(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), (2400, 2400))
        cv2.imwrite(str(tmp_path / f"{k}.jpg"), img)
    (tmp_path / "label.txt").write_text("".join(f"{k}.jpg\t{k % 3}\n" for k in range(12)))
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", ABANDON, str(tmp_path), str(tmp_path / "label.txt")],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "stopping early" in out.stdout, out.stderr[-2000:]
        assert "terminate called" not in out.stderr


def _batch_files():
    return [f for f in os.listdir(SHM_DIR) if f.startswith(f"plsc-batch-{os.getpid()}-")]


def _no_process_left():
    """Every process the test started has ended (orphans included: pytest is their subreaper, see procs.py)."""
    procs.wait_until(lambda: not procs.descendants(), 60, "every process of the run to end")


def _train(tmp_path, image_folder, label_file, workers, timeout=300):
    cmd = [sys.executable, "-c", "from plsc.cli import train_main; train_main()", "-c", SMOKE,
           "-o", f"Global.output_dir={tmp_path}", "-o", "Model.class_num=4",
           "-o", f"DataLoader.Train.dataset={{name: FaceIdentificationDataset, image_root: {image_folder}, "
                 f"cls_label_path: {image_folder / label_file}}}",
           "-o", "DataLoader.Train.sampler.batch_size=4", "-o", f"DataLoader.Train.loader.num_workers={workers}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("label_file, message", [("missing.txt", "image not found: {root}/gone.jpg"),
                                                 ("corrupt.txt", "{root}/broken.jpg: cannot decode the image")])
def test_a_bad_image_ends_the_run_with_one_message(tmp_path, image_folder, workers, label_file, message):
    out = _train(tmp_path, image_folder, label_file, workers)  # a run that hangs instead ends at the timeout
    assert out.returncode == 2, out.stderr[-3000:]
    assert message.format(root=image_folder) in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("plsc-train: error:")]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    _no_process_left()


def test_a_bad_image_on_one_rank_ends_a_two_rank_run(tmp_path, image_folder):
    args = ["plsc-train", "-c", SMOKE, "-o", f"Global.output_dir={tmp_path / 'out'}", "-o", "Model.class_num=4",
            "-o", f"DataLoader.Train.dataset={{name: FaceIdentificationDataset, image_root: {image_folder}, "
                  f"cls_label_path: {image_folder / 'missing.txt'}}}",
            "-o", "DataLoader.Train.sampler.batch_size=4", "-o", "DataLoader.Train.sampler.shuffle=false",
            "-o", "DataLoader.Train.loader.num_workers=2", "-o", "DistributedStrategy.collective_timeout=20"]
    proc = launch(args, nproc=2, log_dir=tmp_path / "log", check=False, timeout=600)
    assert proc.returncode != 0
    logs = rank_logs(tmp_path / "log")
    assert f"plsc-train: error: image not found: {image_folder}/gone.jpg" in logs, logs[-4000:]
    _no_process_left()


@pytest.mark.parametrize("shared", [True, False])
def test_evaluation_with_workers_equals_the_reading_thread_and_reports_bad_images(image_folder, shared, monkeypatch):
    """DataLoader.Eval.loader.num_workers: evaluate_sets decodes in worker processes (batch by batch, in
    order) with the same embeddings as the 0-worker thread; a broken image ends it with the DataError
    naming the file, and no worker is left."""
    from plsc.errors import DataError
    from plsc.metrics.evaluator import evaluate_sets

    lines = [f"{2 * p}.jpg\t{2 * p + 1}.jpg\t{p % 2}" for p in range(16)]
    (image_folder / "pairs.txt").write_text("\n".join(lines) + "\n")
    (image_folder / "pairs_broken.txt").write_text("\n".join(lines[:11] + ["broken.jpg\t3.jpg\t1"]) + "\n")
    proj = np.random.default_rng(0).standard_normal((3 * 112 * 112, 16)).astype(np.float32)
    seen = []

    def embed(x):
        seen.append(x.shape[0])
        return x.reshape(len(x), -1) @ proj

    def spec(labels):
        return {"pairs": {"name": "FaceVerificationDataset", "image_root": str(image_folder),
                          "cls_label_path": str(image_folder / labels)}}

    import plsc.data.loader as loader_mod
    built = []
    real_build = loader_mod.build_loader

    def spy(*args, **kwargs):
        loader = real_build(*args, **kwargs)
        built.append(type(loader).__name__)
        return loader

    import plsc.metrics.embedding as embedding_mod
    monkeypatch.setattr(embedding_mod, "build_loader", spy)  # where evaluation calls it
    ref = evaluate_sets(embed, spec("pairs.txt"), batch_size=5, num_workers=0)["pairs"]
    assert built == ["InProcessLoader"]  # 0 workers: the decoding thread, no worker process
    sizes, seen[:] = list(seen), []
    got = evaluate_sets(embed, spec("pairs.txt"), batch_size=5, num_workers=2, use_shared_memory=shared)["pairs"]
    assert built == ["InProcessLoader", "WorkerLoader"]
    assert seen == sizes == [5] * 12 + [2] * 2  # 32 images and their mirrors, batches of 5, in order
    assert set(got) == set(ref) and all(np.array_equal(np.asarray(got[k]), np.asarray(ref[k])) for k in ref)
    with pytest.raises(DataError, match="broken.jpg"):
        evaluate_sets(embed, spec("pairs_broken.txt"), batch_size=5, num_workers=2, use_shared_memory=shared)
    procs.wait_until(lambda: not procs.children(), 30, "the worker processes to end")
    procs.wait_until(lambda: not _batch_files(), 30, "the batch files to go")


def test_a_bad_eval_image_with_eval_workers_ends_plsc_train_with_one_message(tmp_path, image_folder):
    lines = [f"{2 * p}.jpg\t{2 * p + 1}.jpg\t{p % 2}" for p in range(8)]
    (image_folder / "pairs_bad.txt").write_text("\n".join(lines + ["broken.jpg\t3.jpg\t1"]) + "\n")
    cmd = [sys.executable, "-c", "from plsc.cli import train_main; train_main()", "-c", SMOKE,
           "-o", f"Global.output_dir={tmp_path}", "-o", "Global.eval_during_train=true",
           "-o", "Global.eval_interval=1", "-o", "Global.max_train_step=1",
           "-o", f"DataLoader.Eval.dataset={{name: FaceVerificationDataset, image_root: {image_folder}, "
                 f"cls_label_path: {image_folder / 'pairs_bad.txt'}}}",
           "-o", "Metric.Eval=[{LFWAcc: {flip_test: true}}]",
           "-o", "DataLoader.Eval.sampler={name: BatchSampler, batch_size: 4}",
           "-o", "DataLoader.Eval.loader.num_workers=2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("plsc-train: error:")]
    assert len(errors) == 1 and f"{image_folder}/broken.jpg: cannot decode the image" in errors[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    _no_process_left()
