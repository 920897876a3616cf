"""Does 16-bit class storage lose accuracy? The same recipe trained with Model.pfc_config.storage_dtype float32,
bfloat16 and float16 on a many-class set, over seeds; prints a table (docs/benchmarks.md has the figures).

    python tools/bench_storage.py --out /tmp/bench_storage --seeds 1 2 [--classes 1500 --per-class 10 --epochs 3]

Data (built here, no download): an identity is an ordered pair of characters ("bigram") rendered side by side
in one of matplotlib's fonts (plsc.demo.fontfaces' glyphs, with a random affine, blur, tint and noise per image),
so the 133 distinct characters give ~17k possible identities. Training uses --classes bigrams; verification
uses --pairs pairs of bigrams never trained on (half the same identity in two different fonts, half two
different identities), 10 folds as LFW.
Runs: plsc-train under `paddle.distributed.launch` on 2 ranks (classes sharded, PartialFC sampling
--sample-ratio), the demo config's recipe with the demo's quick IResNet18 ([1, 1, 1, 1] / [8, 16, 32, 64]), then plsc-eval of the last checkpoint.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from plsc.demo.fontfaces import perturb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tools.bench_finetune import eval_result, plsc  # noqa: E402  (a plsc command in a process; plsc-eval's results)
CONFIG = os.path.join(ROOT, "configs", "demo", "IResNet_fontfaces.yaml")
DTYPES = ("float32", "bfloat16", "float16")


def render_pair(a, b, font_path, rng, size=112):
    """One RGB uint8 image of the characters a, b side by side in the font, randomly perturbed (a little less
    than the demo's single characters)."""
    font = ImageFont.truetype(font_path, int(size * rng.uniform(0.5, 0.6)))
    canvas = Image.new("L", (size * 2, size * 2), 0)
    draw = ImageDraw.Draw(canvas)
    for ch, cx in ((a, size * 0.55), (b, size * 1.45)):
        left, top, right, bottom = draw.textbbox((0, 0), ch, font=font)
        draw.text((cx - (left + right) / 2, size - (top + bottom) / 2), ch, fill=255, font=font)
    glyph = cv2.resize(np.asarray(canvas, dtype=np.float32)[size // 2: size * 3 // 2], (size, size),
                       interpolation=cv2.INTER_AREA)
    return perturb(glyph, rng, angle=8.0, scale=(0.9, 1.08), shift=5.0, blur=1.0)


def build_data(out, classes, per_class, pairs, seed=0):
    from plsc.data.bin import save_bin
    from plsc.demo.fontfaces import choose_characters, encode, font_files
    from plsc.demo.run import write_rec

    chars = choose_characters(font_files(), min_fonts=8)
    grams = [(i, j) for i in range(len(chars)) for j in range(len(chars)) if i != j]
    grams = [g for g in grams if len(set(chars[g[0]][1]) & set(chars[g[1]][1])) >= 4]
    order = np.random.default_rng(seed).permutation(len(grams))
    if classes + 1000 > len(grams):
        raise SystemExit(f"{len(grams)} identities available; asked for {classes} + 1000 held out")
    train_ids, held = [grams[k] for k in order[:classes]], [grams[k] for k in order[classes:classes + 1000]]

    def fonts(g):
        return sorted(set(chars[g[0]][1]) & set(chars[g[1]][1]))

    def image(g, font, rng):
        return encode(render_pair(chars[g[0]][0], chars[g[1]][0], font, rng))

    train = []
    for label, g in enumerate(train_ids):
        rng, fs = np.random.default_rng([seed, 1, label]), fonts(g)
        train += [(label, image(g, fs[k % len(fs)], rng)) for k in range(per_class)]
    os.makedirs(out, exist_ok=True)
    write_rec(out, train)
    rng, imgs, same = np.random.default_rng([seed, 2]), [], []
    for p in range(pairs):
        s = p % 2 == 0
        a = int(rng.integers(len(held)))
        b = a if s else int((a + rng.integers(1, len(held))) % len(held))
        fa, fb = fonts(held[a]), fonts(held[b])
        ia = int(rng.integers(len(fa)))
        ib = int((ia + rng.integers(1, len(fb))) % len(fb)) if s else int(rng.integers(len(fb)))
        imgs += [image(held[a], fa[ia], rng), image(held[b], fb[ib], rng)]
        same.append(s)
    save_bin(os.path.join(out, "val.bin"), imgs, same)


def train_and_eval(a, data, storage, seed):
    run = os.path.join(a.out, f"{storage}_seed{seed}")
    shutil.rmtree(run, ignore_errors=True)
    over = [f"Model.class_num={a.classes}", f"DataLoader.Train.dataset.root_dir={data}",
            f"DataLoader.Eval.dataset.0.bin_path={os.path.join(data, 'val.bin')}", "Global.use_visualdl=false",
            f"Global.epochs={a.epochs}", f"Global.seed={seed}", f"Global.output_dir={run}",
            "Global.eval_during_train=false", f"Global.save_interval={a.epochs}", "Global.print_batch_step=20",
            "Model.arch_kwargs={layers: [1, 1, 1, 1], widths: [8, 16, 32, 64]}",
            f"Model.pfc_config.sample_ratio={a.sample_ratio}", f"Model.pfc_config.storage_dtype={storage}"]
    flat = [x for o in over for x in ("-o", o)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log_dir = os.path.join(run, "launch")
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", log_dir,
                        shutil.which("plsc-train"), "-c", CONFIG, *flat], capture_output=True, text=True, env=env)
    with open(os.path.join(log_dir, "workerlog.0"), errors="replace") as f:
        log = f.read()
    if r.returncode:
        raise SystemExit(f"plsc-train {storage} seed {seed} failed:\n{log[-3000:]}\n{r.stderr[-2000:]}")
    train_s = time.time() - t
    losses = [float(x) for x in re.findall(r"loss: ([-+0-9.eEnaif]+)", log)]
    plsc("eval", "-c", CONFIG, *flat, "-o", f"Global.pretrained_model={run}/IResNet18/latest",
         "-o", f"Global.output_dir={run}/eval")
    res = eval_result(os.path.join(run, "eval"))
    return {"acc": res["acc"], "std": res.get("std"), "loss": losses[-1], "train_s": train_s}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--storage", nargs="+", default=list(DTYPES), choices=DTYPES)
    p.add_argument("--classes", type=int, default=1500)
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--sample-ratio", type=float, default=0.2)
    p.add_argument("--reuse", action="store_true", help="keep the data already in --out")
    a = p.parse_args()
    data = os.path.join(a.out, "data")
    t0 = time.time()
    if not (a.reuse and os.path.isfile(os.path.join(data, "val.bin"))):
        build_data(data, a.classes, a.per_class, a.pairs)
    print(f"data: {a.classes} identities x {a.per_class} images, {a.pairs} verification pairs of held-out identities "
          f"({time.time() - t0:.0f} s)", flush=True)
    rows = {s: [] for s in a.storage}
    for seed in a.seeds:
        for s in a.storage:
            rows[s].append(train_and_eval(a, data, s, seed))
            r = rows[s][-1]
            print(f"seed {seed} {s}: acc {r['acc']:.4f} (fold std {r['std']:.4f}), last loss {r['loss']:.3f}, "
                  f"train {r['train_s']:.0f} s", flush=True)
    print(f"\n{a.classes} identities x {a.per_class} images, {a.epochs} epochs, 2 ranks, sample_ratio {a.sample_ratio}, "
          f"{a.pairs} pairs of held-out identities; seeds {a.seeds}:\n")
    print("| storage | verification acc per seed | mean ± std over seeds | fold std | last loss per seed |")
    print("|---|---|---|---|---|")
    for s, rs in rows.items():
        accs = np.array([r["acc"] for r in rs])
        folds = ", ".join(f"{r['std']:.3f}" for r in rs)
        loss = ", ".join(f"{r['loss']:.3f}" for r in rs)
        per_seed = ", ".join(f"{v:.4f}" for v in accs)
        print(f"| {s} | {per_seed} | {accs.mean():.4f} ± {accs.std():.4f} | {folds} | {loss} |")
    print(f"\n({time.time() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
