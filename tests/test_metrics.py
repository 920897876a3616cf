"""LFW-style verification: the protocol on crafted and random data, evaluate_sets end to end, 2 ranks, bad input."""
import json
import os
import pickle
import textwrap

import cv2
import numpy as np
import pytest

from plsc.data.bin import save_bin
from plsc.errors import ConfigError, DataError
from plsc.metrics.evaluator import evaluate_sets, format_table
from plsc.metrics.verification import LFWAcc, verification_from_distances, verify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------- an independent brute-force protocol
def brute_force(dist, issame, nfolds=10):
    """insightface's protocol written with plain loops (fold ids, per-threshold counting, segment scan)."""
    n = len(dist)
    fold_of = []
    for f in range(nfolds):  # KFold(shuffle=False): fold f has n//k (+1 for the first n%k folds) items
        fold_of += [f] * (n // nfolds + (1 if f < n % nfolds else 0))
    acc_thr = [0.01 * i for i in range(400)]  # the float values np.arange(0, 4, 0.01) holds
    val_thr = [0.001 * i for i in range(4000)]

    def counts(idx, t):
        tp = fp = tn = fn = 0
        for i in idx:
            pred = dist[i] < t
            if pred and issame[i]:
                tp += 1
            elif pred:
                fp += 1
            elif issame[i]:
                fn += 1
            else:
                tn += 1
        return tp, fp, tn, fn

    accs, thrs, vals, fars = [], [], [], []
    for f in range(nfolds):
        test = [i for i in range(n) if fold_of[i] == f]
        train = [i for i in range(n) if fold_of[i] != f]
        best_t, best_acc = None, -1.0
        for t in acc_thr:
            tp, fp, tn, fn = counts(train, t)
            a = (tp + tn) / len(train)
            if a > best_acc:  # strict: the first (smallest) threshold wins ties
                best_t, best_acc = t, a
        tp, fp, tn, fn = counts(test, best_t)
        accs.append((tp + tn) / len(test))
        thrs.append(best_t)
        # FAR on the train folds for each val threshold; interpolate threshold(FAR) piecewise linearly
        n_diff = sum(1 for i in train if not issame[i])
        far_curve = [(sum(1 for i in train if not issame[i] and dist[i] < t) / n_diff if n_diff else 0.0)
                     for t in val_thr]
        target = 1e-3
        thr = 0.0
        if max(far_curve) >= target:
            for k in range(len(val_thr) - 1):
                a, b = far_curve[k], far_curve[k + 1]
                if a <= target < b:
                    thr = val_thr[k] + (target - a) / (b - a) * (val_thr[k + 1] - val_thr[k])
                    break
        tp, fp, tn, fn = counts(test, thr)
        vals.append(tp / (tp + fn) if tp + fn else 0.0)
        fars.append(fp / (fp + tn) if fp + tn else 0.0)
    return np.mean(accs), np.std(accs), np.mean(thrs), np.mean(vals), np.mean(fars)


@pytest.mark.parametrize("n,quantize,seed", [(60, False, 0), (137, True, 1), (233, False, 2)])
def test_protocol_matches_brute_force(n, quantize, seed):
    rng = np.random.default_rng(seed)
    issame = rng.random(n) < 0.5
    dist = np.where(issame, rng.normal(0.9, 0.35, n), rng.normal(1.6, 0.35, n)).clip(0, 3.99)
    if quantize:  # many distances exactly on a threshold: the strict '<' and ties matter
        dist = np.round(dist, 2)
    r = verification_from_distances(dist, issame)
    acc, std, thr, val, far = brute_force(list(dist), list(issame))
    assert r["acc"] == pytest.approx(acc, abs=1e-12)
    assert r["std"] == pytest.approx(std, abs=1e-12)
    assert r["threshold"] == pytest.approx(thr, abs=1e-9)
    assert r["val"] == pytest.approx(val, abs=1e-12)
    assert r["far"] == pytest.approx(far, abs=1e-12)
    assert r["num_pairs"] == n


def test_perfect_separation_picks_smallest_tied_threshold():
    issame = np.array([True, False] * 10)
    dist = np.where(issame, 0.5, 1.5)  # every threshold in (0.5, 1.5] is perfect: the smallest is 0.51
    r = verification_from_distances(dist, issame)
    assert r["acc"] == 1.0 and r["std"] == 0.0
    assert r["threshold"] == pytest.approx(0.51)
    # train FAR is 0 up to t=1.500 and 1 from t=1.501: the FAR=1e-3 threshold is interpolated to
    # 1.500 + 1e-3 * 0.001 = 1.500001, which accepts the different pairs at exactly 1.5 (insightface does too)
    assert r["val"] == 1.0 and r["far"] == 1.0
    r = verification_from_distances(np.where(issame, 0.5, 1.5004), issame)  # above 1.500001: rejected
    assert r["val"] == 1.0 and r["far"] == 0.0 and r["threshold"] == pytest.approx(0.51)


def test_no_information_ties_go_to_threshold_zero():
    issame = np.array([True, False] * 10)  # each fold of 2 pairs: one same, one different
    r = verification_from_distances(np.ones(20), issame)
    assert r["threshold"] == 0.0  # all thresholds tie at 50% on the train folds
    assert r["acc"] == 0.5 and r["std"] == 0.0


def test_contiguous_fold_boundaries():
    n = 23  # folds: 3,3,3,2,2,2,2,2,2,2 pairs
    issame = np.array([i % 2 == 0 for i in range(n)])
    dist = np.where(issame, 0.2, 1.8)
    wrong = [2, 3]  # last pair of fold 0 and first pair of fold 1
    dist[wrong] = np.where(issame[wrong], 3.0, 0.1)
    r = verification_from_distances(dist, issame)
    expect = [2 / 3, 2 / 3] + [1.0] * 8
    assert r["fold_acc"] == pytest.approx(expect)
    assert r["acc"] == pytest.approx(np.mean(expect)) and r["std"] == pytest.approx(np.std(expect))
    dist2 = np.where(issame, 0.2, 1.8)
    dist2[[9, 10]] = np.where(issame[[9, 10]], 3.0, 0.1)  # pairs 9 and 10 are both in fold 3 (9..10)
    assert verification_from_distances(dist2, issame)["fold_acc"][3] == 0.0


def test_verify_fusion_xnorm_and_metric_class():
    rng = np.random.default_rng(3)
    emb, flip = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    issame = rng.random(20) < 0.5
    r = LFWAcc(flip_test=True)(emb, issame, flip)
    fused = (emb + flip) / np.linalg.norm(emb + flip, axis=1, keepdims=True)
    d = ((fused[0::2] - fused[1::2]) ** 2).sum(1)
    assert r["acc"] == verification_from_distances(d, issame)["acc"]
    norms = np.r_[np.linalg.norm(emb, axis=1), np.linalg.norm(flip, axis=1)]
    assert r["xnorm"] == pytest.approx(norms.mean())
    assert r["feat_norm"] == pytest.approx(np.linalg.norm(emb + flip, axis=1).mean())
    r0 = LFWAcc(flip_test=False)(emb, issame, flip)
    assert r0["xnorm"] == pytest.approx(np.linalg.norm(emb, axis=1).mean())
    # a scale per embedding changes XNorm but not the accuracy
    r_scaled = verify(emb * 7.0, issame)
    assert r_scaled["acc"] == r0["acc"] and r_scaled["xnorm"] == pytest.approx(7 * r0["xnorm"])
    json.dumps(r)


def test_nan_embedding_is_named():
    emb = np.ones((40, 4))
    emb[13, 2] = np.nan
    with pytest.raises(DataError, match=r"lfw.*image 13 \(pair 6\)"):
        verify(emb, np.ones(20, bool), name="lfw")


def test_lfwacc_config_validates():
    from plsc.config import validate

    cfg = validate({"Metric": {"Eval": [{"LFWAcc": {"flip_test": False}}]}})
    assert cfg["Metric"]["Eval"] == [{"LFWAcc": {"flip_test": False}}]
    with pytest.raises(ConfigError, match="flip_tst"):
        validate({"Metric": {"Eval": [{"LFWAcc": {"flip_tst": False}}]}})


# ----------------------------------------------------------------- evaluate_sets end to end on a .bin
def _face(rng, ident, noise):
    base = np.random.default_rng(1000 + ident).integers(0, 256, (14, 14, 3)).astype(np.float32)
    img = cv2.resize(base, (112, 112), interpolation=cv2.INTER_NEAREST) + rng.normal(0, noise, (112, 112, 3))
    return cv2.imencode(".png", img.clip(0, 255).astype(np.uint8))[1].tobytes()


def make_bin(path, pairs=30, seed=0, noise=30.0):
    rng = np.random.default_rng(seed)
    images, issame = [], []
    for p in range(pairs):
        same = p % 2 == 0
        a, b = 2 * p, (2 * p if same else 2 * p + 1)
        images += [_face(rng, a, noise), _face(rng, b, noise)]
        issame.append(same)
    save_bin(str(path), images, issame)
    return images, np.array(issame)


class PoolEmbed:
    """Deterministic numpy model: 8x8 average pooling, centered -> 192-d; counts calls and images."""

    def __init__(self):
        self.calls, self.images = 0, 0

    def __call__(self, x):
        assert x.dtype == np.float32 and x.shape[1:] == (3, 112, 112)
        self.calls += 1
        self.images += len(x)
        pooled = x.reshape(len(x), 3, 8, 14, 8, 14).mean(axis=(3, 5)).reshape(len(x), -1)
        return (pooled - pooled.mean(axis=1, keepdims=True)).astype(np.float32)


def _expected(images, issame, flip):
    decoded = [cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
               for b in images]
    x = np.stack([((d.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1) for d in decoded])
    m = PoolEmbed()
    return verify(m(x), issame, m(np.ascontiguousarray(x[:, :, :, ::-1])) if flip else None)


@pytest.mark.parametrize("flip", [True, False])
def test_plsc_flip_test_folder_is_fused_not_double_counted(tmp_path, flip):
    """A PLSC pairs folder made with --flip_test (N pairs, then the N mirrored pairs) scores N pairs: with
    flip_test its stored mirrors are fused with the originals (PLSC's meaning), giving exactly what the
    .bin with plsc's own flip gives; without, the mirrored copies are not scored as more pairs."""
    from plsc.cli.data import bin_convert_main

    make_bin(tmp_path / "tiny.bin", pairs=30)
    assert bin_convert_main(["to-pairs", str(tmp_path / "tiny.bin"), str(tmp_path / "pairs"), "--flip"]) == 0
    lines = (tmp_path / "pairs" / "label.txt").read_text().splitlines()
    assert len(lines) == 60 and "_hflip" in lines[30]
    spec = {"name": "FaceVerificationDataset", "image_root": str(tmp_path / "pairs"),
            "cls_label_path": str(tmp_path / "pairs" / "label.txt")}
    logs = []
    folder = evaluate_sets(PoolEmbed(), {"pairs": spec}, batch_size=16, flip_test=flip, log=logs.append)["pairs"]
    ref = evaluate_sets(PoolEmbed(), {"tiny": {"name": "FaceBinDataset", "bin_path": str(tmp_path / "tiny.bin")}},
                        batch_size=16, flip_test=flip)["tiny"]
    assert folder["num_pairs"] == 30
    for k in ("acc", "std", "xnorm", "threshold", "feat_norm"):
        assert folder[k] == pytest.approx(ref[k], rel=1e-6, abs=1e-9), k
    assert "--flip_test" in logs[0] and ("fused" in logs[0] if flip else "not scored" in logs[0])


def test_lfwacc_folds_and_refused_pca():
    rng = np.random.default_rng(0)
    emb, issame = rng.standard_normal((80, 8)), rng.integers(0, 2, 40).astype(bool)
    assert len(LFWAcc(nrof_folds=5)(emb, issame)["fold_acc"]) == 5
    with pytest.raises(ConfigError, match="pca=16: PCA-reduced verification is not implemented"):
        LFWAcc(pca=16)


@pytest.mark.parametrize("flip", [True, False])
def test_evaluate_sets_on_bin(tmp_path, flip):
    images, issame = make_bin(tmp_path / "tiny.bin", pairs=30)
    model = PoolEmbed()
    res = evaluate_sets(model, {"tiny": {"name": "FaceBinDataset", "bin_path": str(tmp_path / "tiny.bin")}},
                        batch_size=16, flip_test=flip)
    exp = _expected(images, issame, flip)
    for k in ("acc", "std", "xnorm", "threshold", "val", "far", "feat_norm"):
        assert res["tiny"][k] == pytest.approx(exp[k], rel=1e-6, abs=1e-9), k
    assert res["tiny"]["acc"] >= 0.9 and res["tiny"]["num_pairs"] == 30
    assert model.calls == (2 if flip else 1) * 4 and model.images == (2 if flip else 1) * 60
    json.dumps(res)
    table = format_table(res, best={"tiny": 0.99})
    assert "tiny" in table and f"{res['tiny']['acc']:.5f}" in table and "0.99000" in table and "mean feature norm" in table


def test_evaluate_sets_pairs_folder_and_several_sets(tmp_path):
    images, issame = make_bin(tmp_path / "a.bin", pairs=20, seed=1)
    os.makedirs(tmp_path / "pairs" / "images")
    lines = []
    for p in range(20):
        for j in range(2):
            (tmp_path / "pairs" / "images" / f"{p}_{j}.png").write_bytes(images[2 * p + j])
        lines.append(f"images/{p}_0.png\timages/{p}_1.png\t{int(issame[p])}")
    (tmp_path / "pairs" / "label.txt").write_text("\n".join(lines) + "\n")
    sets = {"from_bin": {"name": "FaceBinDataset", "bin_path": str(tmp_path / "a.bin")},
            "from_folder": {"name": "FaceVerificationDataset", "image_root": str(tmp_path / "pairs"),
                            "cls_label_path": str(tmp_path / "pairs" / "label.txt")}}
    res = evaluate_sets(PoolEmbed(), sets, batch_size=7)
    assert list(res) == ["from_bin", "from_folder"]
    for k in ("acc", "xnorm", "val", "threshold"):
        assert res["from_bin"][k] == res["from_folder"][k]
    assert "mean" in format_table(res)


# ----------------------------------------------------------------- bad input
def test_bin_with_wrong_image_count(tmp_path):
    path = tmp_path / "bad.bin"
    with open(path, "wb") as f:
        pickle.dump(([b"x"] * 5, [True, False]), f)
    with pytest.raises(DataError, match="5 images but 2 pairs"):
        evaluate_sets(PoolEmbed(), {"bad": {"name": "FaceBinDataset", "bin_path": str(path)}})


def test_undecodable_image_is_named(tmp_path):
    images, issame = make_bin(tmp_path / "ok.bin", pairs=10)
    images[7] = b"not an image at all"
    save_bin(str(tmp_path / "broken.bin"), images, issame)
    with pytest.raises(DataError, match=r"broken.bin: image 7: cannot decode"):
        evaluate_sets(PoolEmbed(), {"broken": {"name": "FaceBinDataset", "bin_path": str(tmp_path / "broken.bin")}})


def test_image_of_another_size_is_named(tmp_path):
    images, issame = make_bin(tmp_path / "ok.bin", pairs=10)
    images[4] = cv2.imencode(".png", np.zeros((100, 90, 3), np.uint8))[1].tobytes()
    save_bin(str(tmp_path / "sizes.bin"), images, issame)
    with pytest.raises(DataError, match=r"eval set 'sizes': image 4 has shape \(3, 100, 90\)"):
        evaluate_sets(PoolEmbed(), {"sizes": {"name": "FaceBinDataset", "bin_path": str(tmp_path / "sizes.bin")}})


def test_nan_from_model_names_set_and_index(tmp_path):
    make_bin(tmp_path / "n.bin", pairs=10)

    def nan_at_11(x, state={"seen": 0}):
        out = PoolEmbed()(x)
        lo = state["seen"]
        state["seen"] += len(x)
        if lo <= 11 < lo + len(x):
            out[11 - lo, 0] = np.nan
        return out

    with pytest.raises(DataError, match=r"eval set 'nanset'.*image 11 \(pair 5\)"):
        evaluate_sets(nan_at_11, {"nanset": {"name": "FaceBinDataset", "bin_path": str(tmp_path / "n.bin")}},
                      batch_size=8, flip_test=False)


def test_random_eval_transform_and_non_verification_set_refused(tmp_path):
    make_bin(tmp_path / "r.bin", pairs=10)
    ops = [{"DecodeImage": {"to_rgb": True}}, {"RandFlipImage": {"flip_code": 1}},
           {"NormalizeImage": {}}, {"ToCHWImage": None}]
    with pytest.raises(ConfigError, match="random"):
        evaluate_sets(PoolEmbed(), {"r": {"name": "FaceBinDataset", "bin_path": str(tmp_path / "r.bin"),
                                          "transform_ops": ops}})
    with pytest.raises(ConfigError, match="not a verification dataset"):
        evaluate_sets(PoolEmbed(), {"x": {"name": "FaceRandomDataset", "num_classes": 4, "num_samples": 8}})


@pytest.mark.parametrize("override, message", [
    ("DataLoader.Eval.sampler={name: BatchSampler, batch_size: 8, shuffle: true}", "sampler.shuffle=true"),
    ("DataLoader.Eval.sampler={name: BatchSampler, batch_size: 8, drop_last: true}", "sampler.drop_last=true"),
    ("DataLoader.Eval.sampler={name: DistributedBatchSampler, batch_size: 8}", None),
])
def test_eval_sampler_keys_do_what_they_say_or_are_refused(tmp_path, override, message):
    import logging

    from plsc.config import load_config
    from plsc.engine.evaluation import Evaluator

    make_bin(tmp_path / "r.bin", pairs=10)
    smoke = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "smoke",
                         "IResNet_tiny_random.yaml")
    overrides = [f"DataLoader.Eval.dataset={{name: FaceBinDataset, bin_path: {tmp_path / 'r.bin'}}}",
                 override, "Metric.Eval=[{LFWAcc: {flip_test: true}}]"]
    if message is None:
        cfg = load_config(smoke, overrides)
        assert Evaluator(cfg, 0, 1, logging.getLogger("t")).batch_size == 8
    else:  # refused when the config loads, before any rank starts
        with pytest.raises(ConfigError, match=message):
            load_config(smoke, overrides)


# ----------------------------------------------------------------- two ranks: split work, same answer
DIST_SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from plsc.env import setup_threads; setup_threads()
    import paddle.distributed as dist
    from plsc.errors import DataError
    from plsc.metrics.evaluator import evaluate_sets
    from test_metrics import PoolEmbed
    dist.init_parallel_env()
    rank, world = dist.get_rank(), dist.get_world_size()
    model = PoolEmbed()
    sets = {{"a": {{"name": "FaceBinDataset", "bin_path": {a!r}}}, "b": {{"name": "FaceBinDataset", "bin_path": {b!r}}}}}
    res = evaluate_sets(model, sets, batch_size=8, flip_test=True, rank=rank, world_size=world)
    err = None
    try:  # the undecodable image is in rank 1's slice: rank 0 must fail with it too, not hang
        evaluate_sets(PoolEmbed(), {{"broken": {{"name": "FaceBinDataset", "bin_path": {broken!r}}}}},
                      batch_size=8, rank=rank, world_size=world)
    except DataError as e:
        err = str(e)
    err2 = None
    try:  # the .bin is missing on rank 1 only (e.g. another node): rank 0 must not wait for it
        evaluate_sets(PoolEmbed(), {{"gone": {{"name": "FaceBinDataset", "bin_path": {a!r} + ("" if rank == 0 else ".gone")}}}},
                      rank=rank, world_size=world)
    except DataError as e:
        err2 = str(e)
    with open(os.path.join({out!r}, f"rank{{rank}}.json"), "w") as f:
        json.dump({{"res": res, "calls": model.calls, "images": model.images, "err": err, "err2": err2}}, f)
""")


def test_two_ranks_split_the_work(tmp_path):
    from dist_utils import launch

    make_bin(tmp_path / "a.bin", pairs=30, seed=4)
    make_bin(tmp_path / "b.bin", pairs=21, seed=5, noise=90.0)
    images, issame = make_bin(tmp_path / "ok.bin", pairs=12)
    images[20] = b"garbage"
    save_bin(str(tmp_path / "broken.bin"), images, issame)
    script = tmp_path / "run.py"
    script.write_text(DIST_SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, "tests"), a=str(tmp_path / "a.bin"),
                                         b=str(tmp_path / "b.bin"), broken=str(tmp_path / "broken.bin"),
                                         out=str(tmp_path)))
    launch([script], nproc=2, log_dir=tmp_path / "log")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    model = PoolEmbed()
    single = evaluate_sets(model, {"a": {"name": "FaceBinDataset", "bin_path": str(tmp_path / "a.bin")},
                                   "b": {"name": "FaceBinDataset", "bin_path": str(tmp_path / "b.bin")}},
                           batch_size=8)
    for r in ranks:
        assert r["res"] == json.loads(json.dumps(single))
        assert "broken.bin: image 20" in r["err"]
        assert "file not found" in r["err2"] and r["err2"].endswith("a.bin.gone")
    # 60 + 42 images (and their flips) split 30/30 and 21/21: never duplicated
    assert [r["images"] for r in ranks] == [2 * (30 + 21)] * 2
    assert sum(r["images"] for r in ranks) == model.images
    assert [r["calls"] for r in ranks] == [2 * (4 + 3)] * 2


def test_benchmark_script_runs(capsys):
    from tools.bench_eval import main  # the benchmark script (the tests' conftest puts the repository on sys.path)

    main(["--pairs", "20", "--ijb-images", "3000", "--dim", "16"])
    out = capsys.readouterr().out
    assert "10-fold protocol" in out and "IJB 1:N" in out and "img/s" in out
