"""plsc-embed with a trained plsc model on a real photo: the aligned crop's embedding is stable when the photo
is rescaled, rotated or shifted, and clearly lower for a different face or a misaligned crop of the same one.

The model (tests/fixtures/deploy/fontfaces_model: model.onnx + meta.json, 64-d) is a small IResNet that
`plsc-train` trained on plsc-demo's font-face data and `plsc-export` exported; tools/make_deploy_model.py
makes it again. The other face is scikit-image's astronaut (Eileen Collins, NASA, public domain), a
256x256 crop of skimage/data/astronaut.png from the scikit-image 0.26.0 wheel, committed as
tests/fixtures/deploy/astronaut_face.jpg so that no test needs scikit-image.

And plsc-embed's memory on a 20,000 x 20,000 JPEG stays bounded (decoded at a reduced size).
"""
import os
import struct
import subprocess
import sys

import cv2
import matplotlib
import numpy as np

from plsc.deploy.images import read_image
from plsc.metrics.align import align_face

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "deploy")
MODEL = os.path.join(FIX, "fontfaces_model", "model.onnx")
GH = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
ASTRONAUT = os.path.join(FIX, "astronaut_face.jpg")


def plsc_embed(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "plsc-embed")
    proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def write(path, rgb):
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)


def test_trained_model_embeds_grace_hopper_alike_across_rescale_rotate_shift_and_others_lower(tmp_path):
    rgb = read_image(GH)
    h, w = rgb.shape[:2]
    photos = {"x0.5": cv2.resize(rgb, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA),
              "x2": cv2.resize(rgb, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC),
              "shift": cv2.warpAffine(rgb, np.float64([[1, 0, 40], [0, 1, -30]]), (w, h),
                                      borderMode=cv2.BORDER_REFLECT)}
    for a in (15, -15):
        photos[f"rot{a:+d}"] = cv2.warpAffine(rgb, cv2.getRotationMatrix2D((w / 2, h / 2), a, 1.0), (w, h),
                                              borderMode=cv2.BORDER_REFLECT)
    # misaligned 112x112 crops of the same photo (plsc-embed passes 112x112 images through as crops): what a
    # detector or alignment that got the rotation, the scale or the whole face wrong would have produced
    lmk = read_landmarks(tmp_path)
    c = lmk.mean(0)
    crops = {"rotation error 15 deg": align_face(rgb, (lmk - c) @ cv2.getRotationMatrix2D((0, 0), 15, 1)[:, :2].T + c),
             "scale error 20 %": align_face(rgb, (lmk - c) * 1.2 + c),
             "unaligned centre crop": cv2.resize(rgb[100:350, 150:370], (112, 112), interpolation=cv2.INTER_AREA)}
    files = [GH] + [write(tmp_path / f"{k}.png", im) for k, im in photos.items()] + [ASTRONAUT] + \
        [write(tmp_path / f"crop{i}.png", im) for i, im in enumerate(crops.values())]
    out = tmp_path / "emb.npz"
    plsc_embed(MODEL, *files, "--out", out)
    z = np.load(out)
    assert list(z["inputs"]) == files
    assert list(z["status"]) == ["face"] * 7 + ["crop"] * 3 and z["embeddings"].shape == (10, 64)
    cos = z["embeddings"] @ z["embeddings"][0]
    same, other, misaligned = cos[1:6], cos[6], dict(zip(crops, cos[7:]))
    report = {k: round(float(v), 3) for k, v in zip(["orig", *photos, "astronaut", *crops], cos)}
    assert same.min() >= 0.9, report
    # the model tells faces and crops apart: the same test would fail for a different face or a bad alignment
    assert other < same.min() - 0.1, report
    assert max(misaligned.values()) < 0.9 and max(misaligned.values()) < same.min() - 0.05, report


def read_landmarks(tmp_path):
    """The five points plsc-embed found on the original photo."""
    plsc_embed(MODEL, GH, "--out", tmp_path / "orig.npz")
    z = np.load(tmp_path / "orig.npz")
    assert list(z["status"]) == ["face"]
    return z["landmarks"][0].astype(np.float64)


def test_a_20000_by_20000_jpeg_is_embedded_with_bounded_memory(tmp_path):
    """A JPEG whose header says 20,000 x 20,000 (400 megapixels, 1.2 GB decoded): plsc-embed decodes it at 1/4
    size (under PLSC_MAX_PIXELS, 40 MP), finds no face in it, embeds the other photo, and its peak resident
    memory stays far under the full decode's (measured: 0.34 GB, vs 0.16 GB for the photo alone)."""
    ok, buf = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.find(b"\xff\xc0")
    assert ok and sof > 0 and struct.unpack(">HH", data[sof + 5: sof + 9]) == (16, 16)
    data[sof + 5: sof + 9] = struct.pack(">HH", 20000, 20000)  # height, width; the scan data stays short
    (tmp_path / "huge.jpg").write_bytes(bytes(data))
    exe = os.path.join(os.path.dirname(sys.executable), "plsc-embed")
    peak = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", peak, exe, MODEL, GH, str(tmp_path / "huge.jpg"), "--out",
                           str(tmp_path / "o.npz")], capture_output=True, text=True, timeout=300)
    code, maxrss_kb = map(int, proc.stdout.split()[-2:])
    assert code == 0, proc.stderr[-3000:]
    z = np.load(tmp_path / "o.npz")
    assert list(z["status"]) == ["face", "no_face"] and "huge.jpg: no face found" in proc.stderr
    assert maxrss_kb < 700 * 1024, maxrss_kb  # the 20000 x 20000 x 3 bytes alone would be 1.2 GB
