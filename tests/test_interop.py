"""plsc-import through its CLI: PLSC .pdparams (+ rank shards), insightface .pth (also save_all_states) and
AdaFace .ckpt files written by the real frameworks and model code (tests/fixtures/interop, made by
tools/make_interop_fixtures.py) -> plsc-export / plsc-eval give the source's embeddings; fine-tuning trains;
hostile and bad files (built here) are refused with one message naming the file, exit 2, nothing at --out,
in bounded time and memory."""
import json
import os
import pickle
import shlex
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib

import cv2
import numpy as np
import pytest

from plsc.cli import eval_main, export_main
from plsc.cli.interop import import_main
from plsc.data.bin import save_bin
from plsc.interop.torch_file import read_torch_file
from test_fuzz import bounded  # a hang (SIGALRM) or a traced peak allocation above a bound fails the test
from test_safety import list_dag, tuple_dag

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures", "interop")
SMOKE = os.path.join(ROOT, "configs", "smoke", "IResNet_tiny_random.yaml")
META = json.load(open(os.path.join(FIX, "fixtures.json")))
FIXTURES = {k: v for k, v in META["fixtures"].items() if k != "dtypes"}
EXPECTED = np.load(os.path.join(FIX, "expected.npz"))
R18 = os.path.join(FIX, "arcface_r18_thin.pth")
MB = 1 << 20


def images():
    """The fixture images: uint8 RGB, regenerated from the seed the fixture script used."""
    return np.random.default_rng(META["seed"]).integers(0, 256, (META["images"], 112, 112, 3), dtype=np.uint8)


