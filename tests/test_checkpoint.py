"""Checkpoints: resume at another world size (2 -> 1 -> 2, C % W != 0), fine-tuning, bad checkpoints."""
import os
import re
import shutil

import numpy as np
import pytest

from dist_utils import launch
from test_train import SMOKE, losses, plsc


# 15 classes (odd: shards [0, 8) and [8, 15) on 2 ranks), global batch 8, synchronized BN so that
# 2 ranks x 4 images compute exactly what 1 rank x 8 images computes.
COMMON = ["-c", SMOKE, "-o", "Model.class_num=15", "-o", "DataLoader.Train.dataset.num_classes=15",
          "-o", "DataLoader.Train.dataset.num_samples=240", "-o", "DistributedStrategy.sync_bn=true",
          "-o", "Global.save_unit=step", "-o", "Global.save_interval=1", "-o", "Global.epochs=1"]


def _w1(out, steps, *extra):
    return losses(plsc("train", *COMMON, "-o", f"Global.output_dir={out}", "-o", f"Global.max_train_step={steps}",
                       "-o", "DataLoader.Train.sampler.batch_size=8", *extra).stdout)


def _w2(out, steps, log_dir, *extra):
    launch(["plsc-train", *COMMON, "-o", f"Global.output_dir={out}", "-o", f"Global.max_train_step={steps}",
            "-o", "DataLoader.Train.sampler.batch_size=4", *extra], nproc=2, log_dir=log_dir)
    return losses((log_dir / "workerlog.0").read_text())


def _close(a, b, keys, rtol):
    for k in keys:
        assert abs(a[k] - b[k]) <= rtol * abs(b[k]), (k, a[k], b[k])


def _snapshot(out, name):
    src = out / "IResNet18" / "latest"
    dst = out / name
    shutil.copytree(src, dst)
    return dst


def test_resume_across_world_sizes_2_to_1_to_2(tmp_path):
    """A 2-rank run resumed on 1 rank, then on 2 again, follows the runs that kept their world size.

    Re-sharding is exact (checked on the arrays). The first step after a resume starts from the
    same state in both runs, so its loss matches to 1e-5; the second one (its weights moved by the
    restored momentum) differs only by fp32 reduction order (BatchNorm sums over 4 vs 8 images of
    112 x 112), which this tiny BN-heavy net amplifies within a few steps (measured, relative: first
    steps 2e-7 .. 5e-7, second steps 4e-7 .. 3e-6; the third steps of 3-step legs 4e-5 .. 1.5e-4).
    """
    from plsc.io.fc_shards import merge
    from plsc.tools.fc_shards import read_shards

    a = _w2(tmp_path / "a", 2, tmp_path / "log_a")
    ref = _w1(tmp_path / "ref", 1)
    _close(a, ref, [1], 1e-5)  # same start: 2 ranks x 4 == 1 rank x 8 (DP + sharded FC + sync BN)
    a2 = _snapshot(tmp_path / "a", "a2")
    # restore at world size 1 and save at once: the 1-rank shard is exactly the 2-rank shards merged
    _w1(tmp_path / "r", 2, "-o", f"Global.checkpoint={a2}")
    two, one = merge(read_shards(a2)), merge(read_shards(tmp_path / "r" / "IResNet18" / "latest"))
    assert one["weight"].shape == (15, 32)
    for key in ("weight", "momentum"):
        assert np.array_equal(two[key], one[key]), key
    # 2 -> 1: continue on 1 rank vs continue on 2 ranks
    kept = _w2(tmp_path / "a", 4, tmp_path / "log_a2", "-o", f"Global.checkpoint={a2}")
    b = _w1(tmp_path / "b", 4, "-o", f"Global.checkpoint={a2}")
    assert sorted(b) == sorted(kept) == [3, 4]
    _close(b, kept, [3], 1e-5)
    _close(b, kept, [4], 1e-3)
    # 1 -> 2: continue on 2 ranks vs continue on 1 rank
    b4 = _snapshot(tmp_path / "b", "b4")
    kept = _w1(tmp_path / "b", 6, "-o", f"Global.checkpoint={b4}")
    c = _w2(tmp_path / "c", 6, tmp_path / "log_c", "-o", f"Global.checkpoint={b4}")
    assert sorted(c) == sorted(kept) == [5, 6]
    _close(c, kept, [5], 1e-5)
    _close(c, kept, [6], 1e-3)
    assert "re-sharded the FC from 1 to 2 rank(s)" in (tmp_path / "log_c" / "workerlog.0").read_text()

    # the shard tool: merging the 2-rank checkpoint gives the full classifier; splitting it back is exact
    from plsc.cli.data import fc_shards_main as shards_main

    src = tmp_path / "c" / "IResNet18" / "latest"
    assert shards_main(["merge", str(src), "--out", str(tmp_path / "full.npz")]) == 0
    full = np.load(tmp_path / "full.npz")
    parts = [np.load(src / f"fc_rank{r}.npz") for r in range(2)]
    assert full["weight"].shape == (15, 32)
    assert np.array_equal(full["weight"], np.concatenate([p["weight"] for p in parts]))
    assert np.array_equal(full["momentum"], np.concatenate([p["momentum"] for p in parts]))
    assert shards_main(["split", str(src), "--world-size", "3", "--out", str(tmp_path / "w3")]) == 0
    w3 = [np.load(tmp_path / "w3" / f"fc_rank{r}.npz") for r in range(3)]
    assert [p["weight"].shape[0] for p in w3] == [5, 5, 5]
    assert np.array_equal(np.concatenate([p["weight"] for p in w3]), full["weight"])
    with pytest.raises(SystemExit) as e:  # no --force
        shards_main(["split", str(src), "--world-size", "3", "--out", str(tmp_path / "w3")])
    assert e.value.code == 2
    # the split checkpoint is a valid checkpoint: one process resumes from it
    d = _w1(tmp_path / "d", 7, "-o", f"Global.checkpoint={tmp_path / 'w3'}")
    assert sorted(d) == [7]
    assert "re-sharded the FC from 3 to 1 rank(s)" in (tmp_path / "d" / "IResNet18" / "train.log").read_text()


