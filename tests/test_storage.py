"""16-bit class storage (Model.pfc_config.storage_dtype): the rounding promise, small updates kept,
2 ranks == 1 rank, unsampled rows untouched, shard files across dtypes and world sizes, float16 range."""
import os
import sys

import numpy as np
import paddle
import pytest

from dist_utils import launch
from plsc.errors import CheckpointError, ConfigError
from plsc.io import fc_shards
from plsc.nn import build_head
from plsc.nn.storage import FCStorageOverflow, RowStorage, round_stochastic
from plsc.optim.optimizers import build_sparse_optimizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import storage_worker as SW  # noqa: E402

SIXTEEN = ("bfloat16", "float16")


def _neighbours(x, dtype):
    """(lo, hi): the two values of `dtype` around each float32 x (lo == hi where x is representable)."""
    if dtype == "float16":
        y = x.astype(np.float16)
        down = np.where(np.abs(y.astype(np.float32)) > np.abs(x), np.nextafter(y, np.zeros_like(y)), y)
        away = np.nextafter(down, (np.sign(x) * np.inf).astype(np.float16))
        up = np.where(down.astype(np.float32) == x, down, away)
        return down.astype(np.float32), up.astype(np.float32)
    bits = x.view(np.uint32) & np.uint32(0xFFFF0000)
    down = bits.view(np.float32)
    up = np.where(down == x, down, (bits + np.uint32(0x10000)).view(np.float32))
    return down, up


