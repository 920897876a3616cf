"""IJB-B/C: alignment, template pooling, ROC / identification math, end to end on a tiny IJB folder, CLI, bad input."""
import json
import os
import textwrap
from itertools import combinations

import cv2
import numpy as np
import pytest

from plsc.errors import DataError
from plsc.metrics.align import ARCFACE_TEMPLATE, align_face, umeyama
from plsc.metrics.ijb import FARS, evaluate_ijb, evaluate_ijb_verification, load_aligned, roc_curve, tar_at_far
from plsc.metrics.ijb_meta import read_ijb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def similarity(angle, scale, tx, ty):
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def apply(m, pts):
    return pts @ m[:, :2].T + m[:, 2]


# ----------------------------------------------------------------- alignment
def test_umeyama_recovers_a_similarity():
    m = similarity(0.4, 1.7, 12.0, -5.0)
    est = umeyama(ARCFACE_TEMPLATE, apply(m, ARCFACE_TEMPLATE))
    assert np.allclose(est, m, atol=1e-9)
    # mirrored landmarks: the best *proper* similarity (no reflection), det > 0
    mirrored = ARCFACE_TEMPLATE * np.array([-1.0, 1.0])
    est = umeyama(mirrored, ARCFACE_TEMPLATE)
    assert np.linalg.det(est[:, :2]) > 0
    with pytest.raises(DataError, match="degenerate"):
        umeyama(np.ones((5, 2)), ARCFACE_TEMPLATE)


def _face(ident):
    base = np.random.default_rng(500 + ident).integers(0, 256, (14, 14, 3)).astype(np.uint8)
    return cv2.resize(base, (112, 112), interpolation=cv2.INTER_NEAREST)


def test_align_face_undoes_the_warp():
    face = _face(0)
    m = similarity(-0.3, 1.2, 30.0, 10.0)
    canvas = cv2.warpAffine(face, m, (180, 180), flags=cv2.INTER_LINEAR)
    aligned = align_face(canvas, apply(m, ARCFACE_TEMPLATE))
    inner = (slice(20, 92), slice(20, 92))  # away from the border the crop is the original face
    assert np.mean(np.abs(aligned[inner].astype(float) - face[inner])) < 12.0
    assert aligned.shape == (112, 112, 3)


# ----------------------------------------------------------------- ROC against a brute-force scan
def roc_points(labels, scores):
    """(FAR, TAR) at every distinct threshold (accept score >= t), straight evenly-stepped runs thinned
    as sklearn's drop_intermediate does, then (0, 0) in front."""
    counts = []
    for t in sorted(set(scores.tolist()), reverse=True):
        counts.append((int(np.sum(scores[~labels] >= t)), int(np.sum(scores[labels] >= t))))
    kept = [c for i, c in enumerate(counts)
            if i in (0, len(counts) - 1)
            or counts[i + 1][0] - c[0] != c[0] - counts[i - 1][0] or counts[i + 1][1] - c[1] != c[1] - counts[i - 1][1]]
    n_neg, n_pos = int((~labels).sum()), int(labels.sum())
    return [(0.0, 0.0)] + [(f / n_neg, t / n_pos) for f, t in kept]


def brute_tar(pts, x):
    best = min(abs(f - x) for f, _ in pts)
    return max(t for f, t in pts if abs(f - x) == best)  # highest TAR among the nearest-FAR points


def test_roc_tar_at_far_matches_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.random(3000) < 0.2
    scores = np.round(np.where(labels, rng.normal(0.6, 0.2, 3000), rng.normal(0.1, 0.2, 3000)), 2)  # ties
    fpr, tpr, thr = roc_curve(labels, scores)
    got = tar_at_far(fpr, tpr, FARS + (0.37,))
    pts = roc_points(labels, scores)
    assert np.allclose(fpr, [f for f, _ in pts]) and np.allclose(tpr, [t for _, t in pts])
    for x in FARS + (0.37,):
        assert got[f"{x:.0e}"] == pytest.approx(brute_tar(pts, x)), x
    assert fpr[-1] == 1.0 and tpr[-1] == 1.0 and np.all(np.diff(fpr) >= 0)
    # a single impostor: FAR 1e-6 is nearest to FAR 0, where the best TAR is that of every genuine pair above it
    got = tar_at_far(*roc_curve(np.array([1, 1, 1, 0, 1]), np.array([0.9, 0.8, 0.7, 0.6, 0.5]))[:2])
    assert got["1e-06"] == 0.75 and got["1e-01"] == 0.75