@pytest.fixture
def trained(smoke_checkpoint):
    """A 3-step smoke run's checkpoint (tests/conftest.py, shared with tests/test_finetune.py)."""
    return smoke_checkpoint


def test_fine_tune_loads_fc_only_when_class_num_matches(trained, tmp_path):
    same = plsc("train", "-c", SMOKE, "-o", f"Global.output_dir={tmp_path / 's'}", "-o", "Global.max_train_step=1",
                "-o", f"Global.pretrained_model={trained}")
    assert "loaded backbone weights" in same.stdout and "loaded the FC weights too" in same.stdout
    other = plsc("train", "-c", SMOKE, "-o", f"Global.output_dir={tmp_path / 'o'}", "-o", "Global.max_train_step=1",
                 "-o", f"Global.pretrained_model={trained}", "-o", "Model.class_num=20",
                 "-o", "DataLoader.Train.dataset.num_classes=20")
    assert "pretrained model has 16 classes, the config 20: the FC starts fresh" in other.stdout
    # the fine-tuned run starts from the pretrained backbone: its first loss is far below a fresh start's (the run
    # that wrote `trained` started fresh with this config: its step 1, logged before any update)
    fresh = losses((trained.parent / "train.log").read_text())[1]
    assert losses(same.stdout)[1] < fresh


def test_fine_tune_in_process_copies_weights(trained, tmp_path):
    from plsc.config import load_config
    from plsc.engine.engine import Trainer

    e = Trainer(load_config(SMOKE, [f"Global.output_dir={tmp_path}", f"Global.pretrained_model={trained}"]))
    saved = np.load(trained / "fc_rank0.npz")
    assert np.array_equal(e.head.weight.numpy(), saved["weight"])
    assert not e.fc_opt.slots["momentum"].numpy().any(), "fine-tuning starts with a fresh momentum"
    backbone = np.load(trained / "backbone.npz")
    for k, v in e.backbone.state_dict().items():
        assert np.array_equal(v.numpy(), backbone[k]), k


