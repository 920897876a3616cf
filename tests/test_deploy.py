"""plsc.deploy through its commands and Python API: detection + alignment on a real photo, plsc-embed,
plsc-verify, plsc-calibrate, plsc-search, bad inputs.

Models: `pool` is a fixed ONNX descriptor written here (14x14 average-pooled intensities of the aligned
crop, mean-subtracted: cosine = their correlation). It is no face recogniser; it is what makes the
stability test meaningful: it is insensitive to texture noise but sensitive to where the face sits in
the crop (unaligned crops and a 15 % scale error score far lower, asserted below), so cosine >= 0.9
across rescale / rotate / shift shows that detection + alignment put the face in the same place. The
random-weight imported fixtures (tests/fixtures/interop) are texture-sensitive and not invariant even to
sub-pixel changes, so they check plumbing (checkpoint vs export, another model refused), not stability.
"""
import json
import os
import shutil

import cv2
import matplotlib
import numpy as np
import pytest

from plsc.cli import deploy as cli
from plsc.cli.search import search_main
from plsc.deploy.images import read_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
SMOKE = os.path.join(ROOT, "configs", "smoke", "IResNet_tiny_random.yaml")
GH = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
MARKED = np.asarray(json.load(open(os.path.join(FIX, "deploy", "grace_hopper_landmarks.json")))["landmarks"], float)


def run(main, *args):
    """A console script in-process -> exit code (0 when it returns)."""
    try:
        return main([str(a) for a in args]) or 0
    except SystemExit as e:
        return e.code


def variants(rgb):
    """{name: (image, 2x3 matrix taking original pixels to the variant's)}."""
    h, w = rgb.shape[:2]
    out = {"x0.5": (cv2.resize(rgb, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA), np.diag([0.5, 0.5, 1])[:2]),
           "x2": (cv2.resize(rgb, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC), np.diag([2.0, 2.0, 1])[:2])}
    for a in (15, -15):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), a, 1.0)
        out[f"rot{a:+d}"] = (cv2.warpAffine(rgb, m, (w, h), borderMode=cv2.BORDER_REFLECT), m)
    m = np.float64([[1, 0, 40], [0, 1, -30]])
    out["shift"] = (cv2.warpAffine(rgb, m, (w, h), borderMode=cv2.BORDER_REFLECT), m)
    return out


def write(path, rgb):
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)


def pattern(seed, noise=0.0, rng=None):
    """A synthetic 'identity': a smooth random 112x112 image; noise: a new 'photo' of it."""
    base = np.random.default_rng(seed).uniform(0, 255, (14, 14, 3)).astype(np.float32)
    img = cv2.resize(base, (112, 112), interpolation=cv2.INTER_CUBIC)
    if noise:
        img = img + (rng or np.random.default_rng()).normal(0, noise, img.shape) + 10 * noise / 8
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[8, 8], strides=[8, 8]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("ReduceMean", ["f"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Sub", ["f", "m"], ["y"])]
    graph = helper.make_graph(nodes, "pool",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 112, 112])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 588])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    d = tmp_path_factory.mktemp("pool")
    onnx.save(model, str(d / "model.onnx"))
    return str(d / "model.onnx")


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    """The imported insightface r18 fixture: (checkpoint dir, its -o overrides, export dir with model.onnx)."""
    from plsc.cli import export_main
    from plsc.cli.interop import import_main

    base = tmp_path_factory.mktemp("r18")
    ckpt = base / "ckpt"
    assert import_main([os.path.join(FIX, "interop", "arcface_r18_thin.pth"), "--out", str(ckpt)]) == 0
    ovr = ["Model.name=IResNet18", "Model.num_features=8",
           'Model.arch_kwargs={"layers": [2, 1, 1, 1], "widths": [8, 16, 16, 24]}']
    export_main(["-c", SMOKE, *[x for o in ovr for x in ("-o", o)], "-o", f"Global.pretrained_model={ckpt}",
                 "-o", f"Global.output_dir={base / 'runs'}", "-o", "Export.export_type=onnx",
                 "-o", f"Export.export_dir={base / 'export'}"])
    return str(ckpt), ovr, str(base / "export")


