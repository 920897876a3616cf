"""Does plsc's fine-tuning recipe beat naive fine-tuning on a domain shift, and does distillation help a
small student? Prints two tables (docs/finetune.md has the figures and this command).

    python tools/bench_finetune.py --out /tmp/bench_ft --seeds 0 1 2 [--shift mild]

Data (no download; plsc.demo.fontfaces: identity = a character rendered in matplotlib's fonts):
  source domain  the demo's renderings (light glyph on a dark background); pretraining identities
  target domain  other characters, inverted (dark glyph on light), low resolution (down to 20 px and back)
                 and blurred: few images per identity for fine-tuning; verification pairs of target-domain
                 characters seen neither in pretraining nor in fine-tuning measure the result.
Runs (each with plsc-train / plsc-eval in one process, 2 threads):
  pretrained     the source model as it is, on the target pairs
  naive          Global.pretrained_model + the same steps: random classifier, one learning rate, BN trains
  recipe         the same + Global.finetune: true (the FineTune section's defaults, or --recipe overrides)
  student        MobileFaceNet (reduced) trained on the source data, without and with Distill.teacher = the
                 pretrained IResNet, same steps, evaluated on unseen source-domain pairs
"""
import argparse
import json
import os
import subprocess
import sys
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CONFIG = os.path.join(ROOT, "configs", "demo", "IResNet_fontfaces.yaml")