@pytest.mark.parametrize("dtype", SIXTEEN)
def test_stochastic_rounding_picks_a_neighbour_with_the_right_odds(dtype):
    """Each value is stored as one of its two neighbours in the format, and as hi with probability (x - lo) / (hi - lo):
    over 400 draws the frequency is within 5 standard errors of it."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((6, 8)) * np.array([1e-3, 0.02, 1.0, 300.0, -5e-4, -7.0])[:, None]).astype(np.float32)
    lo, hi = _neighbours(x, dtype)
    draws = np.stack([round_stochastic(paddle.to_tensor(x), dtype, paddle.arange(6, dtype="int64"), salt)
                      .astype("float32").numpy() for salt in range(400)])
    assert ((draws == lo) | (draws == hi)).all()
    p = np.where(hi != lo, (x - lo) / np.where(hi != lo, hi - lo, 1), 0)  # lo: toward zero, hi: away from it
    frac = (draws == hi).mean(axis=0)
    assert (np.abs(frac - p) <= 5 * np.sqrt(p * (1 - p) / 400) + 1e-9).all()
    # the draws depend on (class, column, salt) only: the same class in another position rounds alike
    again = round_stochastic(paddle.to_tensor(x[::-1].copy()), dtype, paddle.arange(5, -1, -1, dtype="int64"), 7)
    assert np.array_equal(again.astype("float32").numpy()[::-1], draws[7])


@pytest.mark.parametrize("dtype", SIXTEEN)
def test_repeated_small_updates_are_not_lost(dtype):
    """1000 updates of +1e-4 to 1.0 (a bfloat16 step there is u = 2^-7, float16's 2^-10): round-to-nearest keeps
    1.0 every time; with stochastic rounding each value ends at 1.1 on average, with a standard deviation of
    u * sqrt(n p (1 - p)) (n = 1000 updates, p = 1e-4 / u): the mean of 128 values is within 5 of its standard errors."""
    store = RowStorage(dtype, first_class=40, seed=1)
    w = paddle.ones([3, 64], dtype=dtype)
    nearest = paddle.ones([1, 64], dtype=dtype)
    index = paddle.to_tensor([0, 2])
    for step in range(1000):
        store.put(w, index, store.get(w, index) + 1e-4, salt=step)
        nearest = (nearest.astype("float32") + 1e-4).astype(dtype)
    got = w.astype("float32").numpy()
    assert (nearest.astype("float32").numpy() == 1.0).all()  # what round-to-nearest does
    u = 2.0 ** (-7 if dtype == "bfloat16" else -10)
    p = 1e-4 / u
    sd = u * np.sqrt(1000 * p * (1 - p))
    assert abs(got[[0, 2]].mean() - 1.1) < 5 * sd / np.sqrt(128) and (got[1] == 1.0).all()


def _head(dtype, classes=300, ratio=0.05, dim=6, seed=9):
    head = build_head({"num_features": dim, "class_num": classes, "pfc_config": {
        "sample_ratio": ratio, "model_parallel": True, "storage_dtype": dtype}}, [{"MarginLoss": {"s": 30.0}}], seed=seed)
    head.set_optimizer(build_sparse_optimizer({"name": "Momentum", "momentum": 0.9, "weight_decay": 5e-4},
                                              head.weight, store=head.store))
    return head


def _train(head, steps=3, lr=0.1, seed=0):
    rng = np.random.default_rng(seed)
    used = np.zeros(head.num_local, bool)
    for _ in range(steps):
        x = paddle.to_tensor(rng.standard_normal((8, head.num_features)).astype(np.float32), stop_gradient=False)
        head(x, paddle.to_tensor(rng.integers(0, head.num_classes, 8))).backward()
        index = head.last_plan.index
        used[np.arange(head.num_local) if index is None else index.numpy()] = True
        head.step(lr)
        head.clear_sparse_grad()
    return used


@pytest.mark.parametrize("dtype", SIXTEEN)
def test_16_bit_storage_halves_the_bytes_keeps_unsampled_rows_and_follows_float32(dtype):
    head, ref = _head(dtype), _head("float32")
    assert head.weight.dtype == getattr(paddle, dtype) and head.optimizer.slots["momentum"].dtype == head.weight.dtype
    assert head.weight.element_size() == 2 and ref.weight.element_size() == 4
    w0, v0 = head.weight.numpy().copy(), head.optimizer.slots["momentum"].numpy().copy()
    used, used_ref = _train(head), _train(ref)
    assert np.array_equal(used, used_ref) and 0 < used.sum() < 300
    assert np.array_equal(head.weight.numpy()[~used], w0[~used]), "rows never sampled must keep their bits"
    assert np.array_equal(head.optimizer.slots["momentum"].numpy()[~used], v0[~used])
    # the sampled rows follow the float32 run to a few units of the format's relative step
    rel = 2.0 ** (-8 if dtype == "bfloat16" else -11)
    a, b = head.weight_float32()[used], ref.weight_float32()[used]
    assert np.abs(a - b).max() <= 8 * rel * np.abs(b).max()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("storage")
    launch([os.path.join(HERE, "storage_worker.py"), str(out)], nproc=2, log_dir=out / "log")
    one = out / "one"
    one.mkdir()
    for dtype in ("float32",) + SIXTEEN:
        SW.run(str(one), dtype)
    return out


@pytest.mark.parametrize("dtype", SIXTEEN)
def test_two_ranks_equal_one_rank_with_16_bit_storage(two_ranks, dtype):
    """Same losses (fp32 summation order) and the same stored rows: the rounding draws depend on the class,
    not on the shard, so they agree bit for bit except where fp32 sums differ across a rounding boundary."""
    ref = np.load(two_ranks / "one" / f"{dtype}_rank0.npz")
    ulp = np.abs(ref["weight"]) * 2.0 ** (-7 if dtype == "bfloat16" else -10) + 1e-7
    for r in range(2):
        d = np.load(two_ranks / f"{dtype}_rank{r}.npz")
        np.testing.assert_allclose(d["losses"], ref["losses"], rtol=1e-5)
        s, e = int(d["start"]), int(d["end"])
        assert (np.abs(d["weight"] - ref["weight"][s:e]) <= ulp[s:e]).all()
        assert (d["weight"] == ref["weight"][s:e]).mean() > 0.95


def test_shard_files_round_trip_across_storage_dtypes_and_world_sizes(two_ranks):
    """16-bit shards are written as stored (2 bytes a value), merge / split keep the bits, and load into heads of
    any world size and storage dtype: exactly into the same dtype or float32, rounded to nearest into 16 bits."""
    shards = {dt: [fc_shards.read(two_ranks / f"{dt}_fc_rank{r}.npz") for r in range(2)] for dt in ("float32",) + SIXTEEN}
    trained = {dt: np.concatenate([np.load(two_ranks / f"{dt}_rank{r}.npz")["weight"] for r in range(2)])
               for dt in shards}
    for dt, pair in shards.items():
        assert fc_shards.storage_dtype(pair[0]) == dt and pair[0]["weight"].itemsize == (4 if dt == "float32" else 2)
        assert pair[0]["momentum"].dtype == pair[0]["weight"].dtype
        merged = fc_shards.merge(pair)
        for part, again in zip(pair, fc_shards.split(merged, 2)):
            assert np.array_equal(part["weight"], again["weight"]) and np.array_equal(part["momentum"], again["momentum"])
        for target in ("float32",) + SIXTEEN:  # a 1-rank head reading the 2-rank shards
            head = _head(target, classes=SW.CLASSES, ratio=1.0, dim=SW.DIM)
            head.load_shards(pair)
            got = head.weight_float32()
            if target in (dt, "float32"):
                assert np.array_equal(got, trained[dt])
            else:
                assert np.array_equal(got, paddle.to_tensor(trained[dt]).astype(target).astype("float32").numpy())
            assert head.optimizer.num_steps == SW.STEPS
        for world in (3,):  # re-split to another world size: rows keep their bits
            three = fc_shards.split(merged, world)
            assert np.array_equal(np.concatenate([s["weight"] for s in three]), merged["weight"])


def test_an_older_reader_refuses_16_bit_shards_with_the_reason(tmp_path):
    head = _head("bfloat16", classes=20, ratio=1.0)
    shard = head.shard_state()
    assert int(shard["format_version"]) == 2 and int(_head("float32", classes=20, ratio=1.0).shard_state()["format_version"]) == 1
    with pytest.raises(CheckpointError, match="FC shard format 2 \\(rows stored as bfloat16\\); this plsc reads "
                                              "formats up to 1.*upgrade plsc"):
        fc_shards.check(shard, "fc_rank0.npz", reader_version=1)
    fc_shards.write(tmp_path / "f.npz", dict(shard, format_version=np.array(99)))
    with pytest.raises(CheckpointError, match="FC shard format 99"):
        fc_shards.read(tmp_path / "f.npz")


def test_float16_overflow_is_named_and_nothing_out_of_range_is_written():
    head = _head("float16", classes=20, ratio=1.0)
    with paddle.no_grad():
        head.weight[0:1] = paddle.full([1, 6], 65000.0).astype("float16")
    before = head.weight_float32()
    with pytest.raises(FCStorageOverflow, match="storage_dtype=float16.*left float16's range.*bfloat16"):
        _train(head, steps=1, lr=1e7)
    after = head.weight_float32()
    assert np.isfinite(after).all() and np.isfinite(head.optimizer.slots["momentum"].astype("float32").numpy()).all()
    assert (np.abs(after) <= 65504).all() and not np.array_equal(after, before)


def test_storage_dtype_config_errors():
    base = {"num_features": 7, "class_num": 10, "pfc_config": {"sample_ratio": 1.0, "model_parallel": True}}
    with pytest.raises(ConfigError, match="storage_dtype=bfloat16 needs an even Model.num_features"):
        build_head(dict(base, pfc_config=dict(base["pfc_config"], storage_dtype="bfloat16")), [{"MarginLoss": {}}])
    with pytest.raises(ConfigError, match="storage_dtype='int8'"):
        build_head(dict(base, pfc_config=dict(base["pfc_config"], storage_dtype="int8")), [{"MarginLoss": {}}])


def test_training_saves_16_bit_shards_resumes_as_float32_and_float16_overflow_stops_with_a_checkpoint(tmp_path):
    """Through plsc-train: a bfloat16 run writes 2-byte rows (weight + momentum: 4 x D bytes per class), resumes
    with float32 storage; a float16 run whose rows leave float16's range stops (exit 2, the key named) after
    saving a checkpoint with finite rows."""
    from test_train import SMOKE, losses, plsc

    a = plsc("train", "-c", SMOKE, "-o", f"Global.output_dir={tmp_path / 'a'}", "-o", "Global.max_train_step=3",
             "-o", "Model.pfc_config.storage_dtype=bfloat16", "-o", "Model.pfc_config.sample_num=8")
    assert np.isfinite(list(losses(a.stdout).values())).all()
    latest = tmp_path / "a" / "IResNet18" / "latest"
    shard = fc_shards.read(latest / "fc_rank0.npz")
    assert fc_shards.storage_dtype(shard) == "bfloat16" and shard["weight"].dtype == np.uint16
    assert shard["weight"].nbytes + shard["momentum"].nbytes == 4 * 32 * 16
    from plsc.cli.data import fc_shards_main as shards_main  # plsc-fc-shards keeps the 16-bit rows as they are
    assert shards_main(["split", str(latest), "--world-size", "2", "--out", str(tmp_path / "w2")]) == 0
    halves = [fc_shards.read(tmp_path / "w2" / f"fc_rank{r}.npz") for r in range(2)]
    assert all(fc_shards.storage_dtype(h) == "bfloat16" for h in halves)
    assert np.array_equal(np.concatenate([h["weight"] for h in halves]), shard["weight"])
    assert shards_main(["merge", str(tmp_path / "w2"), "--out", str(tmp_path / "full.npz")]) == 0
    assert np.array_equal(fc_shards.read(tmp_path / "full.npz")["momentum"], shard["momentum"])
    b = plsc("train", "-c", SMOKE, "-o", f"Global.output_dir={tmp_path / 'b'}", "-o", "Global.max_train_step=5",
             "-o", f"Global.checkpoint={latest}")
    assert sorted(losses(b.stdout)) == [4, 5]
    assert fc_shards.storage_dtype(fc_shards.read(tmp_path / "b" / "IResNet18" / "latest" / "fc_rank0.npz")) == "float32"
    c = plsc("train", "-c", SMOKE, "-o", f"Global.output_dir={tmp_path / 'c'}", "-o", "Global.max_train_step=3",
             "-o", "Model.pfc_config.storage_dtype=float16", "-o", "LRScheduler.learning_rate=1.0e+9",
             "-o", "Optimizer.grad_clip=null", check=False)
    assert c.returncode == 2 and "storage_dtype=float16" in c.stderr and "Traceback" not in c.stderr
    saved = fc_shards.read(tmp_path / "c" / "IResNet18" / "latest" / "fc_rank0.npz")
    assert np.isfinite(saved["weight"]).all() and np.isfinite(saved["momentum"]).all()


def test_dense_update_of_every_row_with_16_bit_storage_follows_float32():
    """sparse_update false (PLSC's dense update): every row's momentum decays each step; with bfloat16 storage the
    rows follow the float32 run to the format's rounding."""
    heads = {}
    for dtype in ("float32", "bfloat16"):
        head = build_head({"num_features": 6, "class_num": 40, "pfc_config": {
            "sample_ratio": 0.25, "model_parallel": True, "storage_dtype": dtype}}, [{"MarginLoss": {"s": 30.0}}], seed=2)
        head.set_optimizer(build_sparse_optimizer({"name": "Momentum", "momentum": 0.9, "weight_decay": 5e-4},
                                                  head.weight, every_row=True, store=head.store))
        used = _train(head, steps=3)
        heads[dtype] = head
    assert not used.all()
    v = {d: h.optimizer.slots["momentum"].astype("float32").numpy() for d, h in heads.items()}
    assert (v["bfloat16"] != 0).all(axis=1)[~used].any()  # unsampled rows' momentum decayed (weight decay)
    a, b = heads["bfloat16"].weight_float32(), heads["float32"].weight_float32()
    assert np.abs(a - b).max() <= 8 * 2.0 ** -8 * np.abs(b).max()


@pytest.mark.parametrize("dtype", ("float32", "bfloat16"))
def test_shard_files_stream_in_blocks_and_map_their_rows(tmp_path, monkeypatch, dtype):
    """A shard moves between the tensors and its file a block of rows at a time (at 10M classes a second
    full-size copy of the rows does not fit): save reads the tensors block by block, `read` maps the row
    arrays of the file, load fills the tensors block by block; np.load still reads the file."""
    monkeypatch.setattr(fc_shards, "BLOCK_ROWS", 64)
    monkeypatch.setattr(fc_shards, "_MAP_BYTES", 1024)
    head = _head(dtype, classes=300, ratio=0.1, dim=8)
    _train(head, steps=2)
    shard = head.shard_state()
    asked = []
    read = shard["weight"]._read
    shard["weight"]._read = lambda a, b: asked.append(b - a) or read(a, b)
    fc_shards.write(tmp_path / "s.npz", shard)
    assert asked and max(asked) == 64 and sum(asked) == 300  # never more than one block of rows at a time
    got = fc_shards.read(tmp_path / "s.npz")
    assert isinstance(got["weight"], np.memmap) and isinstance(got["momentum"], np.memmap)
    with np.load(tmp_path / "s.npz") as z:
        assert np.array_equal(z["weight"], np.asarray(shard["weight"])) and int(z["optimizer_steps"]) == 2
    twin = _head(dtype, classes=300, ratio=0.1, dim=8, seed=1)
    twin.load_shards([got])
    assert np.array_equal(twin.weight_float32(), head.weight_float32())
    assert np.array_equal(twin.optimizer.slots["momentum"].astype("float32").numpy(),
                          head.optimizer.slots["momentum"].astype("float32").numpy())
    assert twin.optimizer.num_steps == 2 and twin.draws == head.draws
    del got  # (a mapped file is not cut under its map)
    with open(tmp_path / "s.npz", "r+b") as f:  # a file cut inside its rows is named, not mapped past its end
        f.truncate(os.path.getsize(tmp_path / "s.npz") // 2)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        fc_shards.read(tmp_path / "s.npz")
