"""Nothing half-loaded, nothing overwritten, no false refusals (issue 26), through the CLIs.

Each refusal: exit code 2, one message naming the file / key / tensor, and the file system after it
(nothing written, nothing lost). Most CLIs run in this process (their main functions); the ones that
could block for ever (a FIFO) run in a subprocess with a timeout.
"""
import hashlib
import json
import os
import pickle
import socket
import subprocess
import sys

import cv2
import numpy as np
import pytest

from test_train import ROOT, SMOKE

TINY = ["-c", SMOKE, "-o", "Global.max_train_step=1", "-o", "Global.epochs=1"]


def run_cli(main, argv, capsys):
    """(exit code, stdout, stderr) of a console-script main run in this process."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code or 0, out.out, out.err


def train(argv, capsys):
    from plsc.cli import train_main

    return run_cli(train_main, argv, capsys)


def tree(path):
    """{relative path: sha256} of every file under `path` (the file system to compare before / after)."""
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def smoke_ckpt(tmp_path_factory):
    """A 1-step smoke run (IResNet18 tiny) and a checkpoint of another architecture (MobileFaceNet_base)."""
    import paddle

    from plsc.io import checkpoint as ckpt
    from plsc.engine.state_io import layer_arrays
    from plsc.registry import MODELS

    base = tmp_path_factory.mktemp("ckpts")
    from plsc.cli import train_main

    with pytest.raises(SystemExit) as e:
        train_main([*TINY, "-o", f"Global.output_dir={base / 'run'}"])
        raise SystemExit(0)
    assert e.value.code in (0, None)
    paddle.seed(0)
    other = MODELS.build("MobileFaceNet_base", num_features=32)
    d = base / "mfn"
    tmp = ckpt.begin(str(d))
    ckpt.save_arrays(os.path.join(tmp, "backbone.npz"), layer_arrays(other))
    ckpt.save_json(os.path.join(tmp, "state.json"), {"model": "MobileFaceNet_base", "class_num": None,
                                                     "world_size": 0, "config": None})
    ckpt.commit(str(d), 0)
    return base / "run" / "IResNet18" / "latest", d


# ---------------------------------------------------------------- 1. strict loading
def test_another_architecture_is_refused_by_every_loader(smoke_ckpt, tmp_path, capsys):
    from plsc.cli import eval_main, export_main
    from plsc.cli.ijb import ijb_main

    _, mfn = smoke_ckpt
    before = tree(mfn)
    out = tmp_path / "out"
    common = ["-c", SMOKE, "-o", f"Global.output_dir={out}"]
    cases = {
        "plsc-export": (export_main, [*common, "-o", f"Global.pretrained_model={mfn}"]),
        "plsc-eval": (eval_main, [*common, "-o", f"Global.pretrained_model={mfn}",
                                  "-o", "DataLoader.Eval.dataset={name: FaceBinDataset, bin_path: x.bin}"]),
        "fine-tuning": (None, [*TINY, "-o", f"Global.output_dir={out}", "-o", f"Global.pretrained_model={mfn}"]),
        "resume": (None, [*TINY, "-o", f"Global.output_dir={out}", "-o", f"Global.checkpoint={mfn}"]),
        "plsc-ijb": (ijb_main, ["-c", SMOKE, "-o", f"Global.output_dir={out}", "-o", f"Global.pretrained_model={mfn}",
                                "--root", str(tmp_path / "ijb"), "--out", str(tmp_path / "ijb_out")]),
    }
    from test_ijb import make_ijb

    make_ijb(str(tmp_path / "ijb"), one_to_n=False)
    for what, (main, argv) in cases.items():
        code, _, err = run_cli(main, argv, capsys) if main else train(argv, capsys)
        assert code == 2, (what, err)
        assert str(mfn) in err and "does not match the IResNet18 built from the config" in err, (what, err)
        assert "missing from the file" in err and "MobileFaceNet_base" in err, (what, err)
        assert "-o Model.name=MobileFaceNet_base" in err and err.count("\n") == 1, (what, err)
        assert not out.exists() and not (tmp_path / "ijb_out").exists(), what  # nothing written
    assert tree(mfn) == before


def test_a_mis_shaped_tensor_is_named_and_nothing_is_exported(smoke_ckpt, tmp_path, capsys):
    from plsc.cli import export_main

    run, _ = smoke_ckpt
    code, _, err = run_cli(export_main, ["-c", SMOKE, "-o", f"Global.output_dir={tmp_path}",
                                         "-o", f"Global.pretrained_model={run}", "-o", "Model.num_features=64"],
                           capsys)
    assert code == 2 and "of another shape" in err and "[32" in err and "[64" in err, err
    assert os.listdir(tmp_path) == []


def test_a_plsc_prefix_of_other_shapes_is_refused_before_the_run_dir(tmp_path, capsys):
    from plsc.cli import export_main

    prefix = os.path.join(ROOT, "tests", "fixtures", "interop", "plsc_iresnet_thin")
    code, _, err = run_cli(export_main, ["-c", SMOKE, "-o", f"Global.output_dir={tmp_path / 'o'}",
                                         "-o", f"Global.pretrained_model={prefix}"], capsys)
    assert code == 2 and f"PLSC weights {prefix} does not match the IResNet18" in err, err
    assert "layer4.0.conv1.weight [24, 16, 3, 3] in the file, [32, 16, 3, 3] in the model" in err
    assert not (tmp_path / "o").exists()


def test_an_iresnet18_file_for_an_iresnet50_names_iresnet18():
    """The issue's case (shapes only, no weights allocated): 240 tensors of IResNet50 are not in the file."""
    from plsc.errors import CheckpointError
    from plsc.models.loading import backbone_shapes, check_backbone_state

    with pytest.raises(CheckpointError) as e:
        check_backbone_state(backbone_shapes("IResNet50", num_features=512),
                             backbone_shapes("IResNet18", num_features=512), "r18/latest", "IResNet50", 512)
    msg = str(e.value)
    assert msg.startswith("r18/latest does not match the IResNet50 built from the config (nothing was loaded): 240 ")
    assert "missing from the file: layer1.2." in msg and msg.endswith("holds the weights of IResNet18: "
                                                                      "-o Model.name=IResNet18")