@pytest.mark.parametrize("mutate, message", [
    ("missing", "checkpoint not found"),
    ("flip", "file backbone.npz is corrupt"),
    ("truncate", "file fc_rank0.npz is corrupt"),
    ("no_manifest", "manifest.json"),
    ("other_model", "layer4.0.conv1.weight [32, 16, 3, 3] in the file, [48, 16, 3, 3] in the model"),
])
def test_bad_checkpoints_fail_with_one_clear_message(trained, tmp_path, mutate, message):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained, ckpt)
    extra = []
    if mutate == "missing":
        shutil.rmtree(ckpt)
    elif mutate == "flip":
        data = bytearray((ckpt / "backbone.npz").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (ckpt / "backbone.npz").write_bytes(bytes(data))
    elif mutate == "truncate":
        data = (ckpt / "fc_rank0.npz").read_bytes()
        (ckpt / "fc_rank0.npz").write_bytes(data[: len(data) // 3])
    elif mutate == "no_manifest":
        os.remove(ckpt / "manifest.json")
    elif mutate == "other_model":
        extra = ["-o", "Model.arch_kwargs={layers: [1, 1, 1, 1], widths: [8, 16, 16, 48]}"]
    out = plsc("train", "-c", SMOKE, "-o", f"Global.output_dir={tmp_path / 'o'}", "-o", "Global.max_train_step=1",
               "-o", f"Global.checkpoint={ckpt}", *extra, check=False)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_interrupted_save_falls_back_to_previous(trained, tmp_path):
    """A kill between the two renames of a save leaves <name>.old; a half-written .tmp is ignored."""
    run = tmp_path / "run"
    shutil.copytree(trained, run / "latest.old")
    os.makedirs(run / ".latest.tmp")
    (run / ".latest.tmp" / "backbone.npz").write_bytes(b"partial")
    out = plsc("train", "-c", SMOKE, "-o", f"Global.output_dir={tmp_path / 'o'}", "-o", "Global.max_train_step=4",
               "-o", f"Global.checkpoint={run / 'latest'}")
    assert sorted(losses(out.stdout)) == [4]


def test_resume_with_another_global_batch_keeps_the_epoch_position(tmp_path):
    """4 steps of 4 images = 16 samples; resumed with batches of 8 it starts at batch 2 of the epoch."""
    plsc("train", "-c", SMOKE, "-o", f"Global.output_dir={tmp_path / 'a'}", "-o", "Global.max_train_step=4",
         "-o", "DataLoader.Train.sampler.batch_size=4")
    out = plsc("train", "-c", SMOKE, "-o", f"Global.output_dir={tmp_path / 'b'}", "-o", "Global.max_train_step=6",
               "-o", "DataLoader.Train.sampler.batch_size=8",
               "-o", f"Global.checkpoint={tmp_path / 'a' / 'IResNet18' / 'latest'}")
    assert "global batch per step changed from 4 to 8 images: resuming epoch 0 at batch 2 (sample 16" in out.stdout
    assert "read again" not in out.stdout
    assert re.search(r"epoch 0 step 3/32 global_step 5 ", out.stdout), out.stdout[-2000:]


@pytest.mark.parametrize("manifest, message", [
    ("[" * 100000, "manifest.json is truncated or corrupt"),
    ('{"files": [1, 2], "world_size": 1}', "is not a plsc manifest"),
    ('{"files": {"../../etc/passwd": {"bytes": 1, "sha256": "x"}}, "world_size": 1}', "malformed entry '../../etc/passwd'"),
])
def test_malformed_manifest_is_refused(trained, tmp_path, manifest, message):
    from plsc.io import checkpoint as ckpt
    from plsc.errors import CheckpointError

    d = tmp_path / "ckpt"
    shutil.copytree(trained, d)
    (d / "manifest.json").write_text(manifest)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        ckpt.verify(str(d))