def to_target(img, rng, shift="strong"):
    """Source rendering -> target domain: low resolution and blurred; the strong shift also inverts (a dark glyph
    on a light background, which the pretrained features do not carry over to)."""
    side = int(rng.integers(18, 24))
    small = cv2.resize(255 - img if shift == "strong" else img, (side, side), interpolation=cv2.INTER_AREA)
    out = cv2.resize(small, (112, 112), interpolation=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(out, (0, 0), float(rng.uniform(0.8, 1.6)))


def build_data(out, n_src, n_ft, n_eval, per_src, per_ft, pairs, shift="strong", source=True):
    """The sets under `out` (see the module's text); source=False leaves out the source domain's (src/ and
    source_val.bin), for a run that has its pretrained model already: the other sets are the same."""
    from plsc.data.bin import save_bin
    from plsc.demo.fontfaces import choose_characters, encode, font_files, render
    from plsc.demo.run import write_rec

    chars = choose_characters(font_files(), min_fonts=8)
    need = n_src + n_ft + n_eval
    if len(chars) < need:
        raise SystemExit(f"only {len(chars)} characters; asked for {need}")
    order = np.random.default_rng(0).permutation(len(chars))
    src, ft, ev = (order[:n_src], order[n_src:n_src + n_ft], order[n_src + n_ft:need])

    def images(ids, per, domain, stream):
        out = []
        for label, i in enumerate(ids):
            ch, faces = chars[i]
            rng = np.random.default_rng([stream, int(i)])
            for k in range(per):
                img = render(ch, faces[k % len(faces)], rng)
                out.append((label, encode(to_target(img, rng, shift) if domain == "target" else img)))
        return out

    def pair_bin(ids, domain, stream, path):
        rng = np.random.default_rng([stream, 99])
        imgs, same = [], []
        for p in range(pairs):
            s = p % 2 == 0
            a = int(rng.integers(len(ids)))
            b = a if s else int((a + rng.integers(1, len(ids))) % len(ids))
            for j in (a, b):
                ch, faces = chars[ids[j]]
                img = render(ch, faces[int(rng.integers(len(faces)))], rng)
                imgs.append(encode(to_target(img, rng, shift) if domain == "target" else img))
            same.append(s)
        save_bin(path, imgs, same)

    for name, ids, per, domain in (("src", src, per_src, "source"), ("ft", ft, per_ft, "target")):
        if domain == "source" and not source:
            continue
        os.makedirs(os.path.join(out, name), exist_ok=True)
        write_rec(os.path.join(out, name), images(ids, per, domain, 1 if domain == "source" else 2))
    pair_bin(ev, "target", 3, os.path.join(out, "target_val.bin"))
    if source:
        pair_bin(ev, "source", 4, os.path.join(out, "source_val.bin"))
    return len(src), len(ft)


def plsc(cmd, *args):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", f"from plsc.cli import {cmd}_main; {cmd}_main()", *args],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"plsc-{cmd} failed:\n{r.stderr[-3000:]}")
    return r


def common(data, rec, classes, val, model="IResNet18", arch="{layers: [1, 1, 1, 1], widths: [16, 32, 64, 128]}"):
    return ["-c", CONFIG, "-o", f"Model.name={model}", "-o", f"Model.arch_kwargs={arch}",
            "-o", f"Model.class_num={classes}", "-o", f"DataLoader.Train.dataset.root_dir={os.path.join(data, rec)}",
            "-o", f"DataLoader.Eval.dataset.0.bin_path={os.path.join(data, val)}", "-o", "Global.use_visualdl=false",
            "-o", "DataLoader.Train.loader.num_workers=1", "-o", "Model.pfc_config.model_parallel=false",
            "-o", "Loss.Train.0.MarginLoss.model_parallel=false", "-o", "Global.eval_during_train=false"]


def evaluate(ckpt, args_common, out):
    """Verification accuracy of the checkpoint on the config's one evaluation set (plsc-eval)."""
    plsc("eval", *args_common, "-o", f"Global.pretrained_model={ckpt}", "-o", f"Global.output_dir={out}")
    return eval_result(out)["acc"]


def eval_result(out):
    """The first evaluation set's results (acc, std, ...) that plsc-eval wrote under `out`."""
    for d, _, files in os.walk(out):
        if "eval_results.json" in files:
            with open(os.path.join(d, "eval_results.json")) as f:
                return next(iter(json.load(f).values()))
    raise SystemExit(f"plsc-eval wrote no eval_results.json under {out}")


def train(out, args_common, *overrides):
    flat = [a for o in overrides for a in ("-o", o)]
    plsc("train", *args_common, "-o", f"Global.output_dir={out}", "-o", "Global.overwrite=true", *flat)
    model = [o.split("=", 1)[1] for o in [*args_common, *overrides] if o.startswith("Model.name=")][-1]
    return os.path.join(out, model, "latest")


def summary(values):
    v = np.asarray(values)
    return f"{v.mean():.4f} ± {v.std():.4f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pretrain-epochs", type=int, default=6)
    p.add_argument("--ft-steps", type=int, default=40)
    p.add_argument("--student-epochs", type=int, default=3)
    p.add_argument("--recipes", nargs="+", default=[""], metavar="OVERRIDES",
                   help="recipe variants, each a space-separated list of -o overrides on top of Global.finetune: "
                        "true ('' = the FineTune defaults); one table row each")
    p.add_argument("--skip-distill", action="store_true")
    p.add_argument("--skip-finetune", action="store_true")
    p.add_argument("--reuse", action="store_true", help="keep the data and the pretrained model already in --out")
    p.add_argument("--shift", choices=["strong", "mild"], default="strong",
                   help="target domain: strong (inverted, low resolution, blurred: the pretrained features do not carry "
                        "over) or mild (low resolution and blurred, as the source renderings otherwise)")
    p.add_argument("--pretrained", help="a source-domain model pretrained by an earlier run (its .../IResNet18/latest); "
                                        "the data is rebuilt with the same seeds, so it is the same model")
    a = p.parse_args()
    data = os.path.join(a.out, "data")
    t0 = time.time()
    n_src, n_ft = 60, 40
    if not (a.reuse and os.path.isdir(data)):
        build_data(data, n_src=n_src, n_ft=n_ft, n_eval=30, per_src=24, per_ft=4, pairs=600, shift=a.shift)
    print(f"data ({a.shift} shift): {n_src} source identities x 24, {n_ft} target identities x 4, 600 target / source "
          f"pairs of 30 unseen characters ({time.time() - t0:.0f} s)", flush=True)
    src = common(data, "src", n_src, "target_val.bin")
    pre = a.pretrained or os.path.join(a.out, "pretrain", "IResNet18", "latest")
    if not a.pretrained and not (a.reuse and os.path.isdir(pre)):
        pre = train(os.path.join(a.out, "pretrain"), src, f"Global.epochs={a.pretrain_epochs}")
    ft = common(data, "ft", n_ft, "target_val.bin")
    base = evaluate(pre, ft, os.path.join(a.out, f"eval_pre_{time.time():.0f}"))
    variants = {("recipe " + r).strip(): r.split() for r in a.recipes}
    rows = {"pretrained": [base], "naive": [], **{k: [] for k in variants}}
    steps = [f"Global.pretrained_model={pre}", f"Global.max_train_step={a.ft_steps}", "Global.epochs=1000",
             "LRScheduler.warmup_epochs=0", "DataLoader.Train.sampler.batch_size=16", "LRScheduler.learning_rate=0.05"]
    for seed in ([] if a.skip_finetune else a.seeds):
        runs = [("naive", [])] + [(k, ["Global.finetune=true", *v]) for k, v in variants.items()]
        for i, (kind, extra) in enumerate(runs):
            out = os.path.join(a.out, f"ft{i}_{seed}")
            ck = train(out, ft, *steps, f"Global.seed={seed}", *extra)
            rows[kind].append(evaluate(ck, ft, os.path.join(out, "eval")))
            print(f"seed {seed} {kind}: {rows[kind][-1]:.4f}", flush=True)
    if not a.skip_finetune:
        print_finetune(rows, n_ft, a)
    if a.skip_distill:
        return
    distill(a, data, n_src, pre, t0)


