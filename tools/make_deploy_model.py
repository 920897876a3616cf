"""Train and export the small recognition model that tests/test_deploy_model.py runs plsc-embed with.

    python tools/make_deploy_model.py                       # -> tests/fixtures/deploy/fontfaces_model/
    python tools/make_deploy_model.py --out /tmp/m --epochs 2
    python tools/make_deploy_model.py --report-only         # the cosines below for the committed model

A real plsc model, made the way a user makes one: the font-face data of plsc-demo (identity = a character,
images = that character in matplotlib's fonts with random affine / blur / noise / tint), `plsc-train` on
configs/demo/IResNet_fontfaces.yaml (one process, PartialFC + ArcFace), `plsc-export` to ONNX. Only the
export's model.onnx and meta.json are kept (1.1 MB). It has never seen a face: what the tests
ask of it is that it responds to image content (a different face, a misaligned crop score lower) and so
can show whether detection + alignment give the same crop when a photo is rescaled, rotated or shifted.
At the end the cosines the test checks are printed for the new model (grace_hopper variants, controls).
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "deploy", "fontfaces_model")
CONFIG = os.path.join(ROOT, "configs", "demo", "IResNet_fontfaces.yaml")


def run(cmd):
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print(f"  {os.path.basename(cmd[0])} {cmd[1] if len(cmd) > 1 else ''}... {time.time() - t:.0f} s", flush=True)
    return proc.stdout


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=OUT)
    p.add_argument("--classes", type=int, default=80, help="training characters")
    p.add_argument("--images", type=int, default=24, help="images per character")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--features", type=int, default=64, help="embedding size")
    p.add_argument("--widths", default="8,16,32,64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-only", action="store_true", help="print the cosines for the model in --out")
    a = p.parse_args(argv)
    if a.report_only:
        return report(a.out)
    from plsc.demo.run import build_data

    work = tempfile.mkdtemp(prefix="plsc_deploy_model_")
    try:
        data = os.path.join(work, "data")
        classes = build_data(data, {"train_classes": a.classes, "val_classes": 30, "images_per_class": a.images,
                                    "pairs": 300}, a.seed)
        common = ["-c", CONFIG, "-o", f"Global.output_dir={work}/run", "-o", f"Model.class_num={classes}",
                  "-o", f"Model.num_features={a.features}",
                  "-o", f"Model.arch_kwargs={{layers: [1, 1, 1, 1], widths: [{a.widths}]}}",
                  "-o", "Model.pfc_config.model_parallel=False", "-o", "Loss.Train.0.MarginLoss.model_parallel=False",
                  "-o", f"DataLoader.Train.dataset.root_dir={data}", "-o", "Global.use_visualdl=False",
                  "-o", f"DataLoader.Eval.dataset.0.bin_path={data}/fontfaces_val.bin", "-o", f"Global.seed={a.seed}"]
        bindir = os.path.dirname(sys.executable)
        log = run([os.path.join(bindir, "plsc-train"), *common, "-o", f"Global.epochs={a.epochs}"])
        acc = [line for line in log.splitlines() if "mean acc" in line]
        ckpt = sorted(glob.glob(os.path.join(work, "run", "*", "latest")))[0]
        export = os.path.join(work, "export")
        run([os.path.join(bindir, "plsc-export"), *common, "-o", f"Global.pretrained_model={ckpt}",
             "-o", "Export.export_type=onnx", "-o", f"Export.export_dir={export}"])
        os.makedirs(a.out, exist_ok=True)
        for name in ("model.onnx", "meta.json"):
            shutil.copy(os.path.join(export, name), os.path.join(a.out, name))
        print(f"{a.out}: model.onnx {os.path.getsize(os.path.join(a.out, 'model.onnx')) / 1024:.0f} KB; "
              f"verification on unseen characters: {acc[-1].strip() if acc else '?'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(a.out)


def report(model_dir):
    """The cosines tests/test_deploy_model.py asserts on, for this model."""
    import cv2
    import matplotlib
    import numpy as np

    from plsc.deploy import Embedder
    from plsc.deploy.images import read_image

    gh = read_image(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))
    other = read_image(os.path.join(ROOT, "tests", "fixtures", "deploy", "astronaut_face.jpg"))
    h, w = gh.shape[:2]
    photos = {"orig": gh, "x0.5": cv2.resize(gh, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA),
              "x2": cv2.resize(gh, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)}
    for ang in (15, -15):
        photos[f"rot{ang:+d}"] = cv2.warpAffine(gh, cv2.getRotationMatrix2D((w / 2, h / 2), ang, 1.0), (w, h),
                                                borderMode=cv2.BORDER_REFLECT)
    photos["shift"] = cv2.warpAffine(gh, np.float64([[1, 0, 40], [0, 1, -30]]), (w, h), borderMode=cv2.BORDER_REFLECT)
    photos["astronaut"] = other
    r = Embedder(os.path.join(model_dir, "model.onnx")).embed(list(photos.values()))
    cos = r.embeddings @ r.embeddings[0]
    from plsc.metrics.align import align_face

    lmk = r.landmarks[0].astype(np.float64)
    c = lmk.mean(0)
    crops = {"rotation error 15 deg": align_face(gh, (lmk - c) @ cv2.getRotationMatrix2D((0, 0), 15, 1)[:, :2].T + c),
             "scale error 20 %": align_face(gh, (lmk - c) * 1.2 + c),
             "unaligned centre crop": cv2.resize(gh[100:350, 150:370], (112, 112), interpolation=cv2.INTER_AREA)}
    bad = Embedder(os.path.join(model_dir, "model.onnx"), align="crops").embed(list(crops.values())).embeddings
    print("cosine to the original's aligned crop:")
    for name, v in [*zip(photos, cos), *zip(crops, bad @ r.embeddings[0])]:
        print(f"  {name:<22} {v:.3f}")


if __name__ == "__main__":
    main()
