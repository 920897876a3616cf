"""plsc-pack-rec / plsc-unpack-rec / plsc-bin-convert / plsc-inspect-rec through their entries (plsc.cli.data)."""
import os
import subprocess
import sys

import cv2
import numpy as np

from plsc.cli import data as cli
from plsc.data.bin import load_bin, save_bin
from plsc.registry import DATASETS


def exit_code(main, argv):
    """A console script run in this process -> its exit code (0 returned, any other code through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def image(i):
    rng = np.random.default_rng(100 + i)
    return cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (112, 112), interpolation=cv2.INTER_LINEAR)


def make_folder(root, per_id=(2, 3, 1)):
    truth = {}
    for c, n in enumerate(per_id):
        os.makedirs(root / f"id{c}")
        for j in range(n):
            i = len(truth)
            cv2.imwrite(str(root / f"id{c}/{j}.png"), image(i))
            truth[f"id{c}/{j}.png"] = (c, i)
    return truth


def decoded(ds, i):
    return ds[i][0], int(ds[i][1])


def test_pack_folder_then_read_gives_every_image_and_label(tmp_path, capsys):
    truth = make_folder(tmp_path / "faces")
    assert exit_code(cli.pack_rec_main, [str(tmp_path / "faces"), str(tmp_path / "rec"), "--workers", "2"]) == 0
    ds = DATASETS.build("FaceRecordIODataset", root_dir=str(tmp_path / "rec"),
                        transform_ops=[{"DecodeImage": {"to_rgb": False}}, {"NormalizeImage": {"scale": 1.0, "mean": [0] * 3, "std": [1] * 3}},
                                       {"ToCHWImage": None}], seed=0)
    assert ds.layout == "insightface" and ds.num_classes == 3 and len(ds) == 6
    lst = [line.split("\t") for line in open(tmp_path / "rec/train.lst").read().splitlines()]
    for i, (key, label, rel) in enumerate(lst):
        img, lab = decoded(ds, i)
        assert int(key) == i + 1 and lab == int(label) == truth[rel][0]
        np.testing.assert_array_equal(img.transpose(1, 2, 0).astype(np.uint8), image(truth[rel][1]))  # PNG: lossless
    assert exit_code(cli.inspect_rec_main, [str(tmp_path / "rec")]) == 0
    out = capsys.readouterr().out
    assert "classes: 3" in out and "images:  6" in out and "112x112" in out
    # existing output refused without --force, accepted with it
    assert exit_code(cli.pack_rec_main, [str(tmp_path / "faces"), str(tmp_path / "rec")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert exit_code(cli.pack_rec_main, [str(tmp_path / "faces"), str(tmp_path / "rec"), "--force", "--encode", "jpg",
                          "--quality", "90", "--workers", "1"]) == 0


def test_pack_label_file_unpack_round_trip_and_bad_paths(tmp_path, capsys):
    truth = make_folder(tmp_path / "faces", per_id=(1, 2))
    label = tmp_path / "faces/label.txt"
    label.write_text("".join(f"{rel}\t{c}\n" for rel, (c, _) in truth.items()))
    assert exit_code(cli.pack_rec_main, [str(label), str(tmp_path / "rec"), "--workers", "1"]) == 0
    assert exit_code(cli.unpack_rec_main, [str(tmp_path / "rec"), str(tmp_path / "out")]) == 0
    ds = DATASETS.build("FaceIdentificationDataset", image_root=str(tmp_path / "out"),
                        cls_label_path=str(tmp_path / "out/label.txt"), transform_ops=None, seed=0)
    packed = sorted(truth.items(), key=lambda kv: kv[1])
    for i, (rel, (c, idx)) in enumerate(packed):  # unpack keeps the stored bytes: same files as packed
        assert int(ds[i][1]) == c
        assert open(ds.images[i], "rb").read() == open(tmp_path / "faces" / rel, "rb").read()
    assert exit_code(cli.unpack_rec_main, [str(tmp_path / "rec"), str(tmp_path / "out")]) == 2
    # a label.txt may not point outside its root
    label.write_text("id0/0.png\t0\n../escape.png\t1\n")
    assert exit_code(cli.pack_rec_main, [str(label), str(tmp_path / "rec2")]) == 2
    assert "'..'" in capsys.readouterr().err and not os.path.exists(tmp_path / "rec2/train.rec")
    # an undecodable image names its path
    (tmp_path / "faces/id0/bad.jpg").write_bytes(b"\xff\xd8\xffjunk")
    label.write_text("id0/0.png\t0\nid0/bad.jpg\t1\n")
    assert exit_code(cli.pack_rec_main, [str(label), str(tmp_path / "rec2"), "--workers", "2"]) == 2
    assert "bad.jpg" in capsys.readouterr().err and not os.listdir(tmp_path / "rec2")


def test_inspect_reports_first_bad_record(tmp_path, capsys):
    make_folder(tmp_path / "faces")
    exit_code(cli.pack_rec_main, [str(tmp_path / "faces"), str(tmp_path / "rec"), "--workers", "1"])
    idx = dict(line.split("\t") for line in open(tmp_path / "rec/train.idx").read().splitlines())
    data = bytearray(open(tmp_path / "rec/train.rec", "rb").read())
    o = int(idx["3"])
    data[o + 8 + 24:o + 8 + 40] = b"\0" * 16  # corrupt the PNG signature of key 3
    open(tmp_path / "rec/train.rec", "wb").write(data)
    assert exit_code(cli.inspect_rec_main, [str(tmp_path / "rec")]) == 1
    assert "first bad record: " in (out := capsys.readouterr().out) and "key 3: the image cannot be decoded" in out


def test_bin_to_pairs_to_bin_round_trip(tmp_path, capsys):
    imgs = [cv2.imencode(".jpg", image(i))[1].tobytes() for i in range(4)] + \
           [cv2.imencode(".png", image(i))[1].tobytes() for i in range(4, 6)]
    issame = [True, False, True]
    save_bin(str(tmp_path / "lfw.bin"), imgs, issame)
    assert exit_code(cli.bin_convert_main,
                     ["to-pairs", str(tmp_path / "lfw.bin"), str(tmp_path / "pairs"), "--flip"]) == 0
    lines = open(tmp_path / "pairs/label.txt").read().splitlines()
    assert lines[0] == "images/00000000_0.jpg\timages/00000000_1.jpg\t1" and len(lines) == 6
    assert lines[5] == "images/00000002_0_hflip.png\timages/00000002_1_hflip.png\t1"
    flipped = cv2.imread(str(tmp_path / "pairs/images/00000002_0_hflip.png"))
    np.testing.assert_array_equal(flipped, cv2.flip(image(4), 1))
    ds = DATASETS.build("FaceVerificationDataset", image_root=str(tmp_path / "pairs"),
                        cls_label_path=str(tmp_path / "pairs/label.txt"), seed=0)
    assert len(ds) == 6 and list(ds.issame) == issame, "PLSC's --flip_test layout: the mirrors are not more pairs"
    assert len(ds.mirrors) == 6 and ds.mirrors[4].endswith("00000002_0_hflip.png")
    assert exit_code(cli.bin_convert_main,
                     ["to-bin", str(tmp_path / "pairs"), str(tmp_path / "back.bin"), "--drop-hflip"]) == 0
    back, same = load_bin(str(tmp_path / "back.bin"))
    assert back == imgs and list(same) == issame
    assert exit_code(cli.bin_convert_main, ["to-bin", str(tmp_path / "pairs"), str(tmp_path / "back.bin")]) == 2
    assert exit_code(cli.bin_convert_main, ["to-pairs", str(tmp_path / "lfw.bin"), str(tmp_path / "pairs")]) == 2
    assert "--force" in capsys.readouterr().err


def test_tools_run_as_modules(tmp_path):
    r = subprocess.run([sys.executable, "-m", "plsc.cli", "inspect-rec", str(tmp_path / "missing")],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 2 and "record file not found" in r.stderr and "missing" in r.stderr


def test_pack_refuses_empty_identity_and_reports_ignored_files(tmp_path, capsys):
    make_folder(tmp_path / "faces")
    first = sorted(os.listdir(tmp_path / "faces"))[0]
    (tmp_path / "faces" / first / "notes.txt").write_text("x")
    assert exit_code(cli.pack_rec_main, [str(tmp_path / "faces"), str(tmp_path / "rec")]) == 0
    assert "ignored 1 non-image entries" in capsys.readouterr().err
    os.makedirs(tmp_path / "faces" / "zz_empty")
    assert exit_code(cli.pack_rec_main, [str(tmp_path / "faces"), str(tmp_path / "rec2")]) == 2
    assert "zz_empty: identity folder without images" in capsys.readouterr().err