@pytest.fixture(scope="module")
def detector():
    from plsc.deploy.detect import FacePreparer

    return FacePreparer()


# ------------------------------------------------------------------ 1. detection and alignment
def test_facenet_weights_are_read_from_the_legacy_torch_format_without_torch(tmp_path):
    import sys

    from plsc.deploy.mtcnn import weights_dir
    from plsc.errors import CheckpointError
    from plsc.interop.torch_file import read_torch_file

    pnet = os.path.join(weights_dir(), "pnet.pt")
    sd = read_torch_file(pnet)
    assert sd["conv1.weight"].shape == (10, 3, 3, 3) and sd["conv4_2.bias"].shape == (4,)
    assert "torch" not in sys.modules and "facenet_pytorch" not in sys.modules
    data = open(pnet, "rb").read()
    (tmp_path / "cut.pt").write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="cut.pt: not a valid legacy .*truncated"):
        read_torch_file(str(tmp_path / "cut.pt"))
    evil = data.replace(b"ctorch._utils\n_rebuild_tensor_v2\n", b"cposix\nsystem\n")  # the tensors call os.system
    assert evil != data
    (tmp_path / "evil.pt").write_bytes(evil)
    with pytest.raises(CheckpointError, match="refused to load global 'posix.system"):
        read_torch_file(str(tmp_path / "evil.pt"))


def test_one_face_on_grace_hopper_with_landmarks_where_marked_by_hand(detector):
    rgb = read_image(GH)
    boxes, points = detector.detect(rgb)
    assert len(boxes) == 1 and boxes[0, 4] > 0.99
    err = np.linalg.norm(points[0] - MARKED, axis=1)
    assert err.max() < 6.0, err  # face ~180 px wide, eyes 84 px apart
    x1, y1, x2, y2 = boxes[0, :4]
    assert x1 < MARKED[:, 0].min() and x2 > MARKED[:, 0].max() and y1 < MARKED[:, 1].min() and y2 > MARKED[:, 1].max()


def test_landmarks_follow_the_photo_when_rescaled_rotated_or_shifted(detector):
    rgb = read_image(GH)
    for name, (img, m) in variants(rgb).items():
        boxes, points = detector.detect(img)
        assert len(boxes) == 1, name
        want = MARKED @ m[:, :2].T + m[:, 2]
        iod = np.linalg.norm(want[1] - want[0])
        err = np.linalg.norm(points[0] - want, axis=1)
        assert err.max() < 0.1 * iod, (name, err, iod)


def test_aligned_crops_embed_alike_across_rescale_rotate_shift_and_unaligned_ones_do_not(pool):
    from plsc.deploy import Embedder

    rgb = read_image(GH)
    var = variants(rgb)
    r = Embedder(pool).embed([rgb] + [img for img, _ in var.values()])
    assert list(r.status) == ["face"] * 6 and len(r.embeddings) == 6
    cos = r.embeddings @ r.embeddings[0]
    assert cos.min() >= 0.9, dict(zip(["orig", *var], cos.round(3)))
    # the same descriptor on crops that are not aligned: the test above could fail
    rot = var["rot+15"][0]
    unaligned = Embedder(pool, align="none").embed([rgb[100:350, 150:370], rot[100:350, 150:370]]).embeddings
    assert (unaligned @ r.embeddings[0]).max() < 0.6
    from plsc.metrics.align import align_face

    lmk = r.landmarks[0]
    scaled = align_face(rgb, (lmk - lmk.mean(0)) * 1.15 + lmk.mean(0))  # a 15 % scale error
    assert float(Embedder(pool, align="crops").embed([scaled]).embeddings[0] @ r.embeddings[0]) < 0.85