def test_load_backbone_is_all_or_nothing():
    """The Python API: a missing buffer (BatchNorm running mean) is refused and the model is untouched."""
    import paddle

    from plsc.errors import CheckpointError
    from plsc.models import load_backbone
    from plsc.registry import MODELS

    model = MODELS.build("MobileFaceNet_base", num_features=32)
    state = {k: np.full(v.shape, 0.5, np.float32) for k, v in model.state_dict().items()}
    mean_key = next(k for k in state if k.endswith("_mean"))
    del state[mean_key]
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=f"missing from the file: {mean_key}"):
        load_backbone(model, state, "weights.npz", "MobileFaceNet_base")
    assert all(np.array_equal(before[k], v.numpy()) for k, v in model.state_dict().items())
    state[mean_key] = np.zeros(model.state_dict()[mean_key].shape, np.float32)
    load_backbone(model, state, "weights.npz", "MobileFaceNet_base")
    assert float(paddle.max(model.state_dict()[mean_key]).item()) == 0.0


def test_fresh_fc_for_another_class_num_still_fine_tunes(smoke_ckpt, tmp_path, capsys):
    run, _ = smoke_ckpt
    code, out, err = train([*TINY, "-o", f"Global.output_dir={tmp_path}", "-o", f"Global.pretrained_model={run}",
                            "-o", "Model.class_num=20", "-o", "DataLoader.Train.dataset.num_classes=20"], capsys)
    assert code == 0, err
    assert "the FC starts fresh" in out + err and (tmp_path / "IResNet18" / "latest" / "manifest.json").exists()