def print_finetune(rows, n_ft, a):
    print(f"\nFine-tuning on a {a.shift} domain shift ({n_ft} target identities x 4 images, {a.ft_steps} steps of 16, "
          f"verification on 600 pairs of 30 unseen target-domain characters; seeds {a.seeds}):\n")
    print("| model | verification accuracy (mean ± std over seeds) |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {summary(v)} |")


def distill(a, data, n_src, pre, t0):
    mbf = ["Model.name=MobileFaceNet_base", "Model.arch_kwargs={blocks: [1, 1, 1, 1], scale: 1}",
           "Model.num_features=128"]
    srcv = common(data, "src", n_src, "source_val.bin", "MobileFaceNet_base", "{blocks: [1, 1, 1, 1], scale: 1}")
    teacher_acc = evaluate(pre, common(data, "src", n_src, "source_val.bin"), os.path.join(a.out, "eval_teacher"))
    kd = {"student alone": [], "student + teacher": []}
    for seed in a.seeds:
        for kind, extra in (("student alone", []), ("student + teacher", [f"Distill.teacher={pre}"])):
            out = os.path.join(a.out, f"kd_{kind.replace(' ', '_').replace('+', 'with')}_{seed}")
            ck = train(out, srcv, *mbf, f"Global.epochs={a.student_epochs}", f"Global.seed={seed}", *extra)
            kd[kind].append(evaluate(ck, srcv, os.path.join(out, "eval")))
            print(f"seed {seed} {kind}: {kd[kind][-1]:.4f}", flush=True)
    print(f"\nDistillation (teacher: the pretrained IResNet18, {teacher_acc:.4f}; student: MobileFaceNet reduced, "
          f"{a.student_epochs} epochs on the source data; 600 pairs of 30 unseen source-domain characters):\n")
    print("| student | verification accuracy (mean ± std over seeds) |\n|---|---|")
    for k, v in kd.items():
        print(f"| {k} | {summary(v)} |")
    print(f"\n({time.time() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
