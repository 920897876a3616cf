"""plsc-demo: build a small real dataset, train on 2 ranks, evaluate, export ONNX, plot, summarize.

    plsc-demo                      # ~10 minutes on 2 CPU cores; writes ./output/demo/
    plsc-demo --quick              # ~2 minutes: fewer identities, images and epochs (used by the tests)

The data needs no download: identity = one character, images = that character rendered in each
of the TrueType fonts matplotlib ships, with mild random affine / blur / noise / tint. Training
characters go to train.rec/train.idx (insightface's RecordIO layout, written by plsc's own
writer); characters never seen in training become a verification .bin of same / different pairs.
Training is `python -m paddle.distributed.launch --nproc_per_node=2 plsc-train` on
configs/demo/IResNet_fontfaces.yaml (model-parallel PartialFC + ArcFace); then plsc-eval and
plsc-export (ONNX with the parity check) run on the best checkpoint and the ONNX model is
evaluated again, so the summary shows the same accuracy from both.
"""
import json
import os
import re
import shutil
import sys
import time

import numpy as np

from plsc.demo.progress import run_with_progress
from plsc.errors import PlscError
from plsc.data.bin import save_bin
from plsc.data.recordio import IndexedRecordIOWriter, pack
from plsc.demo.fontfaces import build

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "configs", "demo", "IResNet_fontfaces.yaml")
FULL = {"train_classes": 100, "val_classes": 33, "images_per_class": 48, "pairs": 1000, "epochs": 4,
        "overrides": []}
QUICK = {"train_classes": 48, "val_classes": 30, "images_per_class": 16, "pairs": 300, "epochs": 3,
         "overrides": ["Model.arch_kwargs={layers: [1, 1, 1, 1], widths: [8, 16, 32, 64]}",
                       "Global.print_batch_step=2"]}
LOG_RE = re.compile(r"global_step (\d+) lr ([0-9.eE+-]+) loss: ([0-9.eE+-]+|nan|inf) .*ips: ([0-9.]+)")


def config_path():
    """The demo config: from the source tree, or packaged next to this module when installed."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "IResNet_fontfaces.yaml")
    for p in (CONFIG, here):
        if os.path.isfile(p):
            return p
    raise PlscError(f"demo config not found (looked for {CONFIG})")


def write_rec(out_dir, samples, name="train"):
    """insightface layout: record 0 = key range of images, then one range record per identity."""

    samples = sorted(samples, key=lambda s: s[0])
    labels = np.array([s[0] for s in samples])
    classes = labels.max() + 1
    n = len(samples)
    with IndexedRecordIOWriter(os.path.join(out_dir, f"{name}.idx"), os.path.join(out_dir, f"{name}.rec")) as w:
        w.write(0, pack([n + 1, n + 1 + classes], b""))
        for key, (label, jpeg) in enumerate(samples, 1):
            w.write(key, pack(float(label), jpeg, id=key))
        starts = 1 + np.searchsorted(labels, np.arange(classes + 1))
        for c in range(classes):
            w.write(n + 1 + c, pack([int(starts[c]), int(starts[c + 1])], b"", id=n + 1 + c))
    return n, int(classes)


def build_data(data_dir, spec, seed):
    os.makedirs(data_dir, exist_ok=True)
    t = time.time()
    train, val_images, issame, train_chars, val_chars = build(spec["train_classes"], spec["val_classes"],
                                                              spec["images_per_class"], spec["pairs"], seed=seed)
    n, classes = write_rec(data_dir, train)
    save_bin(os.path.join(data_dir, "fontfaces_val.bin"), val_images, issame)
    with open(os.path.join(data_dir, "characters.json"), "w") as f:
        json.dump({"train": train_chars, "val": val_chars}, f, ensure_ascii=False)
    print(f"[demo] data: {n} training images of {classes} characters -> {data_dir}/train.rec; "
          f"{len(issame)} verification pairs of {len(val_chars)} unseen characters -> fontfaces_val.bin "
          f"({time.time() - t:.0f} s)", flush=True)
    return classes


def _entry_script(out_dir, cmd):
    """A two-line script the launcher can run on every rank (works with or without console scripts)."""
    path = os.path.join(out_dir, f"_{cmd}_entry.py")
    with open(path, "w") as f:
        f.write(f"from plsc.cli.train import {cmd}_main\n{cmd}_main()\n")
    return path


def run(cmd, log_path, follow=None, label="run"):
    """Run a step of the demo, its progress on the terminal (plsc.demo.progress)."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)  # each rank picks cores / ranks
    return run_with_progress(cmd, log_path, follow=follow, label=label, env=env)


def parse_train_log(text):
    steps = {}
    for step, lr, loss, ips in LOG_RE.findall(text):
        steps[int(step)] = (float(lr), float(loss), float(ips))
    acc = [(int(s), float(a)) for s, a in re.findall(r"eval at global_step (\d+): mean acc ([0-9.]+)", text)]
    return steps, acc