# ---------------------------------------------------------------- 2. nothing overwritten
def test_train_into_a_run_with_checkpoints_is_refused_before_any_step(smoke_ckpt, tmp_path, capsys):
    run, _ = smoke_ckpt
    out = tmp_path / "o"
    assert train([*TINY, "-o", f"Global.output_dir={out}"], capsys)[0] == 0
    before = tree(out)
    code, stdout, err = train([*TINY, "-o", f"Global.output_dir={out}"], capsys)
    latest = out / "IResNet18" / "latest"
    assert code == 2 and "already holds the checkpoints of a run" in err and "latest" in err, err
    assert f"Global.checkpoint={latest}" in err and "Global.overwrite=True" in err and "Global.output_dir" in err
    assert "global_step" not in stdout and tree(out) == before
    import shutil

    shutil.copytree(latest, out / "IResNet18" / "epoch_9")  # as an earlier, longer run left it
    code, stdout, err = train([*TINY, "-o", f"Global.output_dir={out}", "-o", "Global.overwrite=True"], capsys)
    assert code == 0, err  # (resuming into its own run: test_train.py::test_resume_from_latest_gives_identical_losses)
    assert "removed the earlier run's checkpoints" in stdout + err and not (out / "IResNet18" / "epoch_9").exists()
    old_latest = {k[len("IResNet18/latest/"):]: v for k, v in before.items() if k.startswith("IResNet18/latest/")}
    assert sorted(tree(latest)) == sorted(old_latest) and tree(latest) != old_latest  # the new run's


def test_two_ranks_refuse_a_run_with_checkpoints_before_working(smoke_ckpt, tmp_path):
    import shutil

    from dist_utils import launch

    run, _ = smoke_ckpt
    shutil.copytree(run, tmp_path / "o" / "IResNet18" / "latest")
    before = tree(tmp_path / "o")
    proc = launch(["plsc-train", *TINY, "-o", f"Global.output_dir={tmp_path / 'o'}"], nproc=2,
                  log_dir=tmp_path / "log", check=False)
    assert proc.returncode != 0
    logs = [(tmp_path / "log" / f"workerlog.{r}").read_text() for r in (0, 1)]

    def refused(log):
        return "plsc-train: error: Global.output_dir:" in log and "already holds the checkpoints" in log

    # every rank checks on its own; the first to exit 2 makes the launcher stop the other (SIGTERM), which
    # may come before that rank has printed its own copy of the message
    assert any(refused(log) for log in logs), logs[0][-2000:]
    for log in logs:
        assert refused(log) or "SIGTERM" in log, log[-2000:]
        assert "global_step" not in log
    assert tree(tmp_path / "o") == before


def test_export_and_eval_do_not_replace_files_they_did_not_write(smoke_ckpt, tmp_path, capsys):
    from plsc.cli import eval_main, export_main

    run, _ = smoke_ckpt
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "inference.json").write_text("a user's file")
    args = ["-c", SMOKE, "-o", f"Global.output_dir={tmp_path / 'o'}", "-o", f"Global.pretrained_model={run}",
            "-o", f"Export.export_dir={exp}", "-o", "Export.parity_check=false", "-o", "Export.export_type=paddle"]
    code, _, err = run_cli(export_main, args, capsys)
    assert code == 2 and f"{exp / 'inference.json'} exists and was not written by plsc-export" in err, err
    assert (exp / "inference.json").read_text() == "a user's file" and not (tmp_path / "o").exists()
    (exp / "inference.json").unlink()
    assert run_cli(export_main, args, capsys)[0] == 0
    assert run_cli(export_main, args, capsys)[0] == 0  # its own export is replaced
    # plsc-eval writes eval_results.json (and its manifest) beside an exported model
    _shared_pairs_bin(tmp_path / "v.bin")
    ev = ["-c", SMOKE, "-o", f"Global.pretrained_model={exp}",
          "-o", f"DataLoader.Eval.dataset={{name: FaceBinDataset, bin_path: {tmp_path / 'v.bin'}}}"]
    for _ in range(2):  # its own results are replaced
        code, _, err = run_cli(eval_main, ev, capsys)
        assert code == 0, err
    (exp / "eval_results.json").write_text('{"mine": 1}')
    code, _, err = run_cli(eval_main, ev, capsys)
    assert code == 2 and "eval_results.json exists and was not written by plsc-eval" in err, err
    assert (exp / "eval_results.json").read_text() == '{"mine": 1}'


