"""Pretrain the tiny source model that tests/test_finetune.py's recipe-vs-naive test fine-tunes.

    python tools/make_finetune_model.py                 # -> tests/fixtures/finetune/tiny_pretrained/
    python tools/make_finetune_model.py --out /tmp/m    # elsewhere (to compare with the committed one)

What the test ran itself before (about 50 s of its 80 on 2 cores), made the same way: tools/bench_finetune.py's
mild-shift data (build_data(n_src=30, n_ft=12, n_eval=12, per_src=16, per_ft=4, pairs=300, shift="mild"): the
source domain is 30 characters x 16 renderings), then one process of

    plsc-train -c configs/demo/IResNet_fontfaces.yaml <bench_finetune.common(data, "src", 30, "target_val.bin",
               arch="{layers: [1, 1, 1, 1], widths: [8, 16, 16, 32]}")> -o Model.num_features=32
               -o Global.epochs=6 -o DataLoader.Train.sampler.batch_size=16 -o Global.output_dir=<tmp>

(Global.seed 2024, the config's). Its checkpoint `latest` is kept without the optimizer files, which
Global.pretrained_model does not read (backbone.npz, fc_rank0.npz, state.json and a manifest rewritten for
them: 0.35 MB). The run is deterministic on CPU: two runs gave identical backbone bytes, and the test's
accuracies with this file are the ones it measured when it pretrained in the test (pretrained 0.747 on the
target pairs, naive 0.660, recipe 0.780).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
OUT = os.path.join(ROOT, "tests", "fixtures", "finetune", "tiny_pretrained")
TINY = "{layers: [1, 1, 1, 1], widths: [8, 16, 16, 32]}"
# the data both this tool and the test build (the test only its fine-tuning and target-domain sets)
DATA = dict(n_src=30, n_ft=12, n_eval=12, per_src=16, per_ft=4, pairs=300, shift="mild")
KEEP = ("backbone.npz", "fc_rank0.npz", "state.json")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=OUT)
    a = p.parse_args(argv)
    from plsc.io import checkpoint as ckpt
    from tools.bench_finetune import build_data, common

    work = tempfile.mkdtemp(prefix="plsc_finetune_model_")
    try:
        data = os.path.join(work, "data")
        build_data(data, **DATA)
        cmd = [sys.executable, "-c", "from plsc.cli import train_main; train_main()",
               *common(data, "src", DATA["n_src"], "target_val.bin", arch=TINY), "-o", "Model.num_features=32",
               "-o", "Global.epochs=6", "-o", "DataLoader.Train.sampler.batch_size=16",
               "-o", f"Global.output_dir={work}/pre"]
        r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
        if r.returncode:
            sys.exit(f"plsc-train failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        latest = os.path.join(work, "pre", "IResNet18", "latest")
        shutil.rmtree(a.out, ignore_errors=True)
        os.makedirs(a.out)
        for name in KEEP:
            shutil.copy(os.path.join(latest, name), os.path.join(a.out, name))
        ckpt.commit_existing(a.out, world_size=1)
        ckpt.verify(a.out)
        size = sum(os.path.getsize(os.path.join(a.out, n)) for n in os.listdir(a.out))
        print(f"{a.out}: {size / 1e6:.2f} MB; backbone.npz sha256 {ckpt.sha256_file(os.path.join(a.out, KEEP[0]))}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
