"""Hostile files: pickles that would run a command, object arrays in checkpoints, paths leaving the
output folder, outputs overwritten without --force. The command must never run (its marker file
stays absent) and each refusal names the file and what was refused."""
import json
import os
import pickle
import shlex

import cv2
import numpy as np
import pytest

from plsc.cli import data as cli
from plsc.data.bin import load_bin, save_bin
from plsc.io import checkpoint as ckpt
from plsc.errors import CheckpointError, DataError
from plsc.registry import DATASETS


def exit_code(main, argv):
    """A console script run in this process -> its exit code (0 returned, any other code through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


class RunsCommand:
    """Unpickling this would run `touch <marker>` through os.system."""

    def __init__(self, marker):
        self.cmd = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self):
        return os.system, (self.cmd,)


class CallsEval:
    def __init__(self, marker):
        self.code = f"open({str(marker)!r}, 'w').close()"

    def __reduce__(self):
        return eval, (self.code,)


def png(i):
    rng = np.random.default_rng(i)
    return cv2.imencode(".png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))[1].tobytes()


def _inst_pickle(marker):
    """Protocol 0 INST opcode: `i` module name, then the argument tuple (no REDUCE involved)."""
    return f"(S'touch {marker}'\nios\nsystem\n.".encode()


def hostile_bins(tmp_path):
    """(name, file bytes, marker path, refused global) for several ways a pickle can call a function."""
    out = []
    for proto in range(6):
        m = tmp_path / f"pwned_system_{proto}"
        out.append((f"os.system p{proto}", pickle.dumps(RunsCommand(m), protocol=proto), m, "posix.system"))
    m = tmp_path / "pwned_nested"  # hidden inside an otherwise valid (images, issame) pair
    out.append(("nested", pickle.dumps(([png(0), RunsCommand(m)], [True]), protocol=2), m, "posix.system"))
    m = tmp_path / "pwned_eval"
    out.append(("eval", pickle.dumps(([png(0), png(1)], CallsEval(m)), protocol=4), m, "builtins.eval"))
    m = tmp_path / "pwned_inst"
    out.append(("INST", _inst_pickle(m), m, "os.system"))
    return out


def test_malicious_bin_is_refused_and_the_command_never_runs(tmp_path):
    for name, data, marker, refused in hostile_bins(tmp_path):
        path = tmp_path / f"{name.replace(' ', '_')}.bin"
        path.write_bytes(data)
        with pytest.raises(DataError) as e:
            load_bin(str(path))
        msg = str(e.value)
        assert str(path) in msg and f"refused to load global '{refused}'" in msg, (name, msg)
        assert not marker.exists(), f"{name}: the command ran"


def test_malicious_bin_through_the_dataset_and_the_converter(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps(([png(0), png(1)], [RunsCommand(marker)]), protocol=2))
    with pytest.raises(DataError, match=r"lfw.bin: refused to load global 'posix.system'"):
        DATASETS.build("FaceBinDataset", bin_path=str(path), seed=0)
    assert not marker.exists()
    assert exit_code(cli.bin_convert_main, ["to-pairs", str(path), str(tmp_path / "pairs")]) == 2
    err = capsys.readouterr().err
    assert "lfw.bin" in err and "posix.system" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "pairs").exists()


def test_allowed_globals_cannot_be_turned_into_calls(tmp_path):
    """The numpy / _codecs / bytearray names a .bin may use are checking stand-ins: no object dtype (whose
    array data would be unpickled), no bare numpy.ndarray(huge shape), no codec but latin-1, no bytearray(n)."""
    marker = tmp_path / "pwned"
    cases = {
        "numpy dtype 'O": pickle.dumps(([png(0), png(1)], np.array([RunsCommand(marker)], dtype=object)), protocol=2),
        "calling numpy.ndarray directly": b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x40\x85R.",
        "encoding 'zlib'": b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.",
        "bytearray() of anything but bytes": b"\x80\x02cbuiltins\nbytearray\nJ\x00\x00\x00\x40\x85R.",
    }
    for refusal, data in cases.items():
        path = tmp_path / "x.bin"
        path.write_bytes(data)
        with pytest.raises(DataError) as e:
            load_bin(str(path))
        assert str(path) in str(e.value) and refusal in str(e.value), str(e.value)
        assert not marker.exists(), refusal
    # the legitimate forms still load: bytes, numpy bool flags, numpy uint8 image buffers
    path = tmp_path / "ok.bin"
    path.write_bytes(pickle.dumps(([np.frombuffer(png(0), np.uint8), png(1)], np.array([True])), protocol=2))
    images, issame = load_bin(str(path))
    assert images == [png(0), png(1)] and issame.tolist() == [True]


def list_dag(depth):
    """Opcodes of a list shared through the memo: L_i = [L_(i-1), L_(i-1)] (2**depth leaves in ~6 bytes a level)."""
    b = b"]q\x00(K\x00K\x00e"
    for i in range(1, depth + 1):
        b += b"0]q" + bytes([i]) + b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"e"
    return b


def tuple_dag(depth):
    """Opcodes of a tuple shared through the memo (hashing it visits 2**depth tuples)."""
    b = b"K\x00K\x00\x86q\x00"
    for i in range(1, depth + 1):
        b += b"0h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"\x86q" + bytes([i])
    return b


def test_shared_values_and_rewritten_names_in_a_bin_are_refused_at_once(tmp_path):
    """A few hundred bytes that would hang a reader that prints, hashes or converts what it read (a numpy shape or
    a dict key shared through the memo: 2**40 items), or BUILD state rewriting an allowed name: one DataError,
    naming the file, within a time and traced-memory bound."""
    from test_fuzz import bounded

    cases = {
        "shape": (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + list_dag(40) + b"U\x01b\x87R.",
                  "is not how numpy pickles an array"),
        "key": (b"\x80\x02}" + tuple_dag(60) + b"K\x01s.", "a dict key / set item that is not a string"),
        "flags": (b"\x80\x02]" + list_dag(40) + b"\x86.", "issame must be a flat list"),
        "build": (b"\x80\x02cnumpy\nndarray\n}X\x01\x00\x00\x00xK\x01sb.", "pickled state (BUILD) applied to numpy"),
        "dtype": (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f4\x89\x88\x87R(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff"
                  b"\xffJ\xff\xff\xff\xffK?tb.", "is not that of a plain <f4 dtype"),
    }
    for name, (data, refusal) in cases.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(data)
        with bounded(seconds=10), pytest.raises(DataError) as e:
            load_bin(str(path))
        msg = str(e.value)
        assert str(path) in msg and refusal in msg and len(msg) < 600, (name, msg)
    # 400 uint8 image arrays sharing one pickled 1 MiB bytes object: the bytes are charged per array, so a 1 MiB
    # file cannot become 400 MiB of images
    blob = b"B" + (1 << 20).to_bytes(4, "little") + bytes(1 << 20) + b"q\x000"  # BINBYTES, memo 0, POP
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R(K\x01J\x00\x00\x10\x00" \
            b"\x85cnumpy\ndtype\nX\x02\x00\x00\x00u1\x89\x88\x87R(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ" \
            b"\xff\xff\xff\xffK\x00tb\x89h\x00tb"  # numpy's pickle of a uint8 [1 MiB] array whose bytes are memo 0
    data = b"\x80\x02" + blob + b"(" + array * 400 + b"l](" + b"\x88" * 200 + b"e\x86."
    path = tmp_path / "amp.bin"
    path.write_bytes(data)
    assert len(data) < 2 << 20
    with bounded(160 << 20, seconds=10), pytest.raises(DataError, match=r"amp.bin: .*its arrays would take more than"):
        load_bin(str(path))
    # one image's bytes listed 200000 times (2 bytes each through the memo): each would be decoded again
    path.write_bytes(b"\x80\x02(" + b"B" + (10000).to_bytes(4, "little") + bytes(10000) + b"q\x00" +
                     b"h\x00" * 199999 + b"l](" + b"\x88" * 100000 + b"e\x86.")
    with pytest.raises(DataError, match=r"amp.bin: its 200000 images hold 2000000000 bytes in all, more than"):
        load_bin(str(path))


def test_checkpoint_object_array_is_refused_without_unpickling(tmp_path):
    """A checkpoint .npz whose array holds pickled objects: refused through load_arrays, also when the
    attacker rewrote the manifest to match (verification passes, loading still refuses)."""
    marker = tmp_path / "pwned"
    d = tmp_path / "latest"
    d.mkdir()
    np.savez(d / "backbone.npz", conv=np.zeros((2, 2), np.float32),
             evil=np.array([RunsCommand(marker)], dtype=object))
    (d / "state.json").write_text(json.dumps({"epoch": 1}))
    ckpt.commit_existing(str(d), 1)
    ckpt.verify(str(d))
    with pytest.raises(CheckpointError) as e:
        ckpt.load_arrays(str(d / "backbone.npz"))
    msg = str(e.value)
    assert "backbone.npz" in msg and "allow_pickle=False" in msg
    assert not marker.exists()
    # plain arrays still load, bit-exact
    ckpt.save_arrays(str(d / "ok.npz"), {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    np.testing.assert_array_equal(ckpt.load_arrays(str(d / "ok.npz"))["w"], np.arange(6).reshape(2, 3))


# ---------------------------------------------------------------- paths and --force

def _faces(root, n=3):
    for i in range(n):
        (root / f"id{i}").mkdir(parents=True)
        (root / f"id{i}" / "0.png").write_bytes(png(i))


def _files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.mark.parametrize("entry", ["../outside.png", "id0/../../outside.png", "/tmp/outside.png",
                                   "id0\\..\\..\\outside.png"])
def test_pack_rec_refuses_paths_leaving_the_root(tmp_path, capsys, entry):
    _faces(tmp_path / "faces")
    (tmp_path / "outside.png").write_bytes(png(9))
    label = tmp_path / "faces" / "label.txt"
    label.write_text(f"id0/0.png\t0\n{entry}\t1\n")
    assert exit_code(cli.pack_rec_main, [str(label), str(tmp_path / "rec"), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and repr(entry) in err
    assert not (tmp_path / "rec").exists() or _files_under(tmp_path / "rec") == []


def test_pack_rec_name_cannot_leave_the_output_folder(tmp_path, capsys):
    _faces(tmp_path / "faces")
    for name in ("../escaped", "/tmp/escaped", "sub/escaped", ".."):
        assert exit_code(cli.pack_rec_main, [str(tmp_path / "faces"), str(tmp_path / "out" / "rec"), "--name", name,
                              "--workers", "1"]) == 2
        assert "--name" in capsys.readouterr().err
    assert not any(p.name.startswith("escaped") for p in tmp_path.rglob("*"))


def test_pair_labels_with_escaping_paths_are_refused(tmp_path, capsys):
    pairs = tmp_path / "pairs"
    (pairs / "images").mkdir(parents=True)
    for i in range(2):
        (pairs / "images" / f"{i}.png").write_bytes(png(i))
    (tmp_path / "secret.png").write_bytes(png(5))
    for bad in ("../secret.png", "/etc/hostname"):
        (pairs / "label.txt").write_text(f"images/0.png\timages/1.png\t1\nimages/0.png\t{bad}\t0\n")
        assert exit_code(cli.bin_convert_main, ["to-bin", str(pairs), str(tmp_path / "out.bin")]) == 2
        assert repr(bad) in capsys.readouterr().err and not (tmp_path / "out.bin").exists()
        with pytest.raises(DataError, match="line 2"):
            DATASETS.build("FaceVerificationDataset", image_root=str(pairs),
                           cls_label_path=str(pairs / "label.txt"), seed=0)


def test_outputs_are_never_overwritten_without_force(tmp_path, capsys):
    """Every tool refuses an existing output and leaves its bytes as they were; --force replaces it."""
    _faces(tmp_path / "faces")
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "train.idx").write_text("precious\n")
    assert exit_code(cli.pack_rec_main, [str(tmp_path / "faces"), str(rec), "--workers", "1"]) == 2
    assert (rec / "train.idx").read_text() == "precious\n" and not (rec / "train.rec").exists()
    assert exit_code(cli.pack_rec_main, [str(tmp_path / "faces"), str(rec), "--workers", "1", "--force"]) == 0
    assert (rec / "train.idx").read_text() != "precious\n"

    out = tmp_path / "out"
    out.mkdir()
    (out / "label.txt").write_text("precious\n")
    assert exit_code(cli.unpack_rec_main, [str(rec), str(out)]) == 2
    assert (out / "label.txt").read_text() == "precious\n" and not (out / "images").exists()
    assert exit_code(cli.unpack_rec_main, [str(rec), str(out), "--force"]) == 0
    files = _files_under(out)
    assert "label.txt" in files and all(f == "label.txt" or f.startswith("images/") for f in files)

    save_bin(str(tmp_path / "v.bin"), [png(0), png(1)], [True])
    pairs = tmp_path / "pairs"
    (pairs / "images").mkdir(parents=True)
    assert exit_code(cli.bin_convert_main, ["to-pairs", str(tmp_path / "v.bin"), str(pairs)]) == 2
    assert os.listdir(pairs / "images") == []
    assert exit_code(cli.bin_convert_main, ["to-pairs", str(tmp_path / "v.bin"), str(pairs), "--force"]) == 0
    (tmp_path / "new.bin").write_bytes(b"precious")
    assert exit_code(cli.bin_convert_main, ["to-bin", str(pairs), str(tmp_path / "new.bin")]) == 2
    assert (tmp_path / "new.bin").read_bytes() == b"precious"
    assert exit_code(cli.bin_convert_main, ["to-bin", str(pairs), str(tmp_path / "new.bin"), "--force"]) == 0
    assert load_bin(str(tmp_path / "new.bin"))[0] == [png(0), png(1)]
    assert capsys.readouterr().err.count("--force") == 4


def test_force_never_writes_through_a_planted_symlink(tmp_path, capsys):
    """--force replaces outputs inside the folder; a symbolic link in the output pointing elsewhere
    (images/ -> another folder, train.rec.part -> a file) is refused and the target stays untouched."""
    _faces(tmp_path / "faces")
    assert exit_code(cli.pack_rec_main, [str(tmp_path / "faces"), str(tmp_path / "rec"), "--workers", "1"]) == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")

    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim, out / "images")
    assert exit_code(cli.unpack_rec_main, [str(tmp_path / "rec"), str(out), "--force"]) == 2
    assert "outside the output folder" in capsys.readouterr().err
    assert os.listdir(victim) == ["keep.txt"]

    save_bin(str(tmp_path / "v.bin"), [png(0), png(1)], [True])
    assert exit_code(cli.bin_convert_main, ["to-pairs", str(tmp_path / "v.bin"), str(out), "--force"]) == 2
    assert "outside the output folder" in capsys.readouterr().err and os.listdir(victim) == ["keep.txt"]

    os.symlink(victim / "keep.txt", tmp_path / "rec" / "train.rec.part")
    assert exit_code(cli.pack_rec_main,
                     [str(tmp_path / "faces"), str(tmp_path / "rec"), "--workers", "1", "--force"]) == 2
    assert "outside the output folder" in capsys.readouterr().err
    assert (victim / "keep.txt").read_text() == "precious"

    (tmp_path / "afile").write_text("x")  # an output "folder" that is a file: a DataError, not an OSError
    assert exit_code(cli.pack_rec_main, [str(tmp_path / "faces"), str(tmp_path / "afile"), "--workers", "1"]) == 2
    assert "cannot create output folder" in capsys.readouterr().err