# ------------------------------------------------------------------ 2. plsc-embed
def test_plsc_embed_statuses_npz_and_exit_codes(pool, tmp_path, capsys):
    rgb = read_image(GH)
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    write(d / "a.jpg", rgb)
    write(d / "sub" / "crop.png", pattern(1))                         # a 112x112 crop: passes through
    write(d / "blank.png", np.full((480, 640, 3), 128, np.uint8))     # no face
    write(d / "tiny.png", np.zeros((1, 1, 3), np.uint8))              # 1x1
    write(tmp_path / "two.jpg", np.hstack([rgb, rgb]))                # several faces
    (tmp_path / "text.jpg").write_text("not an image")
    data = open(GH, "rb").read()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    huge = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + (20000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00" + \
        b"\x00" * 64
    (tmp_path / "huge.png").write_bytes(huge)
    (tmp_path / "empty").mkdir()
    (tmp_path / "list.txt").write_text("two.jpg\n# comment\n\ntext.jpg\n")
    out = tmp_path / "out.npz"
    code = run(cli.embed_main, pool, d, tmp_path / "list.txt", tmp_path / "cut.jpg", tmp_path / "huge.png",
               tmp_path / "empty", tmp_path / "missing.jpg", "--out", out, "--batch-size", 2)
    err = capsys.readouterr().err
    assert code == 0
    z = np.load(out)
    status = dict(zip(z["inputs"], z["status"]))
    p = lambda *a: str(os.path.join(*map(str, a)))  # noqa: E731
    assert status == {p(d, "a.jpg"): "face", p(d, "blank.png"): "no_face", p(d, "sub", "crop.png"): "crop",
                      p(d, "tiny.png"): "no_face", p(tmp_path, "two.jpg"): "several_faces",
                      p(tmp_path, "text.jpg"): "error", p(tmp_path, "cut.jpg"): "error",
                      p(tmp_path, "huge.png"): "error", p(tmp_path, "missing.jpg"): "error"}
    for needle in ("text.jpg: not an image", "cut.jpg: truncated or corrupt JPEG", "huge.png: 20000x20000 pixels",
                   "missing.jpg: no such file", "empty: folder holds no images", "blank.png: no face found",
                   "two.jpg: 2 faces found, kept the largest"):
        assert needle in err, needle
    assert len(z["embeddings"]) == 3 and z["embeddings"].dtype == np.float32
    assert np.allclose(np.linalg.norm(z["embeddings"], axis=1), 1, atol=1e-5) and (z["norms"] > 0).all()
    row = list(z["paths"]).index(p(d, "a.jpg"))
    assert np.linalg.norm(z["landmarks"][row] - MARKED, axis=1).max() < 6
    assert np.isnan(z["landmarks"][list(z["paths"]).index(p(d, "sub", "crop.png"))]).all()  # not detected: no points
    assert os.listdir(tmp_path).count("out.npz") == 1 and not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    # --faces all: both faces of the two-face photo, 2 rows
    assert run(cli.embed_main, pool, tmp_path / "two.jpg", "--faces", "all", "--out", tmp_path / "all.npz") == 0
    z = np.load(tmp_path / "all.npz")
    assert len(z["embeddings"]) == 2 and sorted(z["face"]) == [0, 1] and list(z["n_faces"]) == [2]
    assert float(z["embeddings"][0] @ z["embeddings"][1]) > 0.95  # the same face twice
    assert sorted((z["boxes"][:, 0] + z["boxes"][:, 2]) / 2 > 512) == [False, True]  # one in each half
    # nothing processable: exit 2, no output written
    capsys.readouterr()
    assert run(cli.embed_main, pool, tmp_path / "text.jpg", d / "blank.png", "--out", tmp_path / "none.npz") == 2
    assert "plsc-embed: error: no face embedded" in capsys.readouterr().err and not (tmp_path / "none.npz").exists()
    assert run(cli.embed_main, pool, GH, "--out", tmp_path / "no" / "dir.npz") == 2
    assert "the folder" in capsys.readouterr().err


def test_flip_fuses_the_mirror_image_and_batches_do_not_change_results(pool, tmp_path):
    from plsc.deploy import Embedder

    crops = [pattern(i) for i in range(5)]
    a = Embedder(pool, batch_size=2, workers=3).embed(crops).embeddings
    b = Embedder(pool, batch_size=64, workers=1).embed(crops).embeddings
    assert np.allclose(a, b, atol=1e-6)
    f = Embedder(pool, flip=True).embed(crops).embeddings
    mirrored = Embedder(pool, flip=True).embed([c[:, ::-1].copy() for c in crops]).embeddings
    assert np.allclose(f, mirrored, atol=1e-5) and not np.allclose(f, a, atol=1e-3)


def test_large_jpeg_is_decoded_at_reduced_size(tmp_path):
    from plsc.deploy.images import read_image as read

    path = write(tmp_path / "big.jpg", cv2.resize(read(GH), (1600, 1200)))
    assert read(path).shape == (1200, 1600, 3)
    assert read(path, max_pixels=500_000).shape == (600, 800, 3)  # 1/2: the first factor under the limit
    assert read(path, max_pixels=400_000).shape == (300, 400, 3)
    with pytest.raises(Exception, match="too large even at 1/8"):
        read(path, max_pixels=10_000)


def test_checkpoint_dir_with_config_embeds_as_its_export(r18, tmp_path, capsys):
    from plsc.deploy import RecognitionModel

    ckpt, ovr, export = r18
    crops = np.stack([pattern(i) for i in range(3)])
    a = RecognitionModel(ckpt, config=SMOKE, overrides=ovr).run(crops)
    b = RecognitionModel(export).run(crops)
    c = RecognitionModel(os.path.join(export, "model.onnx")).run(crops)
    assert np.abs(a - b).max() < 1e-4 * np.abs(b).max() and np.abs(c - b).max() < 1e-4 * np.abs(b).max()
    assert run(cli.embed_main, ckpt, GH, "--out", tmp_path / "x.npz") == 2
    assert "a checkpoint: pass the config it was trained with (-c CONFIG)" in capsys.readouterr().err
    assert run(cli.embed_main, export, GH, "--out", tmp_path / "x.npz") == 0
    from_export = np.load(tmp_path / "x.npz")["embeddings"]
    assert from_export.shape == (1, 8)
    assert run(cli.embed_main, ckpt, GH, "-c", SMOKE, *[x for o in ovr for x in ("-o", o)], "--out",
               tmp_path / "c.npz") == 0
    assert np.abs(np.load(tmp_path / "c.npz")["embeddings"] - from_export).max() < 1e-4


# ------------------------------------------------------------------ 3. plsc-verify
def test_plsc_verify_same_photo_and_rotated_copy(pool, tmp_path, capsys):
    rgb = read_image(GH)
    rot = write(tmp_path / "rot.jpg", variants(rgb)["rot-15"][0])
    other = write(tmp_path / "other.png", pattern(3))
    assert run(cli.verify_main, pool, GH, GH, "--threshold", "0.5") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["same"] is True and out["similarity"] > 0.999 and out["threshold"] == 0.5
    assert run(cli.verify_main, pool, GH, rot, "--threshold", "0.5") == 0
    assert json.loads(capsys.readouterr().out)["same"] is True
    assert run(cli.verify_main, pool, GH, other, "--threshold", "0.5") == 0
    assert json.loads(capsys.readouterr().out)["same"] is False
    assert run(cli.verify_main, pool, GH, GH) == 0  # no threshold anywhere: same is null, said on stderr
    r = capsys.readouterr()
    assert json.loads(r.out)["same"] is None and "no threshold" in r.err
    blank = write(tmp_path / "blank.png", np.full((200, 200, 3), 90, np.uint8))
    assert run(cli.verify_main, pool, GH, blank, "--threshold", "0.5") == 2
    assert "blank.png: no face found" in capsys.readouterr().err


# ------------------------------------------------------------------ 4. plsc-calibrate
def _synthetic_pairs(n_ids=20, photos=3, seed=0):
    rng = np.random.default_rng(seed)
    imgs = {(i, k): pattern(100 + i, noise=12, rng=rng) for i in range(n_ids) for k in range(photos)}
    pairs = [((i, a), (i, b), True) for i in range(n_ids) for a in range(photos) for b in range(a + 1, photos)]
    pairs += [((i, 0), (j, 1), False) for i in range(n_ids) for j in range(n_ids) if i != j][:300]
    return imgs, pairs


def test_plsc_calibrate_on_a_bin_gives_plsc_evals_tar_far_threshold(pool, tmp_path, capsys):
    from plsc.data.bin import save_bin
    from plsc.inference import load_embedder
    from plsc.metrics.verification import VAL_THRESHOLDS, pair_distances, tar_far_curve, threshold_at_far

    imgs, pairs = _synthetic_pairs()
    flat = [imgs[x] for a, b, _ in pairs for x in (a, b)]
    same = np.asarray([s for _, _, s in pairs])
    blobs = [cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in flat]
    save_bin(str(tmp_path / "pairs.bin"), blobs, same)
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    shutil.copy(pool, model_dir / "model.onnx")
    model = model_dir / "model.onnx"
    assert run(cli.calibrate_main, model, tmp_path / "pairs.bin", "--far", "0.01") == 0
    printed = json.loads(capsys.readouterr().out)
    cal = json.load(open(model_dir / "calibration.json"))
    assert printed["written"] == str(model_dir / "calibration.json") and cal["impostor_pairs"] == 300
    # what plsc-eval computes: the exported model on the decoded .bin images, squared distances, FAR curve
    x = np.stack([cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                  for b in blobs]).astype(np.float32)
    emb = load_embedder(str(model))(((x / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2))
    dist = pair_distances(emb)
    tar, far = tar_far_curve(dist, same, VAL_THRESHOLDS)
    d_thr = threshold_at_far(far, VAL_THRESHOLDS, 0.01)
    assert cal["distance_threshold"] == pytest.approx(d_thr, abs=1e-9)
    assert cal["threshold"] == pytest.approx(1 - d_thr / 2, abs=1e-9)
    t, f = tar_far_curve(dist, same, np.array([d_thr]))
    assert cal["tar"] == pytest.approx(t[0]) and cal["far"] == pytest.approx(f[0]) and cal["far"] <= 0.01
    # verify now uses it
    assert run(cli.verify_main, model, GH, GH) == 0
    assert json.loads(capsys.readouterr().out)["threshold_source"] == str(model_dir / "calibration.json")
    # a FAR the pairs cannot measure
    before = open(model_dir / "calibration.json").read()
    assert run(cli.calibrate_main, model, tmp_path / "pairs.bin", "--far", "1e-4") == 2
    assert "--far 0.0001 needs at least 10000 impostor" in capsys.readouterr().err
    assert open(model_dir / "calibration.json").read() == before


def test_plsc_calibrate_text_pairs_with_missing_files(pool, tmp_path, capsys):
    imgs, pairs = _synthetic_pairs(n_ids=12)
    d = tmp_path / "p"
    d.mkdir()
    for (i, k), im in imgs.items():
        write(d / f"{i}_{k}.png", im)
    lines = [f"{a[0]}_{a[1]}.png {b[0]}_{b[1]}.png {int(s)}" for a, b, s in pairs]
    lines.append("gone.png 0_0.png 0")
    (d / "pairs.txt").write_text("\n".join(lines) + "\n")
    assert run(cli.calibrate_main, pool, d / "pairs.txt", "--far", "0.01", "--out", tmp_path / "cal.json") == 0
    r = capsys.readouterr()
    assert f"pairs.txt names {d / 'gone.png'}: no such file" in r.err
    cal = json.load(open(tmp_path / "cal.json"))
    assert cal["pairs_skipped"] == 1 and cal["pairs_used"] == len(pairs)
    (d / "bad.txt").write_text("a.png b.png maybe\n")
    assert run(cli.calibrate_main, pool, d / "bad.txt", "--out", tmp_path / "c2.json") == 2
    assert "bad.txt:1: expected 'path1 path2 same'" in capsys.readouterr().err


# ------------------------------------------------------------------ 5. plsc-search
def _gallery(tmp_path):
    rgb = read_image(GH)
    var = variants(rgb)
    g = tmp_path / "gallery"
    for i, name in enumerate(("ann", "bob", "cy")):
        (g / name).mkdir(parents=True)
        rng = np.random.default_rng(i)
        for k in range(3):
            write(g / name / f"{k}.png", pattern(10 + i, noise=10, rng=rng))
    (g / "grace").mkdir()
    write(g / "grace" / "small.jpg", var["x0.5"][0])
    write(g / "grace" / "shifted.jpg", var["shift"][0])
    (g / "nobody").mkdir()
    write(g / "nobody" / "blank.png", np.full((300, 300, 3), 50, np.uint8))
    return g, var


def _query(capsys, index, *images, extra=()):
    assert run(search_main, "query", index, *images, *extra) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_plsc_search_build_query_add_remove_with_known_answers(pool, tmp_path, capsys):
    g, var = _gallery(tmp_path)
    index = tmp_path / "g.faiss"
    assert run(search_main, "build", pool, g, "--out", index) == 0
    r = capsys.readouterr()
    assert "4 identities (4 vectors, flat)" in r.out
    assert "identity 'nobody'" in r.err and "no photo with a face" in r.err
    side = json.load(open(str(index) + ".json"))
    assert sorted(set(side["ids"].values())) == ["ann", "bob", "cy", "grace"] and side["embedding_size"] == 588
    # calibrate the open-set threshold next to the index from labelled pairs
    imgs, pairs = _synthetic_pairs(n_ids=12, seed=5)
    d = tmp_path / "pairs"
    d.mkdir()
    for (i, k), im in imgs.items():
        write(d / f"{i}_{k}.png", im)
    (d / "pairs.txt").write_text("".join(f"{a[0]}_{a[1]}.png {b[0]}_{b[1]}.png {int(s)}\n" for a, b, s in pairs))
    assert run(cli.calibrate_main, pool, d / "pairs.txt", "--far", "0.01", "--index", index) == 0
    thr = json.loads(capsys.readouterr().out)["threshold"]
    assert os.path.isfile(str(index) + ".calibration.json")
    rng = np.random.default_rng(99)
    probe_bob = write(tmp_path / "bob_new.png", pattern(11, noise=10, rng=rng))
    unknown = write(tmp_path / "stranger.png", pattern(77, noise=10, rng=rng))
    rot = write(tmp_path / "grace_rot.jpg", var["rot+15"][0])
    out = _query(capsys, index, probe_bob, unknown, rot, extra=["--top-k", "2"])
    assert [o["identity"] for o in out][0::2] == ["bob", "grace"] and out[0]["threshold"] == thr
    assert out[0]["accepted"] is True and out[2]["accepted"] is True and out[1]["accepted"] is False
    assert len(out[0]["matches"]) == 2 and out[0]["matches"][0]["score"] > out[0]["matches"][1]["score"]
    # remove bob: his photo no longer finds him; add a new identity without a rebuild
    assert run(search_main, "remove", index, "bob", "zed") == 0
    assert "skipped: identity 'zed' is not in the gallery" in capsys.readouterr().err
    assert _query(capsys, index, probe_bob)[0]["identity"] != "bob"
    (tmp_path / "new" / "stranger").mkdir(parents=True)
    for k in range(2):
        write(tmp_path / "new" / "stranger" / f"{k}.png", pattern(77, noise=10, rng=rng))
    assert run(search_main, "add", index, tmp_path / "new") == 0
    assert "added 1 identities" in capsys.readouterr().out
    got = _query(capsys, index, unknown)[0]
    assert got["identity"] == "stranger" and got["accepted"] is True
    assert sorted(set(json.load(open(str(index) + ".json"))["ids"].values())) == ["ann", "cy", "grace", "stranger"]


def test_approximate_indexes_match_the_exact_one_and_remove_works(tmp_path):
    from plsc.deploy import Gallery

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    fp = {"embedding_size": 32, "probe": [[1.0] + [0.0] * 31]}
    q = x[:50] + 0.05 * rng.normal(size=(50, 32)).astype(np.float32)
    answers = {}
    for kind in ("flat", "hnsw", "ivf"):
        g = Gallery.create(fp, kind, train=x)
        for i in range(0, 400, 2):
            g.add(f"id{i // 2}", x[i:i + 2])  # two vectors per identity
        g.save(tmp_path / f"{kind}.faiss")
        g = Gallery.load(tmp_path / f"{kind}.faiss")
        answers[kind] = [h[0][0] for h in g.search(q, 3)]
        assert answers[kind] == [f"id{i // 2}" for i in range(50)], kind
        g.remove("id0")
        assert all(h[0][0] != "id0" for h in g.search(q[:2], 3)) and g.index.ntotal == 398, kind


def test_index_of_another_model_or_corrupt_is_refused(pool, r18, tmp_path, capsys):
    g, _ = _gallery(tmp_path)
    shutil.rmtree(g / "grace")
    index = tmp_path / "g.faiss"
    assert run(search_main, "build", pool, g, "--out", index) == 0
    capsys.readouterr()
    for model in (r18[2], os.path.join(r18[2], "model.onnx")):  # another model, another embedding size
        assert run(search_main, "query", index, GH, "--model", model) == 2
        err = capsys.readouterr().err
        assert "plsc-search: error: the gallery was built with another model" in err and "embedding size 588 vs 8" \
            in err
    data = open(index, "rb").read()
    open(index, "wb").write(data[: len(data) // 2])
    assert run(search_main, "query", index, GH) == 2
    assert "does not match its identity list" in capsys.readouterr().err
    os.remove(str(index) + ".json")
    assert run(search_main, "query", index, GH) == 2
    assert "g.faiss.json is missing" in capsys.readouterr().err
    assert run(search_main, "build", pool, tmp_path / "empty_gallery", "--out", tmp_path / "e.faiss") == 2
    assert "not a folder" in capsys.readouterr().err and not os.path.exists(tmp_path / "e.faiss")


# ------------------------------------------------------------------ 6. Python API
def test_python_api_embed_gallery_search(pool):
    from plsc.deploy import Embedder, Gallery

    emb = Embedder(pool)
    r = emb.embed([GH, pattern(5)])
    assert list(r.status) == ["face", "crop"] and r.embeddings.shape == (2, 588)
    g = Gallery.create(emb.model.fingerprint())
    g.add("grace", r.embeddings[:1])
    g.add("pattern", r.embeddings[1:])
    rot = variants(read_image(GH))["rot-15"][0]
    assert g.search(emb.embed([rot]).embeddings, top_k=1)[0][0][0] == "grace"


def test_per_image_gallery_enrols_every_photo_and_lists_an_identity_once(pool, tmp_path, capsys):
    g, _ = _gallery(tmp_path)
    index = tmp_path / "p.faiss"
    assert run(search_main, "build", pool, g, "--out", index, "--per-image", "--index", "hnsw") == 0
    assert "4 identities (11 vectors, hnsw)" in capsys.readouterr().out  # 3 x 3 patterns + 2 photos of grace
    side = json.load(open(str(index) + ".json"))
    assert side["per_image"] is True and side["search_param"] == 256
    probe = write(tmp_path / "ann_new.png", pattern(10, noise=10, rng=np.random.default_rng(7)))
    out = _query(capsys, index, probe, extra=["--top-k", "4", "--threshold", "0.5"])[0]
    names = [m["identity"] for m in out["matches"]]
    assert names[0] == "ann" and len(names) == len(set(names)) == 4


def _scrfd_like(path, outputs=9):
    """An ONNX model with insightface SCRFD's input and output layout whose outputs are fixed: one face
    (stride 16, location x=20, y=15, anchor 0) at score 0.9, a weaker overlapping duplicate, a 0.3 box."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    consts = []
    for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
        for stride in (8, 16, 32):
            consts.append(np.zeros(((640 // stride) ** 2 * 2, width), np.float32))
    face = (15 * 40 + 20) * 2
    consts[1][face] = 0.9
    consts[1][face + 2] = 0.8   # the next location: overlaps, suppressed by NMS
    consts[0][7] = 0.3          # under the score threshold
    consts[4][face] = consts[4][face + 2] = [5, 6, 5, 7]    # box (240, 144, 400, 352) on the 640 input
    pts = np.array([[290, 220], [350, 220], [320, 255], [295, 300], [345, 300]], np.float32)
    consts[7][face] = ((pts - [320, 240]) / 16).reshape(-1)
    consts[7][face + 2] = ((pts - [336, 240]) / 16).reshape(-1)
    consts = consts[: outputs]
    names = [f"o{i}" for i in range(len(consts))]
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Mul", ["s", "zero"], ["z"])]
    nodes += [helper.make_node("Add", [f"c{i}", "z"], [n]) for i, n in enumerate(names)]
    inits = [numpy_helper.from_array(np.float32(0), "zero")] + \
        [numpy_helper.from_array(c, f"c{i}") for i, c in enumerate(consts)]
    graph = helper.make_graph(nodes, "scrfd_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path), pts * 2  # the photo below is 1280x960: the input holds it at scale 0.5


def test_scrfd_layout_detector_decodes_boxes_and_landmarks(pool, tmp_path, capsys):
    """SCRFD's decoding (anchor centres, distances x stride, NMS, letterbox scale) on a model with its output
    layout: the real det_10g.onnx cannot be downloaded here, so this checks plsc's side of the contract only."""
    from plsc.deploy.detect import FacePreparer

    det, pts = _scrfd_like(tmp_path / "det.onnx")
    photo = np.random.default_rng(0).integers(0, 255, (960, 1280, 3), dtype=np.uint8)
    boxes, points = FacePreparer(detector=det).detect(photo)
    assert len(boxes) == 1 and boxes[0, 4] == pytest.approx(0.9)
    assert np.allclose(boxes[0, :4], [480, 288, 800, 704], atol=1e-3) and np.allclose(points[0], pts, atol=1e-3)
    path = write(tmp_path / "photo.png", photo)
    assert run(cli.embed_main, pool, path, "--detector", det, "--out", tmp_path / "o.npz") == 0
    z = np.load(tmp_path / "o.npz")
    assert list(z["status"]) == ["face"] and np.allclose(z["landmarks"][0], pts, atol=1e-3)
    capsys.readouterr()
    six, _ = _scrfd_like(tmp_path / "six.onnx", outputs=6)
    assert run(cli.embed_main, pool, path, "--detector", six, "--out", tmp_path / "o.npz") == 2
    assert "six.onnx: this detector has no landmark outputs" in capsys.readouterr().err
    assert run(cli.embed_main, pool, path, "--detector", tmp_path / "nope.onnx", "--out", tmp_path / "o.npz") == 2
    assert "nope.onnx: no such file" in capsys.readouterr().err


def test_a_jpeg_over_the_pixel_limit_is_detected_at_reduced_size_and_reported_in_file_pixels(pool, monkeypatch):
    from plsc.deploy import Embedder, images

    monkeypatch.setattr(images, "MAX_PIXELS", 200_000)  # grace_hopper is 512x600 = 307,200 pixels: read at 1/2
    r = Embedder(pool).embed([GH])
    assert list(r.status) == ["face"]
    assert np.linalg.norm(r.landmarks[0] - MARKED, axis=1).max() < 10  # positions in the file's pixels