def test_fc_shards_force_never_removes_a_folder_it_did_not_write(smoke_ckpt, tmp_path, capsys):
    from plsc.cli.data import fc_shards_main as shards_main

    run, _ = smoke_ckpt
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    code, _, err = run_cli(shards_main, ["split", str(run), "--world-size", "2", "--out", str(user), "--force"],
                           capsys)
    assert code == 2 and "notes.txt" in err and "not replaced, also with --force" in err, err
    assert (user / "notes.txt").read_text() == "keep me" and sorted(os.listdir(user)) == ["notes.txt"]
    (tmp_path / "full.npz").write_text("a user's file")
    code, _, err = run_cli(shards_main, ["merge", str(run), "--out", str(tmp_path / "full.npz"), "--force"], capsys)
    assert code == 2 and "not a merged FC .npz" in err and (tmp_path / "full.npz").read_text() == "a user's file"
    # its own outputs are replaced with --force; a user's "<out>.tmp" folder is not touched
    (tmp_path / "w2.tmp").mkdir()
    (tmp_path / "w2.tmp" / "x").write_text("x")
    for _ in range(2):
        assert run_cli(shards_main, ["split", str(run), "--world-size", "2", "--out", str(tmp_path / "w2"),
                                     "--force"], capsys)[0] == 0
    assert (tmp_path / "w2" / "fc_rank1.npz").exists() and (tmp_path / "w2.tmp" / "x").read_text() == "x"
    for _ in range(2):  # a merged .npz of its own is replaced, written whole then renamed
        assert run_cli(shards_main, ["merge", str(run), "--out", str(tmp_path / "m.npz"), "--force"], capsys)[0] == 0
    assert sorted(os.listdir(tmp_path)) == ["full.npz", "m.npz", "mine", "w2", "w2.tmp"]


def test_import_force_replaces_only_its_own_imports(smoke_ckpt, tmp_path, capsys):
    from plsc.cli.interop import import_main

    run, _ = smoke_ckpt
    r18 = os.path.join(ROOT, "tests", "fixtures", "interop", "arcface_r18_thin.pth")
    before = tree(run)
    code, _, err = run_cli(import_main, [r18, "--out", str(run), "--force"], capsys)
    assert code == 2 and "plsc-import did not write" in err and tree(run) == before, err
    for _ in range(2):  # an earlier import is replaced
        assert run_cli(import_main, [r18, "--out", str(tmp_path / "imp"), "--force"], capsys)[0] == 0