def to_input(img):
    return np.ascontiguousarray(((img.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2))


def rel_l2(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.abs(a - b).max() / np.abs(b).max())


def plsc_import(*args):
    """plsc-import in-process (its console-script entry) -> its exit code."""
    try:
        return import_main([str(a) for a in args])
    except SystemExit as e:
        return e.code


def printed_overrides(stdout):
    """The -o options plsc-import printed (its last line)."""
    line = [x for x in stdout.splitlines() if x.startswith("use it with")][0]
    return shlex.split(line.split(": ", 1)[1])


def model_overrides(state, out):
    opts = [f"Model.name={state['model']}", f"Model.num_features={state['num_features']}",
            f"Global.pretrained_model={out}"]
    if state["arch_kwargs"]:
        opts.append(f"Model.arch_kwargs={json.dumps(state['arch_kwargs'])}")
    opts += [f"Model.{k}={json.dumps(v)}" for k, v in state["model_options"].items()]
    return [x for o in opts for x in ("-o", o)]


def refused(capsys, args, out, *needles, max_bytes=64 * MB):
    """plsc-import must exit 2 with ONE message naming the file, nothing at --out, in bounded time and memory."""
    capsys.readouterr()
    with bounded(max_bytes, seconds=30):
        code = plsc_import(*args, "--out", out)
    assert code == 2
    err = capsys.readouterr().err  # (paddle may print its own import-time warning first)
    ours = [line for line in err.splitlines() if "plsc-import" in line]
    assert len(ours) == 1 and ours[0].startswith("plsc-import: error: ") and "Traceback" not in err, err
    err = ours[0]
    assert os.path.basename(str(args[0])) in err, err
    for n in needles:
        assert n in err, (n, err)
    assert not os.path.exists(out) and not os.path.exists(os.path.join(os.path.dirname(out), f".{out.name}.tmp"))
    return err


# ---------------------------------------------------------------- torch files built here
def _pk(value):
    """A value's pickle opcodes (protocol 2), to splice into a hand-written pickle."""
    return pickle.dumps(value, protocol=2)[2:-1]


def tensor_op(key, numel, offset, size, stride, storage="FloatStorage"):
    """The opcodes torch writes for one tensor: _rebuild_tensor_v2(persistent storage id, offset, size, stride, ...)."""
    return (b"ctorch._utils\n_rebuild_tensor_v2\n((" + _pk("storage") + f"ctorch\n{storage}\n".encode() + _pk(key) +
            _pk("cpu") + _pk(numel) + b"tQ" + _pk(offset) + _pk(tuple(size)) + _pk(tuple(stride)) +
            b"\x89ccollections\nOrderedDict\n)RtR")


def dict_pickle(items):
    """{key: value opcodes} as a protocol-2 dict pickle."""
    return b"\x80\x02}(" + b"".join(_pk(k) + v for k, v in items.items()) + b"u."


def torch_zip(path, payload, root="archive", storages=None, byteorder=b"little", compress=None):
    """A torch-format zip (what torch.save writes) around a data.pkl of our choosing."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{root}/data.pkl", payload, compress_type=compress)
        z.writestr(f"{root}/byteorder", byteorder)
        z.writestr(f"{root}/version", "3\n")
        for key, data in (storages or {}).items():
            z.writestr(f"{root}/data/{key}", data)


def write_torch(path, arrays):
    """{name: float32 / int64 array} as torch.save would write the state dict (one storage per tensor)."""
    items, storages = {}, {}
    for i, (name, a) in enumerate(arrays.items()):
        a = np.array(a, order="C")  # (ascontiguousarray would make a 0-d tensor 1-d)
        kind = "LongStorage" if a.dtype == np.int64 else "FloatStorage"
        a = a.astype("<i8" if kind == "LongStorage" else "<f4")
        strides = tuple(s // a.itemsize for s in a.strides)
        items[name] = tensor_op(str(i), a.size, 0, a.shape, strides, kind)
        storages[str(i)] = a.tobytes()
    torch_zip(path, dict_pickle(items), storages=storages)


def r18_arrays():
    return {k: np.asarray(v) for k, v in read_torch_file(R18).items()}


# ---------------------------------------------------------------- the real files
@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Every fixture imported once: {name: (out dir, state.json)}."""
    base = tmp_path_factory.mktemp("imported")
    out = {}
    for name, m in FIXTURES.items():
        d = base / name
        assert plsc_import(os.path.join(FIX, m["file"]), "--out", d) == 0, name
        out[name] = (d, json.load(open(d / "state.json")))
    return out


def test_fixtures_are_small():
    assert sum(os.path.getsize(os.path.join(FIX, f)) for f in os.listdir(FIX)) < 2 * MB


def test_cli_subprocess_prints_detection_and_the_overrides(tmp_path):
    out = tmp_path / "r18"
    r = subprocess.run([sys.executable, "-m", "plsc.cli", "import", R18, "--out", str(out)], capture_output=True,
                       text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "detected: IResNet18 with arch_kwargs {'layers': [2, 1, 1, 1], 'widths': [8, 16, 16, 24]}" in r.stdout
    assert "not imported: BatchNorm num_batches_tracked" in r.stdout  # reported, not dropped silently
    printed = printed_overrides(r.stdout)
    assert printed[:4] == ["-o", "Model.name=IResNet18", "-o", "Model.num_features=8"]
    assert f"Global.pretrained_model={out}" in printed and not any("mask_ratio" in o for o in printed)
    assert sorted(os.listdir(out)) == ["backbone.npz", "manifest.json", "state.json"]


def test_state_manifest_and_names_match_the_plsc_model(imported):
    from plsc.io import checkpoint as ckpt
    from plsc.registry import MODELS

    assert {m["model"] for m in FIXTURES.values()} >= {"MobileFaceNet_large", "IR_SE_50", "FaceViT_tiny_patch9_112"}
    for name, (d, state) in imported.items():
        m = FIXTURES[name]
        assert (state["model"], state["arch_kwargs"], state["num_features"], state["model_options"]) == \
               (m["model"], m["arch_kwargs"], m["num_features"], m.get("model_options", {})), name
        assert state["imported_from"]["format"] == m["format"] and len(state["imported_from"]["sha256"]) == 64
        ckpt.verify(str(d))
        arrays = ckpt.load_arrays(str(d / "backbone.npz"))
        ref = MODELS.build(m["model"], num_features=m["num_features"], arch_kwargs=m["arch_kwargs"],
                           **state["model_options"])  # what the printed overrides build
        assert set(arrays) == set(ref.state_dict()), name
        assert all(v.dtype == np.float32 for v in arrays.values())
        if m["format"] == "plsc-pdparams":
            assert state["class_num"] == m["class_num"] and state["world_size"] == 1
        else:
            assert state["class_num"] is None and state["world_size"] == 0
            assert not any(f.startswith("fc_rank") for f in os.listdir(d))


def test_exported_models_give_the_source_embeddings(imported, tmp_path, capsys):
    """plsc-export of each import with the overrides plsc-import prints, then the exported Paddle inference model
    on the source's images: equal to the embeddings the source framework computed (AdaFace: fed BGR; plsc: RGB)
    within 1e-4, and the checkpoint loads without a missing or unexpected key."""
    from plsc.inference import load_embedder

    x = to_input(images())
    for name, (d, state) in imported.items():
        exp = tmp_path / f"export_{name}"
        capsys.readouterr()
        export_main(["-c", SMOKE, *model_overrides(state, d), "-o", f"Global.output_dir={tmp_path / 'runs'}",
                     "-o", "Export.export_type=paddle", "-o", f"Export.export_dir={exp}"])
        log = capsys.readouterr()
        assert f"loaded backbone weights from {d}" in log.out and "keys" not in log.out + log.err, name
        err = rel_l2(load_embedder(str(exp))(x), EXPECTED[name])
        assert err < 1e-4, (name, err)


def test_vit_mask_ratio_is_printed_and_the_checkpoint_matches_it(tmp_path, capsys):
    """The weights do not store mask_ratio; insightface / PLSC always save a mask_token, plsc's FaceViT has one
    only at mask_ratio > 0: the import records the ratio, prints -o Model.mask_ratio and keeps the token exactly
    when it is > 0, so export / eval / fine-tuning with the printed overrides load every key (vit_h: 0)."""
    from plsc.io import checkpoint as ckpt
    from plsc.inference import load_embedder

    vit = os.path.join(FIX, "arcface_vit_small.pth")
    cases = [([vit, "--model", "FaceViT_huge_patch9_112"], 0.0, "the default of FaceViT_huge_patch9_112"),
             ([vit, "--mask-ratio", "0"], 0.0, "--mask-ratio"),
             ([vit], 0.1, "the default of FaceViT_tiny_patch9_112"),
             ([os.path.join(FIX, "plsc_vit_small.pdparams"), "--mask-ratio", "0.05"], 0.05, "--mask-ratio")]
    printed = []
    for i, (args, ratio, how) in enumerate(cases):
        out = tmp_path / f"vit{i}"
        assert plsc_import(*args, "--out", out) == 0
        stdout = capsys.readouterr().out
        printed.append(printed_overrides(stdout))
        assert f"-o Model.mask_ratio={ratio}" in " ".join(printed[-1])
        assert f"mask_ratio {ratio} ({how}): not stored in the weights" in stdout
        state = json.load(open(out / "state.json"))
        assert state["model_options"] == {"mask_ratio": ratio}
        assert ("mask_token" in ckpt.load_arrays(str(out / "backbone.npz"))) == (ratio > 0)
        assert ("not imported: mask_token [1, 1, 16]" in stdout) == (ratio == 0)
    assert json.load(open(tmp_path / "vit0" / "state.json"))["model"] == "FaceViT_huge_patch9_112"
    for i in (0, 2):  # the vit_h import (no mask token) and the default one (mask token): every key loads
        export_main(["-c", SMOKE, *printed[i], "-o", f"Global.output_dir={tmp_path / 'runs'}", "-o",
                     "Export.export_type=paddle", "-o", f"Export.export_dir={tmp_path / f'exp{i}'}"])
        log = capsys.readouterr()
        assert "loaded backbone weights" in log.out and "keys" not in log.out + log.err
        got = load_embedder(str(tmp_path / f"exp{i}"))(to_input(images()))
        assert rel_l2(got, EXPECTED["arcface_vit_small"]) < 1e-4
    refused(capsys, [R18, "--mask-ratio", "0.1"], tmp_path / "o1", "--mask-ratio: only FaceViT imports take it")
    refused(capsys, [vit, "--mask-ratio", "1.5"], tmp_path / "o2", "--mask-ratio 1.5 must be in [0, 1)")


def test_plsc_eval_on_a_bin_equals_verification_of_the_source_embeddings(imported, tmp_path):
    """Every pair of the fixture images (and each with itself), labels from the source's own distances with some
    flipped: accuracy, threshold, TAR@FAR and the fold accuracies of plsc-eval equal those computed from the
    source's embeddings, and they are not trivial (another model's embeddings give other numbers)."""
    from plsc.metrics.verification import pair_distances, verify

    name = "arcface_mbf_thin"
    d, state = imported[name]
    imgs, src = images(), EXPECTED[name]
    pairs = [(i, j) for i in range(len(imgs)) for j in range(i, len(imgs))]  # 36 pairs
    order = [i for p in pairs for i in p]
    dist = pair_distances(src[order])
    issame = list((dist < np.median(dist)) ^ (np.random.default_rng(0).random(len(pairs)) < 0.2))
    encoded = [cv2.imencode(".png", imgs[i][:, :, ::-1])[1].tobytes() for i in order]  # cv2 writes BGR
    save_bin(str(tmp_path / "pairs.bin"), encoded, issame)
    eval_main(["-c", SMOKE, *model_overrides(state, d), "-o", f"Global.output_dir={tmp_path / 'runs'}",
               "-o", f"DataLoader.Eval.dataset={{name: FaceBinDataset, bin_path: {tmp_path / 'pairs.bin'}}}",
               "-o", "DataLoader.Eval.sampler={name: BatchSampler, batch_size: 5}",
               "-o", "Metric.Eval=[{LFWAcc: {flip_test: false}}]"])
    got = json.load(open(tmp_path / "runs" / state["model"] / "eval_results.json"))["pairs"]
    want = verify(src[order], issame)
    assert 0.6 < want["acc"] < 1.0 and len(set(np.round(dist, 3))) > 20
    for key in ("acc", "std", "threshold", "val", "far", "fold_acc", "num_pairs"):
        assert got[key] == want[key], (key, got[key], want[key])
    assert abs(got["xnorm"] - want["xnorm"]) < 1e-4 * want["xnorm"]
    other = verify(EXPECTED["arcface_r18_thin"][order], issame)
    assert (other["acc"], other["threshold"], other["fold_acc"]) != (want["acc"], want["threshold"], want["fold_acc"])


def test_plsc_eval_refuses_a_hostile_bin_in_bounded_time(imported, tmp_path, capsys):
    """A few hundred bytes whose numpy shape is a list shared through the memo (2**40 items when printed), or
    whose dict key is a tuple DAG (2**60 tuples when hashed): plsc-eval ends with one message naming the file."""
    d, state = imported["arcface_mbf_thin"]
    hostile = {"shape.bin": b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + list_dag(40) +
               b"U\x01b\x87R.",
               "key.bin": b"\x80\x02}" + tuple_dag(60) + b"K\x01s."}
    for fname, data in hostile.items():
        (tmp_path / fname).write_bytes(data)
        capsys.readouterr()
        with bounded(256 * MB, seconds=30), pytest.raises(SystemExit) as e:
            eval_main(["-c", SMOKE, *model_overrides(state, d), "-o", f"Global.output_dir={tmp_path / 'runs'}",
                       "-o", f"DataLoader.Eval.dataset={{name: FaceBinDataset, bin_path: {tmp_path / fname}}}",
                       "-o", "Metric.Eval=[{LFWAcc: {flip_test: false}}]"])
        assert e.value.code == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "plsc-eval" in line]
        assert len(err) == 1 and err[0].startswith("plsc-eval: error: ") and fname in err[0], err
        assert len(err[0]) < 600


def test_plsc_fc_shards_are_joined_and_resplit_for_any_world_size(tmp_path, capsys):
    from plsc.distributed import shard_range
    from plsc.interop import load_source

    full = EXPECTED["plsc_iresnet_thin.fc"]
    prefix = os.path.join(FIX, "plsc_iresnet_thin")  # the prefix, as PLSC's Global.pretrained_model names it
    assert plsc_import(prefix, "--out", tmp_path / "w3", "--world-size", 3) == 0
    out = capsys.readouterr().out
    assert "each shard's rank confirmed by its parameter name" in out and "a missing last shard cannot be" in out
    state = json.load(open(tmp_path / "w3" / "state.json"))
    assert state["class_num"] == 10 and state["world_size"] == 3
    for r in range(3):
        s = np.load(tmp_path / "w3" / f"fc_rank{r}.npz")
        start, end = shard_range(10, r, 3)
        assert s["class_range"].tolist() == [start, end, 10] and s["class_range"].dtype == np.int64
        np.testing.assert_array_equal(s["weight"], full[start:end])
        assert not s["replicated"] and s["optimizer_steps"] == 0
    src = load_source(prefix + ".pdparams")
    assert src.class_num == 10 and len(src.files) == 3
    np.testing.assert_array_equal(src.fc, full)
    refused(capsys, [prefix, "--world-size", 11], tmp_path / "w11", "--world-size must be in [1, 10]")


def _shards(tmp_path, name, main, ranks):
    """A copy of the PLSC fixture: the main file and the given {rank in the copy: shard file of the fixture}."""
    d = tmp_path / name
    d.mkdir()
    shutil.copy(os.path.join(FIX, "plsc_iresnet_thin.pdparams"), d / "m.pdparams") if main else None
    for r, src in ranks.items():
        shutil.copy(os.path.join(FIX, f"plsc_iresnet_thin_rank{src}.pdparams"), d / f"m_rank{r}.pdparams")
    return d / "m"


def test_plsc_missing_renamed_or_foreign_shards_are_errors(tmp_path, capsys):
    import paddle

    # a missing middle shard: ranks 0 and 2 present
    refused(capsys, [_shards(tmp_path, "gap", True, {0: 0, 2: 1})], tmp_path / "o1",
            "the shards of rank(s) [1] are missing (found ranks [0, 2])")
    # shard files renamed: each file's parameter name says which rank wrote it
    refused(capsys, [_shards(tmp_path, "swap", True, {0: 1, 1: 0})], tmp_path / "o2",
            "m_rank0.pdparams: holds the classifier shard of rank 1", "not of rank 0")
    # a shard of another split: rows [5, 3] are not how 2 ranks split any class count
    d = _shards(tmp_path, "foreign", True, {0: 0})
    paddle.save({"head.weight": paddle.zeros([3, 8]), "StructuredToParameterName@@":
                 {"head.weight": "partialfc@dist@rank@00001.w"}}, str(d) + "_rank1.pdparams")
    refused(capsys, [d], tmp_path / "o3", "row counts [5, 3] are not how 2 ranks split a classifier")
    # the last shard missing cannot be detected from the files: the import says what it could not verify
    assert plsc_import(_shards(tmp_path, "tail", True, {0: 0}), "--out", tmp_path / "o4") == 0
    out = capsys.readouterr().out
    assert "1 rank shard(s) [5] rows joined into [5, 8]" in out
    assert "do not record the world size: a missing last shard cannot be detected" in out


def test_fine_tuning_from_an_imported_backbone_with_new_classes_trains(imported, tmp_path):
    d, state = imported["adaface_ir18_thin"]
    log = _train(tmp_path, state, d, classes=7)
    assert "no classifier" in log and "the FC starts fresh" in log
    assert (tmp_path / "IR_18" / "latest" / "fc_rank0.npz").exists()


def test_fine_tuning_from_an_imported_plsc_classifier_loads_its_fc(imported, tmp_path):
    d, state = imported["plsc_iresnet_thin"]
    assert state["class_num"] == 10
    log = _train(tmp_path, state, d, classes=10)
    assert "loaded the FC weights too (same class_num)" in log


def _train(tmp_path, state, d, classes):
    cmd = [sys.executable, "-c", "from plsc.cli import train_main; train_main()", "-c", SMOKE,
           *model_overrides(state, d), "-o", f"Global.output_dir={tmp_path}", "-o", "Global.max_train_step=2",
           "-o", f"Model.class_num={classes}", "-o", f"DataLoader.Train.dataset={{name: FaceRandomDataset, "
           f"num_classes: {classes}, num_samples: 16}}", "-o", "DataLoader.Train.sampler.batch_size=4"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert f"loaded backbone weights from {d}" in log and "missing keys" not in log
    assert "global_step 2" in log and "nan" not in log.lower().split("global_step 1", 1)[-1][:200]
    return log


def test_r2060_and_every_registered_size_are_detected_by_name():
    """The architecture is read from the tensor names and shapes alone (no model is built here)."""
    from plsc.interop import insightface
    from plsc.models import iresnet

    for name, layers in iresnet.LAYERS.items():
        shapes = {"features.running_mean": (512,)}
        for i, (n, w) in enumerate(zip(layers, iresnet.WIDTHS)):
            for j in range(n):
                shapes[f"layer{i + 1}.{j}.conv1.weight"] = (w, w if j else (64 if i == 0 else w // 2), 3, 3)
        info = insightface.IRESNET.detect(shapes)
        assert insightface.IRESNET.choose(info, None) == (name, {}), name


def test_save_all_states_report_lists_what_is_not_imported(tmp_path, capsys):
    assert plsc_import(os.path.join(FIX, "arcface_save_all_states.pt"), "--out", tmp_path / "o") == 0
    out = capsys.readouterr().out
    assert "arcface_torch save_all_states checkpoint: backbone only" in out
    assert "state_dict_softmax_fc (one rank's partial-FC shard [10, 8]: not imported" in out
    for what in ("state_optimizer (not imported)", "state_lr_scheduler (not imported)", "epoch (not imported)"):
        assert what in out, what


# ---------------------------------------------------------------- hostile and bad files
class RunsCommand:
    def __init__(self, marker):
        self.cmd = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self):
        return os.system, (self.cmd,)


def test_malicious_pickle_in_each_format_is_refused_unrun(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = RunsCommand(marker)
    torch_zip(tmp_path / "evil.pt", pickle.dumps({"conv1.weight": evil}, protocol=2))
    torch_zip(tmp_path / "evil.ckpt", pickle.dumps({"state_dict": {"model.input_layer.0.weight": 1},
                                                    "hyper_parameters": evil}, protocol=2))
    (tmp_path / "evil.pdparams").write_bytes(pickle.dumps({"conv1.weight": np.zeros((2, 3), np.float32),
                                                           "fc.weight": evil}, protocol=2))
    (tmp_path / "evil5.pdparams").write_bytes(pickle.dumps(evil, protocol=5))
    for name in ("evil.pt", "evil.ckpt", "evil.pdparams", "evil5.pdparams"):
        refused(capsys, [tmp_path / name], tmp_path / f"out_{name}", "refused to load global 'posix.system'", name)
        assert not marker.exists(), name


def test_allowed_names_cannot_be_turned_into_calls_or_rewritten(tmp_path, capsys):
    # torch's storage class and OrderedDict are allowed as names, never as callables with arbitrary arguments
    torch_zip(tmp_path / "a.pt", b"\x80\x02ctorch\nFloatStorage\nJ\x00\x00\x00\x40\x85R.")
    refused(capsys, [tmp_path / "a.pt"], tmp_path / "o1", "calling torch.FloatStorage")
    torch_zip(tmp_path / "b.pt", b"\x80\x02ccollections\nOrderedDict\nJ\x01\x00\x00\x00\x85R.")
    refused(capsys, [tmp_path / "b.pt"], tmp_path / "o2", "container built")
    # a persistent id that names a storage the zip does not hold
    torch_zip(tmp_path / "c.pt", dict_pickle({"w": tensor_op("0", 4, 0, (4,), (1,))}))
    refused(capsys, [tmp_path / "c.pt"], tmp_path / "o3", "storage entry archive/data/0 is missing")
    # BUILD (pickled attribute state) on a stand-in: e.g. FloatStorage's dtype set to '<U1' would decode the
    # storage's bytes as text; on a finished tensor, numpy's own __setstate__ would rebuild it unchecked
    builds = {"storage": b"ctorch\nFloatStorage\n}" + _pk("dtype") + _pk("<U1") + b"sb",
              "dtype name": b"ctorch\nfloat32\n}" + _pk("x") + _pk(1) + b"sb",
              "rebuild function": b"ctorch._utils\n_rebuild_tensor_v2\n}" + _pk("x") + _pk(1) + b"sb",
              "tensor": tensor_op("0", 2, 0, (2,), (1,)) + b"(K\x01K\x02\x85" + _pk("x") + b"\x89C\x08" +
              b"\0" * 8 + b"tb"}
    for i, (what, ops) in enumerate(builds.items()):
        torch_zip(tmp_path / f"build{i}.pt", dict_pickle({"w": ops}), storages={"0": bytes(8)})
        refused(capsys, [tmp_path / f"build{i}.pt"], tmp_path / f"ob{i}", "pickled state (BUILD) applied to")
    # numpy: a dtype whose state is not numpy's own for it (e.g. flags claiming object items), the ndarray marker
    dt = b"cnumpy\ndtype\n" + _pk("f4") + b"\x89\x88\x87R(K\x03" + _pk("<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff" \
         b"K?tb"
    (tmp_path / "dt.pdparams").write_bytes(b"\x80\x02}" + _pk("w") + dt + b"s.")
    refused(capsys, [tmp_path / "dt.pdparams"], tmp_path / "o4", "numpy dtype state", "is not that of a plain <f4")
    (tmp_path / "nd.pdparams").write_bytes(b"\x80\x02cnumpy\nndarray\n}" + _pk("x") + _pk(1) + b"sb.")
    refused(capsys, [tmp_path / "nd.pdparams"], tmp_path / "o5", "pickled state (BUILD) applied to numpy.ndarray")


def test_containers_real_checkpoints_pickle_are_read_as_plain_dicts(tmp_path):
    """Lightning's AttributeDict (a dict subclass: NEWOBJ + SETITEMS) and argparse.Namespace (NEWOBJ + BUILD) in
    hyper_parameters, OrderedDict with its _metadata (BUILD): plain dicts, the named modules never imported."""
    w = tensor_op("0", 2, 0, (2,), (1,))
    hp = (b"cpytorch_lightning.utilities.parsing\nAttributeDict\n)\x81(" + _pk("arch") + _pk("ir_18") + b"u")
    ns = b"cargparse\nNamespace\n)\x81}" + _pk("lr") + _pk(0.1) + b"sb"
    od = b"ccollections\nOrderedDict\n)R(" + _pk("w") + w + b"u}" + _pk("_metadata") + b"}sb"
    torch_zip(tmp_path / "x.ckpt", dict_pickle({"hyper_parameters": hp, "args": ns, "sd": od}),
              storages={"0": bytes(8)})
    before = set(sys.modules)
    obj = read_torch_file(str(tmp_path / "x.ckpt"))
    assert obj["hyper_parameters"] == {"arch": "ir_18"} and obj["args"] == {"lr": 0.1}
    assert list(obj["sd"]) == ["w"] and obj["sd"].pickled_state == {"_metadata": {}}
    assert not {m.split(".")[0] for m in set(sys.modules) - before} & {"pytorch_lightning", "torch"}


def test_bad_inputs_one_message_exit_2_nothing_written(tmp_path, capsys):
    import paddle

    (tmp_path / "notes.txt").write_text("hello, not a checkpoint\n")
    refused(capsys, [tmp_path / "notes.txt"], tmp_path / "o1", "notes.txt: not a checkpoint")
    assert plsc_import(tmp_path / "missing.pt", "--out", tmp_path / "o2") == 2
    assert "not found" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    # a torch file that is not a state dict; one whose values are not all tensors
    torch_zip(tmp_path / "list.pt", pickle.dumps([1, 2], protocol=2))
    refused(capsys, [tmp_path / "list.pt"], tmp_path / "o3", "a torch file, but not a state dict plsc knows: a list")
    torch_zip(tmp_path / "ragged.pt", pickle.dumps({"conv1.weight": [1, [2, 3]]}, protocol=2))
    refused(capsys, [tmp_path / "ragged.pt"], tmp_path / "o4", "entry 'conv1.weight' is a list ([1, [2, 3]]), not "
            "a tensor")
    # shape mismatch (.pdparams): the tensor and both shapes
    sd = paddle.load(os.path.join(FIX, "plsc_iresnet_thin.pdparams"))
    sd["layer2.0.conv1.weight"] = paddle.zeros([16, 8, 5, 5])
    paddle.save(sd, str(tmp_path / "bad_shape.pdparams"))
    refused(capsys, [tmp_path / "bad_shape.pdparams"], tmp_path / "o5", "'layer2.0.conv1.weight'",
            "[16, 8, 5, 5] in the file", "needs [16, 8, 3, 3]")
    # truncated zip, truncated pickle, the legacy torch format, a shard instead of the prefix, a wrong --model
    data = open(os.path.join(FIX, "arcface_vit_small.pth"), "rb").read()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    refused(capsys, [tmp_path / "cut.pth"], tmp_path / "o6", "cut.pth: truncated or corrupt zip file")
    data = open(os.path.join(FIX, "plsc_vit_small.pdparams"), "rb").read()
    (tmp_path / "cut.pdparams").write_bytes(data[: len(data) // 2])
    refused(capsys, [tmp_path / "cut.pdparams"], tmp_path / "o7", "cut.pdparams: not a valid", "pickle")
    (tmp_path / "old.pt").write_bytes(b"\x80\x02\x8a\x0a" + (0x1950a86a20f9469cfc6c).to_bytes(10, "little") + b".")
    refused(capsys, [tmp_path / "old.pt"], tmp_path / "o8", "legacy (torch < 1.6, non-zip)")
    refused(capsys, [os.path.join(FIX, "plsc_iresnet_thin_rank1.pdparams")], tmp_path / "o9", "one rank's")
    refused(capsys, [os.path.join(FIX, "arcface_mbf_thin.pth"), "--model", "IResNet50"], tmp_path / "o10",
            "--model IResNet50 does not fit", "MobileFaceNet")
    assert plsc_import(os.path.join(FIX, "arcface_mbf_thin.pth"), "--model", "IResNet17", "--out", tmp_path / "o11")\
        == 2
    assert "not a registered plsc model" in capsys.readouterr().err and not (tmp_path / "o11").exists()


def test_a_truncated_data_pkl_inside_a_valid_zip(tmp_path, capsys):
    with zipfile.ZipFile(R18) as zin, zipfile.ZipFile(tmp_path / "cut.pth", "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info.filename, data[: len(data) // 2] if info.filename.endswith("data.pkl") else data)
    refused(capsys, [tmp_path / "cut.pth"], tmp_path / "o", "cut.pth: not a valid torch checkpoint pickle")


def test_architecture_and_shape_messages_name_the_tensors(tmp_path, capsys):
    arrays = r18_arrays()

    def case(name, **changes):
        a = dict(arrays)
        for k, v in changes.items():
            if v is None:
                del a[k]
            else:
                a[k] = v
        write_torch(tmp_path / f"{name}.pth", a)
        return [tmp_path / f"{name}.pth"]

    refused(capsys, case("renamed", **{"layer1.0.prelu.weight": None, "layer1.0.prelX.weight":
                                       arrays["layer1.0.prelu.weight"]}), tmp_path / "o1",
            "unknown architecture", "nearest registered plsc model is IResNet18", "layer1.0.prelX.weight",
            "layer1.0.prelu._weight")
    refused(capsys, case("missing", **{"layer1.0.prelu.weight": None}), tmp_path / "o2",
            "unknown architecture", "IResNet18 tensors the file does not provide: layer1.0.prelu._weight")
    # a torch Linear is [out, in] in the file: the message gives the file's orientation
    refused(capsys, case("fc", **{"fc.weight": np.zeros((8, 1175), np.float32)}), tmp_path / "o3",
            "tensor 'fc.weight' has shape [8, 1175] in the file", "needs [8, 1176]")
    # the embedding size read from features.* disagrees with fc: both named
    one = np.ones(1, np.float32)
    refused(capsys, case("nf", **{f"features.{k}": one for k in ("weight", "bias", "running_mean", "running_var")}),
            tmp_path / "o4", "disagree on the embedding size", "'features.running_mean' [1] gives num_features 1",
            "'fc.weight' has shape [8, 1176]")
    zero = np.zeros(0, np.float32)
    refused(capsys, case("nf0", **{f"features.{k}": zero for k in ("weight", "bias", "running_mean", "running_var")}),
            tmp_path / "o5", "nf0.pth: the architecture its tensors describe", "num_features 0",
            "Model.num_features: 0 for IResNet18 must be a positive integer")
    # a zero-size tensor (no bytes in the file) claiming a width of 10**8
    refused(capsys, case("wide", **{"layer4.0.conv1.weight": np.zeros((10 ** 8, 0, 3, 3), np.float32)}),
            tmp_path / "o9", "'widths': [8, 16, 16, 100000000]", "is not one plsc can build")
    # sizes that cannot be read: the nearest model still comes from the block counts (an r18 file -> IResNet18)
    refused(capsys, case("scalar", **{"layer1.0.conv1.weight": np.ones((), np.float32)}), tmp_path / "o6",
            "'layer1.0.conv1.weight' has shape [], expected 4 dimensions", "nearest registered plsc model is IResNet18")
    # two source tensors for one plsc tensor: an error, never one silently overwriting the other
    refused(capsys, case("twice", **{"bn1._mean": arrays["bn1.running_mean"]}), tmp_path / "o7",
            "tensors 'bn1.running_mean' and 'bn1._mean' both map to plsc's 'bn1._mean'")
    refused(capsys, case("int", **{"conv1.weight": arrays["conv1.weight"].astype(np.int64)}), tmp_path / "o8",
            "tensor 'conv1.weight' has dtype int64, expected a float tensor")


def test_an_existing_out_is_replaced_only_when_it_is_a_checkpoint_or_empty(tmp_path, capsys):
    mbf = os.path.join(FIX, "arcface_mbf_thin.pth")
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "x").write_text("precious")
    for extra in ([], ["--force"]):  # `--out ~ --force` must not remove a home directory
        assert plsc_import(mbf, "--out", keep, *extra) == 2
        assert "not replaced" in capsys.readouterr().err if extra else True
        assert (keep / "x").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    assert plsc_import(mbf, "--out", tmp_path / "file", "--force") == 2 and (tmp_path / "file").read_text() == "x"
    (tmp_path / "empty").mkdir()
    assert plsc_import(mbf, "--out", tmp_path / "empty", "--force") == 0
    assert plsc_import(R18, "--out", tmp_path / "empty", "--force") == 0  # a plsc checkpoint: replaced
    assert json.load(open(tmp_path / "empty" / "state.json"))["model"] == "IResNet18"
    assert plsc_import(R18, "--out", tmp_path / "empty") == 2 and "pass --force" in capsys.readouterr().err


def _header(data, name, central):
    """Offset of the local (or central directory) header of entry `name` in a zip's bytes."""
    sig, name_at = (b"PK\x01\x02", 46) if central else (b"PK\x03\x04", 30)
    pos = -1
    while True:
        pos = data.index(sig, pos + 1)
        if data[pos + name_at: pos + name_at + len(name)] == name:
            return pos


def overlap_zip(path, n, kernel=1 << 20):
    """A 'quoted overlap' zip bomb with stored entries: entry i's data holds the local headers and data of entries
    i+1.. and one shared kernel, so n storages of ~1 MiB each come from ~1 MiB of file."""
    def local(name, size, crc):
        return struct.pack("<IHHHHHIIIHH", 0x04034b50, 20, 0, 0, 0, 0, crc, size, size, len(name), 0) + name

    def central(name, size, crc, offset):
        return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014b50, 20, 20, 0, 0, 0, 0, crc, size, size, len(name), 0, 0,
                           0, 0, 0, offset) + name

    names = [f"archive/data/{i:05d}".encode() for i in range(n)]  # 48-byte local headers: sizes stay x 4
    tail = b"\0" * kernel
    tail_crc, sizes, crcs, headers = zlib.crc32(tail), [0] * n, [0] * n, [b""] * n
    for i in reversed(range(n)):  # entry i's data: the local headers of entries i+1.. and the kernel
        sizes[i], crcs[i] = len(tail), tail_crc
        headers[i] = local(names[i], len(tail), tail_crc)
        tail_crc, tail = zlib.crc32(tail, zlib.crc32(headers[i])), headers[i] + tail
    pkl = dict_pickle({f"t{i}": tensor_op(f"{i:05d}", sizes[i] // 4, 0, (0,), (1,)) for i in range(n)})
    out, cd = bytearray(), bytearray()
    for name, data in ((b"archive/data.pkl", pkl), (b"archive/byteorder", b"little")):
        cd += central(name, len(data), zlib.crc32(data), len(out))
        out += local(name, len(data), zlib.crc32(data)) + data
    offset = len(out)
    for i in range(n):
        cd += central(names[i], sizes[i], crcs[i], offset)
        offset += len(headers[i])
    out += tail
    eocd = struct.pack("<IHHHHIIH", 0x06054b50, 0, 0, n + 2, n + 2, len(cd), len(out), 0)
    path.write_bytes(bytes(out + cd + eocd))


def test_zip_bombs_and_odd_entries_are_refused_before_anything_large_is_read(tmp_path, capsys):
    # many stored storages overlapping one 1 MiB block: refused before any of them is read
    overlap_zip(tmp_path / "overlap.pt", 40)
    assert os.path.getsize(tmp_path / "overlap.pt") < 2 * MB
    refused(capsys, [tmp_path / "overlap.pt"], tmp_path / "o1", "overlap", max_bytes=8 * MB)
    # a DEFLATE bomb as the byteorder entry; a padded byteorder (strip() would have accepted it)
    with zipfile.ZipFile(tmp_path / "deflate.pt", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"a": 1}, protocol=2))
        z.writestr("archive/byteorder", b"little" + b" " * (64 * MB), compress_type=zipfile.ZIP_DEFLATED)
    assert os.path.getsize(tmp_path / "deflate.pt") < MB
    refused(capsys, [tmp_path / "deflate.pt"], tmp_path / "o2", "archive/byteorder is compressed", max_bytes=8 * MB)
    torch_zip(tmp_path / "pad.pt", pickle.dumps({"a": 1}, protocol=2), byteorder=b"little  \n")
    refused(capsys, [tmp_path / "pad.pt"], tmp_path / "o3", "byteorder 'little  \\n'", "exactly 'little'")
    torch_zip(tmp_path / "big.pt", pickle.dumps({"a": 1}, protocol=2), byteorder=b"big")
    refused(capsys, [tmp_path / "big.pt"], tmp_path / "o4", "byteorder 'big'")
    torch_zip(tmp_path / "deflated_pkl.pt", pickle.dumps({"a": 1}, protocol=2), compress=zipfile.ZIP_DEFLATED)
    refused(capsys, [tmp_path / "deflated_pkl.pt"], tmp_path / "o5", "archive/data.pkl is compressed")
    # a bad CRC, an entry flagged as encrypted, an unknown compression method: zipfile's exceptions become messages
    torch_zip(tmp_path / "x.pt", pickle.dumps({"a": 1}, protocol=2))
    base = (tmp_path / "x.pt").read_bytes()
    crc = bytearray(base)
    crc[base.index(b"little")] = ord("L")
    enc, meth = bytearray(base), bytearray(base)
    for central in (False, True):
        enc[_header(base, b"archive/data.pkl", central) + (8 if central else 6)] |= 1
        struct.pack_into("<H", meth, _header(base, b"archive/byteorder", central) + (10 if central else 8), 99)
    for name, data, needle in (("crc.pt", crc, "byteorder is truncated or corrupt (BadZipFile: Bad CRC-32"),
                               ("enc.pt", enc, "archive/data.pkl is encrypted"),
                               ("meth.pt", meth, "archive/byteorder is compressed (method 99)")):
        (tmp_path / name).write_bytes(bytes(data))
        refused(capsys, [tmp_path / name], tmp_path / f"o_{name}", needle)
    with pytest.warns(UserWarning), zipfile.ZipFile(tmp_path / "dup.pt", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"a": 1}, protocol=2))
        z.writestr("archive/data.pkl", pickle.dumps({"b": 1}, protocol=2))
    refused(capsys, [tmp_path / "dup.pt"], tmp_path / "o6", "two entries named archive/data.pkl")


def test_shared_and_non_tensor_values_are_refused_in_bounded_time_and_memory(tmp_path, capsys):
    """Values that are not tensors never reach numpy, and no message prints a value whole: a 300-byte list DAG
    (2**26 .. 2**40 leaves), a tuple DAG as a dict key (hashing walks 2**60 tuples), colliding int keys."""
    cases = {
        "leaf.pt": ({"conv1.weight": list_dag(26)}, "entry 'conv1.weight' is a list"),
        "pid.pt": (None, "persistent id ('x', [[[...], [...]], [[...], [...]]]) is not a torch storage"),
        "key.pt": (None, "a dict key / set item that is not a string"),
        "ints.pt": (None, "a dict key / set item that is not a string"),
        "shape.pdparams": (None, "numpy _reconstruct(<numpy.ndarray>, [[[[...]"),
        "leaf.pdparams": (None, "entry 'conv1.weight' is a list"),
        "join.pdparams": (None, "the slices of 'w': ['a'] are missing or not arrays"),
    }
    long1 = lambda v: b"\x8a\x10" + v.to_bytes(16, "little", signed=True)  # noqa: E731
    payloads = {
        "leaf.pt": dict_pickle({"conv1.weight": list_dag(26)}),
        "pid.pt": b"\x80\x02(" + _pk("x") + list_dag(40) + b"tQ.",
        "key.pt": b"\x80\x02}" + tuple_dag(60) + b"K\x01s.",
        "ints.pt": b"\x80\x02}(" + b"".join(long1(k * (2 ** 61 - 1) + 5) + b"K\x00" for k in range(1, 3000)) + b"u.",
        "shape.pdparams": b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + list_dag(40) +
                          b"U\x01b\x87R.",
        "leaf.pdparams": dict_pickle({"conv1.weight": list_dag(27)}),
        "join.pdparams": dict_pickle({"UnpackBigParamInfor@@": b"}" + _pk("w") + b"}" + _pk("OriginShape") +
                                      b"]K\x01as" + _pk("slices") + b"]" + _pk("a") + b"ass", "a": list_dag(27)}),
    }
    for name, (_, needle) in cases.items():
        if name.endswith(".pt"):
            torch_zip(tmp_path / name, payloads[name])
        else:
            (tmp_path / name).write_bytes(payloads[name])
        err = refused(capsys, [tmp_path / name], tmp_path / f"o_{name}", needle, max_bytes=16 * MB)
        assert len(err) < 600, err


@pytest.mark.parametrize("offset, size, stride, numel, needle", [
    (0, (4,), (-1,), 4, "tensor stride (-1,) for size (4,)"),
    (-1, (4,), (1,), 4, "tensor storage offset -1"),
    (4, (1,), (1,), 4, "offset 4 reads element 4 of a storage of 4"),
    (1, (4,), (1,), 4, "offset 1 reads element 4 of a storage of 4"),
    (0, (2, 2), (3, 1), 4, "stride (3, 1), offset 0 reads element 4"),
    (0, (4,), (1,), 1 << 40, "storage 0 holds 16 bytes, 1099511627776 x FloatStorage need 4398046511104"),
    (0, (4,), (1,), 3, "storage 0 holds 16 bytes, 3 x FloatStorage need 12"),
    (0, (1 << 40,), (0,), 4, "its arrays would take more than"),
    (0, (2,), (True,), 4, "tensor stride (True,)"),
    (0, (2.0,), (1,), 4, "array shape (2.0,) is not a tuple of at most 8 sizes"),
    (0, (1,) * 9, (1,) * 9, 4, "is not a tuple of at most 8 sizes"),
])
def test_tensor_views_outside_their_storage_are_refused(offset, size, stride, numel, needle, tmp_path, capsys):
    torch_zip(tmp_path / "t.pt", dict_pickle({"w": tensor_op("0", numel, offset, size, stride)}),
              storages={"0": bytes(16)})
    refused(capsys, [tmp_path / "t.pt"], tmp_path / "o", needle, max_bytes=16 * MB)


def test_torch_reader_dtypes_views_and_offsets():
    got = read_torch_file(os.path.join(FIX, "dtypes.pt"))
    want = np.load(os.path.join(FIX, "dtypes_expected.npz"))
    assert set(got) == set(want.files)
    for k in want.files:
        g = np.asarray(got[k], np.float32 if want[k].dtype == np.float32 else want[k].dtype)
        np.testing.assert_array_equal(g, want[k], err_msg=k)
    assert got["f16"].dtype == np.float16 and got["bf16"].dtype == np.float32 and got["i64"].dtype == np.int64


def test_adaface_report_lists_the_head_and_lightning_state(tmp_path, capsys):
    assert plsc_import(os.path.join(FIX, "adaface_irse50_thin.ckpt"), "--out", tmp_path / "o") == 0
    out = capsys.readouterr().out
    assert "BGR -> RGB" in out and "hyper_parameters: arch 'ir_se_50'" in out
    for what in ("head.kernel [8, 10]", "optimizer_states", "lr_schedulers", "callbacks"):
        assert what in out, what


class SharedBytes:
    """An array whose pickled data is one bytes object shared (memoized) by every array that uses it."""

    def __init__(self, data):
        self.data = data

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return _reconstruct, (np.ndarray, (0,), b"b"), (1, (len(self.data),), np.dtype("u1"), False, self.data)


def test_a_small_file_cannot_make_the_reader_allocate_without_bound(tmp_path, capsys):
    blob = bytes(1 << 20)
    (tmp_path / "amp.pdparams").write_bytes(pickle.dumps({f"w{i}": SharedBytes(blob) for i in range(200)}, protocol=4))
    assert os.path.getsize(tmp_path / "amp.pdparams") < 2 << 20
    refused(capsys, [tmp_path / "amp.pdparams"], tmp_path / "o1", "would take more than", max_bytes=160 * MB)
    # torch: 200 tensors viewing one 1 MiB storage
    torch_zip(tmp_path / "amp.pt", dict_pickle({f"w{i}": tensor_op("0", 1 << 18, 0, (1 << 18,), (1,))
                                                for i in range(200)}), storages={"0": blob})
    refused(capsys, [tmp_path / "amp.pt"], tmp_path / "o2", "would take more than", max_bytes=160 * MB)


@pytest.mark.parametrize("name", ["arcface_vit_small.pth", "plsc_vit_small.pdparams"])
def test_mutated_files_give_a_checkpoint_error_naming_the_file_or_load(name, tmp_path):
    from hypothesis import HealthCheck, given, settings, strategies as st

    from plsc.errors import PlscError
    from plsc.interop import load_source

    data = open(os.path.join(FIX, name), "rb").read()
    path = tmp_path / name

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(edits=st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), min_size=1, max_size=4),
           cut=st.integers(8, len(data)))
    def run(edits, cut):
        buf = bytearray(data)
        for pos, val in edits:
            buf[pos] = val
        path.write_bytes(bytes(buf[:cut]))
        try:
            with bounded(max_bytes=64 * MB, seconds=20):
                load_source(str(path))
        except PlscError as e:
            assert str(path) in str(e) and "\n" not in str(e) and len(str(e)) < 1500, str(e)

    run()


@pytest.mark.parametrize("name, arch", [("IR_SE_50", {"layers": [2, 1, 1, 1], "widths": [16, 16, 32, 32]}),
                                        ("IR_18", {"layers": [1, 1, 1, 1], "widths": [8, 16, 16, 24]}),
                                        ("MobileFaceNet_large", {"blocks": [2, 1, 1, 1], "scale": 1, "width": 8})])
def test_new_backbones_nhwc_equals_nchw(name, arch):
    import paddle

    from plsc.registry import MODELS

    x = paddle.to_tensor(to_input(images()))
    outs = []
    for fmt in ("NCHW", "NHWC"):
        paddle.seed(3)
        model = MODELS.build(name, num_features=8, arch_kwargs=arch, data_format=fmt)
        model.eval()
        outs.append(model(x).numpy())
    assert rel_l2(outs[1], outs[0]) < 1e-5
