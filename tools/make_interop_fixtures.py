"""Write the plsc-import test fixtures with the REAL frameworks and the REAL model code of each
source project (tests/fixtures/interop/), and run the full-size parity check.

    git -C <insightface> archive HEAD recognition/arcface_torch/{backbones,losses.py,partial_fc_v2.py,lr_scheduler.py} \
        | tar -x -C /tmp/x
    git -C <AdaFace> archive HEAD net.py head.py config.py utils.py | tar -x -C /tmp/x/AdaFace
    git -C <PLSC> archive HEAD plsc | tar -x -C /tmp/x/PLSC
    python3 -m venv /work/torchvenv && /work/torchvenv/bin/pip install torch==2.13.0 numpy
    /work/torchvenv/bin/pip install --no-deps pytorch-lightning lightning-utilities torchmetrics
    /work/torchvenv/bin/pip install pyyaml tqdm packaging fsspec    # (--no-deps: keeps torch 2.13 CPU)
    python tools/make_interop_fixtures.py --torch-python /work/torchvenv/bin/python \
        --arcface /tmp/x/recognition/arcface_torch --adaface /tmp/x/AdaFace --plsc /tmp/x/PLSC
    python tools/make_interop_fixtures.py ... --full      # real sizes, prints a parity table; writes nothing

Run with plsc's Python (it has paddle); the torch part (tools/interop_fixtures_torch.py) re-runs this
file under --torch-python, the PLSC part (tools/interop_fixtures_plsc.py) once per simulated rank.
torch is not a plsc dependency; nothing of the three projects is copied into plsc (their classes
are imported from the checkouts given as arguments).

ViTs keep head_dim >= 2 (embed_dim 16, 8 heads): Paddle Inference 3.3 returns NaN at batch 1 for a
FaceViT with head_dim 1 (plsc's own, no import involved), so plsc-export's parity check would fail.

Every fixture: build the source project's model class; make it small (constructor arguments where
the class takes them: IResNet `layers`, MobileFaceNet `blocks`/`scale`, ViT `embed_dim`/`depth`;
where widths are hard-coded, a torch model has every parameter and buffer cut to its first k
channels consistently, a PLSC model is built by PLSC's constructors with paddle.nn's layers
wrapped to map each channel count through the same table, and blocks are dropped from AdaFace's
`body`), so the source's own forward runs on a thinner net; give every BatchNorm random running
statistics and affine parameters, every PReLU and LayerNorm random parameters; save with the
framework's own saver (torch.save of the state_dict as arcface_torch's train_v2.py does, and a
save_all_states checkpoint_gpu_0.pt with arcface_torch's PartialFC_V2 / SGD / PolynomialLRWarmup
state; a real PyTorch Lightning checkpoint of a LightningModule holding AdaFace's net.py model and
head.py AdaFace head, with AdaFace's config.py hyper-parameters, after one lr-0 step; PLSC's own
Model.save for 2 simulated ranks -> <prefix>.pdparams + <prefix>_rank<r>.pdparams) and save the
source's eval-mode embeddings of deterministic images (uint8 RGB from numpy.random.default_rng(seed);
AdaFace is fed BGR as its inference.py does).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "interop")
SEED, N_IMAGES, CLASSES = 1234, 8, 10
# full width -> fixture width of every hard-coded channel count (64/128/256/512 and IResNet's fc input)
IRESNET_CUT = {64: 8, 128: 16, 256: 16, 512: 24, 512 * 49: 24 * 49}
MBF_CUT = {64: 8, 128: 16, 256: 32, 512: 64}  # MobileFaceNet width 64 -> 8 (inner 2w/4w/8w, neck 8w)
SAVE_ALL_CUT = {64: 4, 128: 8, 256: 8, 512: 8, 512 * 49: 8 * 49}  # the save_all_states file: weights x 2 (momentum)
ADA_CUT = {64: 8, 128: 12, 256: 16, 512: 24, 512 * 49: 24 * 49}
ADA_SE_CUT = {64: 16, 128: 20, 256: 24, 512: 32, 512 * 49: 32 * 49, 4: 1, 8: 1, 16: 1, 32: 2}  # + SE C/16


def images(seed=SEED, n=N_IMAGES):
    """uint8 RGB [n, 112, 112, 3] (the test regenerates them the same way)."""
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


def to_input(img, bgr=False):
    x = img[..., ::-1] if bgr else img
    return np.ascontiguousarray(((x.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2))


def cut_shape(shape, cut, override=None):
    return tuple(override) if override is not None else tuple(cut.get(n, n) for n in shape)


def run_plsc(args, name, world):
    for rank in range(world):
        env = dict(os.environ, PADDLE_TRAINER_ID=str(rank), PADDLE_TRAINERS_NUM=str(world), PYTHONPATH=args.plsc)
        cmd = [args.paddle_python, os.path.abspath(__file__), "--part", "plsc", "--plsc-model", name, "--plsc",
               args.plsc, "--out", args.out, "--tmp", args.tmp] + (["--full"] if args.full else [])
        subprocess.run(cmd, check=True, env=env, cwd=args.tmp)
    return np.load(os.path.join(args.tmp, f"{name}.emb.npy")), np.load(os.path.join(args.tmp, f"{name}.fc.npy"))


# ======================================================================== orchestration (plsc's Python)
def l2n(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rel_err(a, b):
    a, b = l2n(np.asarray(a, np.float64)), l2n(np.asarray(b, np.float64))
    return float(np.abs(a - b).max() / np.abs(b).max())


def plsc_embeddings(src):
    """The imported weights in plsc's model, eval mode, on the same images (always RGB)."""
    import paddle

    import plsc.models  # noqa: F401
    from plsc.registry import MODELS

    model = MODELS.build(src.model, num_features=src.num_features, arch_kwargs=src.arch_kwargs or None,
                         **src.model_options)
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in src.backbone.items()})
    model.eval()
    with paddle.no_grad():
        return model(paddle.to_tensor(to_input(images()))).numpy()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arcface", help="insightface recognition/arcface_torch checkout (backbones/, losses.py, "
                                      "partial_fc_v2.py, lr_scheduler.py)")
    ap.add_argument("--adaface", help="AdaFace checkout (net.py, head.py, config.py, utils.py)")
    ap.add_argument("--plsc", help="PaddlePaddle/PLSC checkout (its plsc/ package)")
    ap.add_argument("--torch-python", default=sys.executable, help="a Python with torch and pytorch_lightning")
    ap.add_argument("--paddle-python", default=sys.executable, help="a Python with paddle (default: this one)")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--full", action="store_true", help="real sizes; print the parity table, write no fixture")
    ap.add_argument("--part", choices=["torch", "plsc"], help=argparse.SUPPRESS)
    ap.add_argument("--plsc-model", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.part == "torch":
        from interop_fixtures_torch import torch_part

        results, meta = torch_part(args)
        np.savez(os.path.join(args.tmp, "torch_results.npz"), **results)
        with open(os.path.join(args.tmp, "torch_meta.json"), "w") as f:
            json.dump(meta, f)
        return 0
    if args.part == "plsc":
        from interop_fixtures_plsc import plsc_part

        return plsc_part(args)
    for need in ("arcface", "adaface", "plsc"):
        if not getattr(args, need):
            ap.error(f"--{need} is required")
    sys.path.insert(0, os.path.dirname(HERE))
    from plsc.interop import load_source

    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        cmd = [args.torch_python, os.path.abspath(__file__), "--part", "torch", "--arcface", args.arcface,
               "--adaface", args.adaface, "--out", args.out, "--tmp", tmp] + (["--full"] if args.full else [])
        subprocess.run(cmd, check=True)
        results = dict(np.load(os.path.join(tmp, "torch_results.npz")))
        meta = json.load(open(os.path.join(tmp, "torch_meta.json")))
        plsc_fixtures = {"plsc_r50": (2, {"model": "IResNet50"})} if args.full else {
            "plsc_iresnet_thin": (2, {"model": "IResNet18", "num_features": 8, "class_num": CLASSES,
                                      "arch_kwargs": {"layers": [1, 1, 1, 1], "widths": [8, 16, 16, 24]}}),
            "plsc_mbf_thin": (1, {"model": "MobileFaceNet_base", "num_features": 8, "class_num": CLASSES,
                                  "arch_kwargs": {"blocks": [1, 1, 1, 1], "scale": 1, "width": 8}}),
            "plsc_vit_small": (1, {"model": "FaceViT_tiny_patch9_112", "num_features": 8, "class_num": CLASSES,
                                   "arch_kwargs": {"embed_dim": 16, "depth": 1},
                                   "model_options": {"mask_ratio": 0.1}})}
        fcs = {}
        for name, (world, expect) in plsc_fixtures.items():
            results[name], fcs[name] = run_plsc(args, name, world)
            meta[name] = dict(expect, file=f"{name}.pdparams", format="plsc-pdparams", world_size=world)
            if args.full:
                meta[name]["path"] = os.path.join(tmp, f"{name}.pdparams")
        for name, emb in results.items():  # a degenerate net (same output for every image) would prove nothing
            spread = np.abs(l2n(emb) - l2n(emb)[:1]).max()
            assert spread > 1e-2, f"{name}: the embeddings of different images are nearly equal ({spread:.1e})"
        rows = []
        for name, m in meta.items():
            if name == "dtypes":
                continue
            src = load_source(m.get("path") or os.path.join(args.out, m["file"]))
            assert src.model == m["model"], (name, src.model, m["model"])
            if not args.full:
                assert src.arch_kwargs == m["arch_kwargs"], (name, src.arch_kwargs, m["arch_kwargs"])
                assert src.model_options == m.get("model_options", {}), (name, src.model_options)
            if name in fcs:
                assert np.array_equal(src.fc, fcs[name]), name
            err = rel_err(plsc_embeddings(src), results[name])
            rows.append((name, m["format"], src.model + (" " + json.dumps(src.arch_kwargs) if src.arch_kwargs else ""),
                         err))
        print(f"| source | format | plsc model | max rel. embedding error (L2-normalised, {N_IMAGES} images) |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2e} |")
        if not args.full:
            for name in fcs:
                results[f"{name}.fc"] = fcs[name]
            np.savez(os.path.join(args.out, "expected.npz"), **results)
            with open(os.path.join(args.out, "fixtures.json"), "w") as f:
                json.dump({"seed": SEED, "images": N_IMAGES, "fixtures": meta}, f, indent=1, sort_keys=True)
        assert max(r[3] for r in rows) < 1e-4, rows
    return 0


if __name__ == "__main__":
    sys.exit(main())