def test_ijb_does_not_replace_results_it_did_not_write(tmp_path, capsys):
    from test_ijb import _write_pool_onnx, make_ijb

    from plsc.cli.ijb import ijb_main

    make_ijb(str(tmp_path / "ijb"), one_to_n=False)
    _write_pool_onnx(str(tmp_path / "pool.onnx"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "ijbc_roc.png").write_text("a user's plot")
    args = ["--model", str(tmp_path / "pool.onnx"), "--root", str(tmp_path / "ijb"), "--out", str(out)]
    code, stdout, err = run_cli(ijb_main, args, capsys)
    assert code == 2 and "ijbc_roc.png exists and was not written by plsc-ijb" in err and "embedded" not in stdout
    assert (out / "ijbc_roc.png").read_text() == "a user's plot"
    (out / "ijbc_roc.png").unlink()
    for _ in range(2):  # its own results are replaced
        code, _, err = run_cli(ijb_main, args, capsys)
        assert code == 0, err


def test_demo_force_does_not_remove_a_folder_that_is_not_a_demo(tmp_path, capsys):
    from plsc.cli.demo import demo_main

    (tmp_path / "notes.txt").write_text("keep me")
    code, _, err = run_cli(demo_main, ["--quick", "--out", str(tmp_path), "--force"], capsys)
    assert code == 2 and "does not hold a demo run" in err and (tmp_path / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------- 3. no false refusals, refusals up front
def _shared_pairs_bin(path, pairs=20, images=6):
    """pairs reusing image objects: pickle writes each image once and memo references after that."""
    rng = np.random.default_rng(0)
    pool = [cv2.imencode(".png", rng.integers(0, 255, (112, 112, 3), np.uint8))[1].tobytes() for _ in range(images)]
    refs = [pool[int(i)] for i in rng.integers(0, images, 2 * pairs)]
    with open(path, "wb") as f:
        pickle.dump((refs, [bool(i % 2) for i in range(pairs)]), f, protocol=pickle.HIGHEST_PROTOCOL)
    return sum(map(len, refs))


def test_a_bin_whose_pairs_reuse_images_evaluates(smoke_ckpt, tmp_path, capsys):
    from plsc.cli import eval_main

    run, _ = smoke_ckpt
    total = _shared_pairs_bin(tmp_path / "reuse.bin")
    assert total > os.path.getsize(tmp_path / "reuse.bin")  # what the old budget refused
    code, out, err = run_cli(eval_main, ["-c", SMOKE, "-o", f"Global.output_dir={tmp_path / 'o'}",
                                         "-o", f"Global.pretrained_model={run}",
                                         "-o", f"DataLoader.Eval.dataset={{name: FaceBinDataset, "
                                               f"bin_path: {tmp_path / 'reuse.bin'}}}"], capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "o" / "IResNet18" / "eval_results.json").read_text())
    assert results["reuse"]["num_pairs"] == 20


def test_train_opens_every_eval_set_and_input_before_its_first_step(tmp_path, capsys):
    _shared_pairs_bin(tmp_path / "good.bin")
    (tmp_path / "bad.bin").write_bytes(b"\x80\x02cos\nsystem\nq\x00.")
    sets = f"[{{name: FaceBinDataset, bin_path: {tmp_path / 'good.bin'}}}, " \
           f"{{name: FaceBinDataset, bin_path: {tmp_path / 'bad.bin'}}}]"
    ev = ["-o", "Global.eval_during_train=True", "-o", f"DataLoader.Eval.dataset={sets}"]
    code, out, err = train([*TINY, "-o", f"Global.output_dir={tmp_path / 'o'}", *ev], capsys)
    assert code == 2 and str(tmp_path / "bad.bin") in err and "os.system" in err, err
    assert "global_step" not in out and not (tmp_path / "o").exists()
    from plsc.data.bin import save_bin

    save_bin(str(tmp_path / "garbage.bin"), [b"not an image"] * 20, [True] * 10)
    garbage = f"{{name: FaceBinDataset, bin_path: {tmp_path / 'garbage.bin'}}}"
    code, out, err = train([*TINY, "-o", f"Global.output_dir={tmp_path / 'o'}", "-o", "Global.eval_during_train=True",
                            "-o", f"DataLoader.Eval.dataset={garbage}"], capsys)
    assert code == 2 and f"{tmp_path / 'garbage.bin'}: image 0" in err and not (tmp_path / "o").exists(), err
    for key, value, message in [("Global.pretrained_model", tmp_path / "nowhere", "checkpoint not found"),
                                ("Global.checkpoint", tmp_path / "nowhere", "checkpoint not found")]:
        code, out, err = train([*TINY, "-o", f"Global.output_dir={tmp_path / 'o'}", "-o", f"{key}={value}"], capsys)
        assert code == 2 and message in err and str(value) in err and not (tmp_path / "o").exists(), err


# ---------------------------------------------------------------- 4. bounded readers
def _image_folder(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    for i in range(2):
        cv2.imwrite(str(root / f"{i}.jpg"), np.full((112, 112, 3), 60 * i, np.uint8))
    return root


@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "socket"])
def test_a_non_regular_file_in_label_txt_is_a_data_error(tmp_path, capsys, kind):
    root = _image_folder(tmp_path)
    odd = root / "odd.jpg"
    if kind == "fifo":
        os.mkfifo(odd)
    elif kind == "directory":
        odd.mkdir()
    elif kind == "device":
        os.symlink("/dev/zero", odd)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(odd))
    (tmp_path / "label.txt").write_text("".join(f"{n}\t{i % 2}\n" for i, n in enumerate(["0.jpg", "1.jpg"] * 4 +
                                                                                        ["odd.jpg"])))
    ds = f"{{name: FaceIdentificationDataset, image_root: {root}, cls_label_path: {tmp_path / 'label.txt'}}}"
    args = [*TINY, "-o", f"Global.output_dir={tmp_path / 'o'}", "-o", f"DataLoader.Train.dataset={ds}",
            "-o", "Model.class_num=2", "-o", "DataLoader.Train.sampler.batch_size=9",
            "-o", "DataLoader.Train.sampler.shuffle=False"]
    if kind == "fifo":  # in a subprocess: a regression would block for ever, the timeout ends it
        r = subprocess.run([sys.executable, "-c", "from plsc.cli import train_main; train_main()", *args],
                           capture_output=True, text=True, cwd=ROOT, timeout=120,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
        code, err = r.returncode, r.stderr
    else:
        code, _, err = train(args, capsys)
    assert code == 2, err[-2000:]
    what = {"fifo": "is a FIFO", "directory": "is a directory", "device": "is a character device",
            "socket": "cannot read image"}[kind]
    errors = [line for line in err.splitlines() if "error" in line.lower() and "Warning" not in line]
    assert len(errors) == 1 and str(odd) in errors[0] and what in errors[0], err[-2000:]
    assert not (tmp_path / "o" / "IResNet18" / "latest").exists()


def test_rec_bin_and_label_file_that_are_not_regular_files_are_refused(tmp_path):
    from plsc.data.bin import load_bin
    from plsc.data.label_files import read_train_labels
    from plsc.data.recordio import IndexedRecordIO
    from plsc.errors import DataError

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "train.idx").write_text("0\t0\n")
    for call in (lambda: load_bin(str(fifo)), lambda: read_train_labels(str(fifo)),
                 lambda: IndexedRecordIO(str(tmp_path / "train.idx"), str(fifo)),
                 lambda: IndexedRecordIO(str(fifo), str(tmp_path / "train.idx")),
                 lambda: load_bin(str(tmp_path))):
        with pytest.raises(DataError, match="is a (FIFO|directory).*not a regular file: not read"):
            call()