def test_roc_drops_points_inside_straight_runs():
    # impostors at 0.9, 0.8, 0.7 (a straight horizontal run), then genuines: (1/3, 0) is dropped
    labels = np.array([0, 0, 0, 1, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    fpr, tpr, _ = roc_curve(labels, scores)
    assert np.allclose(fpr, [0, 0.25, 0.75, 0.75, 1]) and np.allclose(tpr, [0, 0, 0, 1, 1])
    full, _, _ = roc_curve(labels, scores, drop_intermediate=False)
    assert np.allclose(full, [0, 0.25, 0.5, 0.75, 0.75, 0.75, 1])
    # FAR 0.5 is now as near to 0.25 as to 0.75: the highest TAR of those (1.0 at FAR 0.75) is reported
    assert tar_at_far(fpr, tpr, (0.5,))["5e-01"] == 1.0


# ----------------------------------------------------------------- a tiny IJB folder
SUBJECTS, TEMPLATES_PER_SUBJECT = 6, 3


def make_ijb(root, target="IJBC", one_to_n=True, seed=0):
    """6 subjects x 3 templates x (media of 2 images + media of 1 image); all template pairs."""
    rng = np.random.default_rng(seed)
    p = target.lower()
    os.makedirs(os.path.join(root, "meta"))
    os.makedirs(os.path.join(root, "loose_crop"))
    tid_lines, lmk_lines, gens, subject_of = [], [], [], {}
    media = 0
    for s in range(SUBJECTS):
        for k in range(TEMPLATES_PER_SUBJECT):
            t = 100 * s + k + 1
            subject_of[t] = s
            for n_img in (2, 1):
                media += 1
                for _ in range(n_img):
                    i = len(tid_lines)
                    m = similarity(rng.uniform(-0.4, 0.4), rng.uniform(0.9, 1.4), rng.uniform(5, 40), rng.uniform(5, 40))
                    img = cv2.warpAffine(_face(s), m, (190, 190), flags=cv2.INTER_LINEAR)
                    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
                    name = f"{i + 1}.jpg"
                    cv2.imwrite(os.path.join(root, "loose_crop", name), img, [cv2.IMWRITE_JPEG_QUALITY, 97])
                    tid_lines.append(f"{name} {t} {media}")
                    lmk = apply(m, ARCFACE_TEMPLATE).reshape(-1)
                    lmk_lines.append(" ".join([name] + [f"{v:.3f}" for v in lmk] + [f"{rng.uniform(0.5, 1.0):.4f}"]))
                    gens.append(m)
    order = rng.permutation(len(lmk_lines))  # the landmark file need not follow the image list order
    with open(os.path.join(root, "meta", f"{p}_face_tid_mid.txt"), "w") as f:
        f.write("\n".join(tid_lines) + "\n")
    with open(os.path.join(root, "meta", f"{p}_name_5pts_score.txt"), "w") as f:
        f.write("\n".join(lmk_lines[i] for i in order) + "\n")
    with open(os.path.join(root, "meta", f"{p}_template_pair_label.txt"), "w") as f:
        for a, b in combinations(sorted(subject_of), 2):
            f.write(f"{a} {b} {int(subject_of[a] == subject_of[b])}\n")
    if one_to_n:
        head = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n"
        g1, g2 = ("S1", "S2") if target == "IJBB" else ("G1", "G2")
        rows = {f"1N_gallery_{g1}.csv": [t for t in subject_of if t % 100 == 1 and subject_of[t] < 3],
                f"1N_gallery_{g2}.csv": [t for t in subject_of if t % 100 == 1 and subject_of[t] >= 3],
                "1N_probe_mixed.csv": [t for t in subject_of if t % 100 != 1]}
        for fname, ts in rows.items():
            with open(os.path.join(root, "meta", f"{p}_{fname}"), "w") as f:
                f.write(head + "".join(f"{t},{subject_of[t]},img/{t}.jpg\n{t},{subject_of[t]},img/{t}b.jpg\n" for t in ts))
    return gens, subject_of


class PoolEmbed:
    """numpy model: 14x14 average pooling -> 192-d, centered per image (matches the ONNX model below)."""

    def __init__(self):
        self.images = 0

    def __call__(self, x):
        self.images += len(x)
        pooled = x.reshape(len(x), 3, 8, 14, 8, 14).mean(axis=(3, 5)).reshape(len(x), -1)
        return (pooled - pooled.mean(axis=1, keepdims=True)).astype(np.float32)


def brute_force(meta, raw, flipped, norm_weight, det_weight):
    """Templates and metrics with dicts and loops (no shared code with plsc.metrics.ijb)."""
    feats = {}
    for i in range(len(raw)):
        f = raw[i].astype(np.float64) + (flipped[i] if flipped is not None else 0)
        if not norm_weight:
            f = f / np.linalg.norm(f)
        if det_weight:
            f = f * meta.scores[i]
        feats.setdefault(int(meta.templates[i]), {}).setdefault(int(meta.medias[i]), []).append(f)
    tmpl = {}
    for t, by_media in feats.items():
        v = np.mean([np.mean(fs, axis=0) for fs in by_media.values()], axis=0)
        tmpl[t] = v / np.linalg.norm(v)
    scores = np.array([tmpl[a] @ tmpl[b] for a, b in zip(meta.pair_t1, meta.pair_t2)])
    pts = roc_points(meta.pair_labels.astype(bool), scores)
    tar = {f"{x:.0e}": brute_tar(pts, x) for x in FARS}
    ident = {}
    probes = list(zip(*meta.one_to_n["probe"]))
    galleries = [g for g in meta.one_to_n if g != "probe"]
    union = [gt for g in galleries for gt in zip(*meta.one_to_n[g])]
    pos, ranks, negs = [], [], []
    for pt, ps in probes:  # closed set on both galleries (insightface): one mate per probe
        sims = [(tmpl[pt] @ tmpl[gt], gs) for gt, gs in union]
        (mate,) = [s for s, gs in sims if gs == ps]
        others = [s for s, gs in sims if gs != ps]
        pos.append(mate)
        ranks.append(1 + sum(1 for s in others if s > mate))
        negs += others
    negs.sort(reverse=True)
    ident["+".join(galleries)] = {"rank1": np.mean([r == 1 for r in ranks]), "rank5": np.mean([r <= 5 for r in ranks])}
    for f in (1e-2, 1e-1):
        th = negs[int(np.ceil(len(probes) * f)) - 1]
        ident["+".join(galleries)][f"tpir@fpir{f:.0e}"] = np.mean([p > th for p in pos])
    for g in galleries:
        gallery = list(zip(*meta.one_to_n[g]))
        mated_ranks, mated_scores, nonmated_top = [], [], []
        for pt, ps in probes:
            sims = [(tmpl[pt] @ tmpl[gt], gs) for gt, gs in gallery]
            if any(gs == ps for _, gs in sims):
                best_mate = max(s for s, gs in sims if gs == ps)
                mated_ranks.append(1 + sum(1 for s, gs in sims if gs != ps and s > best_mate))
                mated_scores.append(best_mate)
            else:
                nonmated_top.append(max(s for s, _ in sims))
        row = {"rank1": np.mean([r <= 1 for r in mated_ranks]), "rank5": np.mean([r <= 5 for r in mated_ranks])}
        for f in (1e-2, 1e-1):
            allowed = int(np.floor(f * len(nonmated_top)))  # non-mated alarms allowed
            cands = [t for t in sorted(nonmated_top)] + [np.inf]
            thr = min(t for t in cands if sum(1 for s in nonmated_top if s > t) <= allowed)
            row[f"tpir@fpir{f:.0e}"] = np.mean([r == 1 and s > thr for r, s in zip(mated_ranks, mated_scores)])
        ident[g] = row
    return tar, ident


@pytest.fixture(scope="module")
def ijb_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ijb") / "IJBC")
    gens, _ = make_ijb(root)
    return root, gens


def test_load_aligned_matches_the_known_warp(ijb_root):
    root, gens = ijb_root
    meta = read_ijb(root, "IJBC")
    assert len(meta.image_paths) == SUBJECTS * TEMPLATES_PER_SUBJECT * 3
    for i in (0, 7, 40):
        img = cv2.imread(meta.image_paths[i])
        expect = cv2.warpAffine(img, cv2.invertAffineTransform(gens[i]), (112, 112))  # the true inverse warp
        expect = (cv2.cvtColor(expect, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1).transpose(2, 0, 1)
        assert np.mean(np.abs(load_aligned(meta, i) - expect)) < 0.01


@pytest.mark.parametrize("flip,norm_weight,det_weight", [(True, True, True), (False, False, True), (True, False, False)])
def test_ijb_end_to_end_matches_brute_force(ijb_root, flip, norm_weight, det_weight):
    root, _ = ijb_root
    model = PoolEmbed()
    res, roc = evaluate_ijb(model, root, "IJBC", batch_size=10, flip_test=flip, norm_weight=norm_weight,
                            det_weight=det_weight)
    meta = read_ijb(root, "IJBC")
    x = np.stack([load_aligned(meta, i) for i in range(len(meta.image_paths))])
    ref = PoolEmbed()
    raw, flipped = ref(x), (ref(np.ascontiguousarray(x[:, :, :, ::-1])) if flip else None)
    tar, ident = brute_force(meta, raw, flipped, norm_weight, det_weight)
    assert res["tar_at_far"] == pytest.approx(tar)
    for g in ("G1", "G2", "G1+G2"):
        assert {k: res["identification"][g][k] for k in ident[g]} == pytest.approx(ident[g])
    for g in ("G1", "G2"):
        assert res["identification"][g]["mated"] == 6 and res["identification"][g]["non_mated"] == 6
    assert res["identification"]["G1+G2"]["probes"] == 12 and res["identification"]["G1+G2"]["gallery"] == 6
    assert model.images == (2 if flip else 1) * len(meta.image_paths)
    assert res["num_templates"] == 18 and res["num_pairs"] == 153 and res["num_genuine"] == 18
    # the subjects are far apart: every genuine pair is accepted at FAR 1e-1 and every probe is found
    assert res["tar_at_far"]["1e-01"] == 1.0 and res["identification"]["mean"]["rank1"] == 1.0
    assert len(roc["scores"]) == 153
    json.dumps(res)


def test_ijbb_names_and_without_1n_files(tmp_path):
    from plsc.metrics.ijb import format_ijb

    root = str(tmp_path / "IJBB")
    make_ijb(root, target="IJBB")  # IJB-B's galleries are S1 / S2
    res, _ = evaluate_ijb(PoolEmbed(), root, "IJBB", flip_test=False)
    assert list(res["identification"]) == ["S1", "S2", "mean", "S1+S2"]
    assert "S1+S2" in format_ijb(res)
    for f in os.listdir(os.path.join(root, "meta")):
        if "_1N_" in f:
            os.remove(os.path.join(root, "meta", f))
    res, _ = evaluate_ijb(PoolEmbed(), root, "IJBB", flip_test=False)
    assert res["identification"] is None and res["target"] == "IJBB"
    assert "not run" in format_ijb(res)


# ----------------------------------------------------------------- the CLI with a real ONNX model
def _write_pool_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("AveragePool", ["images"], ["p"], kernel_shape=[14, 14], strides=[14, 14]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("ReduceMean", ["f"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Sub", ["f", "m"], ["embedding"])]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 192])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def test_cli_with_onnx_model(ijb_root, tmp_path, capsys):
    from plsc.cli.ijb import ijb_main as main

    root, _ = ijb_root
    _write_pool_onnx(str(tmp_path / "pool.onnx"))
    out = tmp_path / "out"
    assert main(["--model", str(tmp_path / "pool.onnx"), "--root", root, "--target", "IJBC", "--out", str(out),
                 "--batch-size", "16", "--no-det-weight", "--save-scores"]) == 0  # console script: exit 0
    res = json.loads((out / "ijbc_results.json").read_text())
    png = cv2.imread(str(out / "ijbc_roc.png"))
    assert png is not None and png.shape[0] > 100
    assert set(np.load(out / "ijbc_scores.npz").files) == {"fpr", "tpr", "scores", "labels"}
    ref, _ = evaluate_ijb(PoolEmbed(), root, "IJBC", det_weight=False)
    assert res["tar_at_far"] == ref["tar_at_far"] and res["identification"] == ref["identification"]
    assert res["det_weight"] is False and res["norm_weight"] is True
    text = capsys.readouterr().out
    assert "FAR=1e-04" in text and "rank1" in text and "embedded 54/54 images" in text


def test_cli_errors_exit_2(tmp_path, capsys):
    from plsc.cli.ijb import ijb_main as main

    root = str(tmp_path / "IJBC")
    make_ijb(root)
    os.remove(os.path.join(root, "meta", "ijbc_template_pair_label.txt"))
    with pytest.raises(SystemExit) as e:
        main(["--model", "nowhere.onnx", "--root", root])
    assert e.value.code == 2
    assert "ijbc_template_pair_label.txt" in capsys.readouterr().err


def test_a_1n_problem_keeps_the_1to1_results(tmp_path, capsys):
    """A gallery list that misses a probe subject's template: 1:N fails, the 1:1 results (and the
    template embeddings asked for) are written before it, and the error says where they are."""
    from plsc.cli.ijb import ijb_main as main

    root = str(tmp_path / "IJBC")
    make_ijb(root)
    gallery = os.path.join(root, "meta", "ijbc_1N_gallery_G2.csv")
    lines = open(gallery).read().splitlines()
    with open(gallery, "w") as f:
        f.write("\n".join(lines[:1] + lines[3:]) + "\n")  # drop the first template's two rows
    _write_pool_onnx(str(tmp_path / "pool.onnx"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["--model", str(tmp_path / "pool.onnx"), "--root", root, "--out", str(out), "--batch-size", "16",
              "--save-embeddings"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "IJBC 1:N identification failed" in err and f"the 1:1 results are in {out / 'ijbc'}_results.json" in err
    res = json.loads((out / "ijbc_results.json").read_text())
    ref, _, _ = evaluate_ijb_verification(PoolEmbed(), root, "IJBC")
    assert res["tar_at_far"] == ref["tar_at_far"] and res["identification"] is None
    assert res["identification_error"] in err
    saved = np.load(out / "ijbc_templates.npz")
    assert saved["features"].shape[0] == saved["template_ids"].shape[0] == res["num_templates"]


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize("victim", ["ijbc_face_tid_mid.txt", "ijbc_name_5pts_score.txt", "ijbc_1N_gallery_G2.csv"])
def test_missing_meta_file_is_named(tmp_path, victim):
    root = str(tmp_path / "IJBC")
    make_ijb(root)
    os.remove(os.path.join(root, "meta", victim))
    with pytest.raises(DataError, match=f"missing IJB meta file .*{victim}"):
        read_ijb(root, "IJBC")


def test_undecodable_image_nan_and_bad_lines(tmp_path):
    root = str(tmp_path / "IJBC")
    make_ijb(root, one_to_n=False)
    with open(os.path.join(root, "loose_crop", "5.jpg"), "wb") as f:
        f.write(b"garbage")
    with pytest.raises(DataError, match=r"5.jpg: cannot read or decode the image \(image 4"):
        evaluate_ijb(PoolEmbed(), root, "IJBC")
    cv2.imwrite(os.path.join(root, "loose_crop", "5.jpg"), _face(1))

    def nan_model(x, seen=[0]):
        out = PoolEmbed()(x)
        if seen[0] <= 9 < seen[0] + len(x):
            out[9 - seen[0]] = np.nan
        seen[0] += len(x)
        return out

    with pytest.raises(DataError, match=r"image 9 \(.*10.jpg\) is not finite"):
        evaluate_ijb(nan_model, root, "IJBC", flip_test=False, batch_size=4)
    pairs = os.path.join(root, "meta", "ijbc_template_pair_label.txt")
    with open(pairs, "a") as f:
        f.write("101 999 0\n")
    with pytest.raises(DataError, match="template 999"):
        read_ijb(root, "IJBC")
    with open(pairs, "a") as f:
        f.write("101 102\n")
    with pytest.raises(DataError, match=r"ijbc_template_pair_label.txt: line 155: expected 3 fields"):
        read_ijb(root, "IJBC")


def test_closed_set_needs_one_gallery_template_per_probe_subject():
    from plsc.metrics.ijb_ident import closed_set

    t_ids, feats = np.array([1, 2, 3, 4]), np.eye(4)
    with pytest.raises(DataError, match="subject 7 of probe template 4 has 2 templates"):
        closed_set(t_ids, feats, (np.array([1, 2, 3]), np.array([7, 7, 8])), (np.array([4]), np.array([7])))
    with pytest.raises(DataError, match="template 9 has no features"):
        closed_set(t_ids, feats, (np.array([1, 9]), np.array([7, 8])), (np.array([4]), np.array([7])))


# ----------------------------------------------------------------- two ranks through the CLI
def test_cli_two_ranks(ijb_root, tmp_path):
    from dist_utils import launch

    root, _ = ijb_root
    _write_pool_onnx(str(tmp_path / "pool.onnx"))
    script = tmp_path / "run_ijb.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {ROOT!r})
        from plsc.cli.ijb import ijb_main as main
        main(sys.argv[1:])
    """))
    out = tmp_path / "out2"
    launch([script, "--model", tmp_path / "pool.onnx", "--root", root, "--out", out, "--batch-size", "8"],
           nproc=2, log_dir=tmp_path / "log")
    res = json.loads((out / "ijbc_results.json").read_text())
    ref, _ = evaluate_ijb(PoolEmbed(), root, "IJBC")
    assert res["tar_at_far"] == ref["tar_at_far"] and res["identification"] == ref["identification"]


def test_cli_with_a_training_checkpoint(ijb_root, tmp_path):
    from plsc.config import load_config
    from plsc.engine.engine import Trainer
    from plsc.cli.ijb import ijb_main as main

    root, _ = ijb_root
    cfg_path = os.path.join(ROOT, "configs", "smoke", "IResNet_tiny_random.yaml")
    over = [f"Global.output_dir={tmp_path / 'run'}"]
    trainer = Trainer(load_config(cfg_path, over))
    trainer.save("ckpt")
    ckpt = os.path.join(trainer.run_dir, "ckpt")
    main(["-c", cfg_path, "-o", over[0], "-o", f"Global.pretrained_model={ckpt}", "--root", root,
          "--out", str(tmp_path / "out"), "--batch-size", "32"])
    res = json.loads((tmp_path / "out" / "ijbc_results.json").read_text())
    assert res["model"] == "IResNet18"
    ref, _ = evaluate_ijb(trainer.embed, root, "IJBC", batch_size=32)  # the same weights, in this process
    assert res["tar_at_far"] == pytest.approx(ref["tar_at_far"])
    assert res["identification"]["mean"] == pytest.approx(ref["identification"]["mean"])