def plot(out_dir, steps, acc):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted(steps)
    paths = []
    for name, values, ylabel in (("loss", [steps[s][1] for s in xs], "training loss"),
                                 ("lr", [steps[s][0] for s in xs], "learning rate")):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(xs, values)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, f"{name}.png"))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    if acc:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([a[0] for a in acc], [a[1] for a in acc], marker="o")
        ax.axhline(0.5, color="gray", ls="--", lw=1, label="chance")
        ax.set_xlabel("step")
        ax.set_ylabel("verification acc. (unseen)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "accuracy.png"))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


MARKER = ".plsc-demo"


def run_demo(out="./output/demo", quick=False, nproc=2, seed=0, force=False):
    """The whole demo into the folder `out` (see the module's text); -> 0."""
    spec = QUICK if quick else FULL
    out = os.path.abspath(out)
    if os.path.lexists(out) and not os.path.isdir(out):
        raise PlscError(f"{out} exists and is not a folder; choose another --out")
    if os.path.isdir(out) and os.listdir(out):
        if not any(os.path.isfile(os.path.join(out, n)) for n in ("summary.json", MARKER)):  # (an interrupted demo)
            raise PlscError(f"{out} is a folder that does not hold a demo run (no {MARKER}): not replaced, also "
                            f"with --force; choose another --out")
        if not force:
            raise PlscError(f"{out} already holds a demo run; pass --force to replace it or choose --out")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    with open(os.path.join(out, MARKER), "w") as f:
        f.write("written by plsc-demo: plsc-demo --force may replace this folder\n")
    t0 = time.time()
    data = os.path.join(out, "data")
    classes = build_data(data, spec, seed)
    cfg = config_path()
    common = ["-c", cfg, "-o", f"Global.output_dir={out}/run", "-o", f"Model.class_num={classes}",
              "-o", f"DataLoader.Train.dataset.root_dir={data}",
              "-o", f"DataLoader.Eval.dataset.0.bin_path={data}/fontfaces_val.bin"]
    for o in spec["overrides"]:
        common += ["-o", o]
    train_cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
                 "--log_dir", os.path.join(out, "launch_logs"), _entry_script(out, "train"), *common,
                 "-o", f"Global.epochs={spec['epochs']}"]
    t = time.time()
    run(train_cmd, os.path.join(out, "train_launcher.log"), follow=os.path.join(out, "launch_logs", "workerlog.0"),
        label="train")
    train_s = time.time() - t
    run_dir = os.path.join(out, "run", "IResNet18")
    with open(os.path.join(run_dir, "train.log")) as f:
        steps, acc = parse_train_log(f.read())
    best = os.path.join(run_dir, "best_model")
    ckpt = best if os.path.isdir(best) else os.path.join(run_dir, "latest")
    eval_out = run([sys.executable, _entry_script(out, "eval"), *common, "-o", f"Global.pretrained_model={ckpt}"],
                   os.path.join(out, "eval.log"), label="eval")
    export_dir = os.path.join(out, "export")
    run([sys.executable, _entry_script(out, "export"), *common, "-o", f"Global.pretrained_model={ckpt}",
         "-o", "Export.export_type=onnx", "-o", f"Export.export_dir={export_dir}"], os.path.join(out, "export.log"),
        label="export")
    onnx = [os.path.join(export_dir, f) for f in os.listdir(export_dir) if f.endswith(".onnx")][0]
    run([sys.executable, _entry_script(out, "eval"), *common, "-o", f"Global.pretrained_model={onnx}"],
        os.path.join(out, "eval_onnx.log"), label="eval onnx")
    with open(os.path.join(run_dir, "eval_results.json")) as f:
        ckpt_results = json.load(f)
    with open(os.path.join(os.path.dirname(onnx), "eval_results.json")) as f:
        onnx_results = json.load(f)
    plots = plot(out, steps, acc)
    ips = [v[2] for s, v in sorted(steps.items())[1:]] or [0.0]
    r, ro = ckpt_results["fontfaces_val"], onnx_results["fontfaces_val"]
    summary = {
        "identities": classes, "train_images": classes * spec["images_per_class"], "ranks": nproc,
        "steps": max(steps) if steps else 0, "first_loss": steps[min(steps)][1], "last_loss": steps[max(steps)][1],
        "accuracy": r["acc"], "accuracy_std": r["std"], "xnorm": r["xnorm"], "onnx_accuracy": ro["acc"],
        "images_per_sec": float(np.median(ips)), "train_seconds": train_s, "total_seconds": time.time() - t0,
        "checkpoint": ckpt, "onnx": onnx, "plots": plots, "eval_output": eval_out[-2000:],
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"""
[demo] summary
  data         {classes} identities, {summary['train_images']} training images; {len(r) and spec['pairs']} pairs of unseen characters
  training     {summary['steps']} steps on {nproc} ranks in {train_s:.0f} s, {summary['images_per_sec']:.1f} images/s,
               loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f}
  verification accuracy {r['acc']:.4f} +- {r['std']:.4f} (chance 0.5), XNorm {r['xnorm']:.2f}; ONNX model: {ro['acc']:.4f}
  files        {ckpt}
               {onnx}
               {', '.join(plots)}
  total        {summary['total_seconds']:.0f} s""", flush=True)
    return 0