def test_pack_rec_and_bin_convert_refuse_a_fifo_image(tmp_path):
    """Image folders read by the tools: a FIFO named like an image is refused (in a subprocess with a
    timeout: a regression would block)."""
    faces = tmp_path / "faces" / "id0"
    faces.mkdir(parents=True)
    cv2.imwrite(str(faces / "a.jpg"), np.full((112, 112, 3), 90, np.uint8))
    os.mkfifo(faces / "b.jpg")
    (tmp_path / "faces" / "label.txt").write_text("id0/a.jpg\tid0/b.jpg\t1\n")
    script = ("from plsc.cli.data import bin_convert_main, pack_rec_main\n"
              "def code(main, argv):\n    try:\n        return main(argv)\n    except SystemExit as e:\n"
              "        return e.code\n"
              f"print('RC', code(pack_rec_main, [{str(tmp_path / 'faces')!r}, {str(tmp_path / 'rec')!r},"
              f" '--workers', '1']), code(bin_convert_main, ['to-bin', {str(tmp_path / 'faces')!r},"
              f" {str(tmp_path / 'v.bin')!r}]))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "RC 2 2" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stderr.count(f"image {faces / 'b.jpg'} is a FIFO (named pipe), not a regular file: not read") == 2
    assert not (tmp_path / "v.bin").exists() and not (tmp_path / "rec" / "train.rec").exists()


# ---------------------------------------------------------------- 5. numbers that cannot train
@pytest.mark.parametrize("override", ["LRScheduler.learning_rate=.nan", "Loss.Train.0.MarginLoss.m2=.inf",
                                      "Loss.Train.0.MarginLoss.s=-.inf", "Optimizer.weight_decay=.nan",
                                      "Optimizer.momentum=.inf", "Optimizer.grad_clip.clip_norm=.nan"])
def test_non_finite_numbers_are_config_errors(tmp_path, capsys, override):
    code, out, err = train([*TINY, "-o", f"Global.output_dir={tmp_path}", "-o", override], capsys)
    key = override.split("=")[0]
    assert code == 2 and f"{key}: " in err and "not a finite number" in err, err
    assert os.listdir(tmp_path) == []
