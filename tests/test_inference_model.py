"""plsc-eval and plsc-export build only the model (plsc.engine.inference_model.load_model: config, device,
backbone, weights), never the Trainer; "exported model or checkpoint?" has one answer (plsc.io.exported)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from test_train import ROOT, SMOKE

# What only training needs: none of it may be imported, let alone built, by plsc-eval / plsc-export.
TRAINING_ONLY = ["plsc.engine.engine", "plsc.engine.resume", "plsc.engine.watchdog", "plsc.engine.finetune",
                 "plsc.engine.distill", "plsc.engine.dp", "plsc.optim.optimizers", "plsc.optim.sparse",
                 "plsc.optim.lr", "plsc.nn"]

EVAL_AND_EXPORT = r"""
import json, sys
from plsc.env import setup_threads
setup_threads()
from plsc.config import load_config
from plsc.engine.commands import run_eval, run_export
common = sys.argv[2:]
results = run_eval(load_config(sys.argv[1], common))
run_export(load_config(sys.argv[1], common + ["Export.export_type=paddle", "Export.parity_check=false"]))
print(json.dumps({"loaded": sorted(m for m in sys.modules if m.startswith("plsc")), "results": results}))
"""


@pytest.fixture(scope="module")
def ema_checkpoint(tmp_path_factory):
    """A 3-step smoke run with an EMA section (its checkpoint holds ema.npz) and a small .bin eval set."""
    import cv2

    from plsc.cli import train_main
    from plsc.data.bin import save_bin

    base = tmp_path_factory.mktemp("run")
    with pytest.raises(SystemExit) as e:
        train_main(["-c", SMOKE, "-o", "Global.max_train_step=3", "-o", f"Global.output_dir={base / 'train'}",
                    "-o", "EMA={decay: 0.5, thres_steps: false}"])
        raise SystemExit(0)
    assert e.value.code in (0, None)
    rng = np.random.default_rng(3)
    images = [cv2.imencode(".png", rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))[1].tobytes()
              for _ in range(20)]
    save_bin(str(base / "pairs.bin"), images, [i % 2 == 0 for i in range(10)])  # 10 pairs: one per fold
    return base, base / "train" / "IResNet18" / "latest"


def test_eval_and_export_of_a_checkpoint_build_no_trainer(ema_checkpoint, tmp_path):
    base, latest = ema_checkpoint
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", EVAL_AND_EXPORT, SMOKE, f"Global.output_dir={out}",
                        f"Global.pretrained_model={latest}", "EMA={decay: 0.5, thres_steps: false}",
                        f"DataLoader.Eval.dataset={{name: FaceBinDataset, bin_path: {base / 'pairs.bin'}}}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    loaded = set(report["loaded"])
    assert not [m for m in TRAINING_ONLY if m in loaded or any(x.startswith(m + ".") for x in loaded)], loaded
    assert "plsc.engine.inference_model" in loaded and report["results"]["pairs"]["num_pairs"] == 10
    run_dir = out / "IResNet18"
    # the run directory holds what eval and export write, and nothing of a training run (no checkpoint, no
    # run state, no watchdog heartbeats, no train log)
    assert sorted(os.listdir(run_dir)) == ["eval.log", "eval_config.yaml", "eval_results.json",
                                           "eval_results.manifest.json", "export", "export.log",
                                           "export_config.yaml"]
    assert "EMA section: using the EMA weights" in (run_dir / "export.log").read_text()


def test_the_model_of_eval_holds_the_ema_weights_and_is_in_eval_mode(ema_checkpoint, tmp_path):
    from plsc.config import load_config
    from plsc.engine.inference_model import load_model

    _, latest = ema_checkpoint
    shadows = np.load(latest / "ema.npz")
    raw = np.load(latest / "backbone.npz")
    for ema, expect in (("EMA={decay: 0.5}", shadows), ("EMA.enabled=false", raw)):
        model = load_model(load_config(SMOKE, [f"Global.output_dir={tmp_path}", f"Global.pretrained_model={latest}",
                                               ema]), "eval")
        assert not model.backbone.training
        params = dict(model.backbone.named_parameters())
        for name in shadows.files:
            np.testing.assert_array_equal(params[name].numpy(), expect[name], err_msg=f"{ema}: {name}")
    assert any(not np.array_equal(shadows[n], raw[n]) for n in shadows.files)  # the two differ: the check means it


def test_exported_or_checkpoint_is_decided_once(tmp_path):
    from plsc.engine.commands import eval_run_dir
    from plsc.errors import CheckpointError
    from plsc.inference import resolve_model_path
    from plsc.io.exported import exported_format, is_exported

    export = tmp_path / "export"
    export.mkdir()
    (export / "inference.json").write_text("{}")
    ckpt_dir = tmp_path / "latest"
    ckpt_dir.mkdir()
    (tmp_path / "old.pdparams").write_bytes(b"")
    cases = {str(export): "paddle", str(export / "inference.json"): "paddle", str(tmp_path / "m.onnx"): "onnx",
             str(ckpt_dir): None, str(tmp_path / "old"): None, str(tmp_path / "missing"): None}
    for path, kind in cases.items():
        assert exported_format(path) == kind and is_exported(path) == (kind is not None), path
    cfg = {"Global": {"output_dir": str(tmp_path / "out")}, "Model": {"name": "IResNet18"}}
    assert eval_run_dir(cfg, str(export / "inference.json")) == str(export)  # results go beside the model
    assert eval_run_dir(cfg, str(ckpt_dir)) == str(tmp_path / "out" / "IResNet18")
    with pytest.raises(CheckpointError, match="missing inference.pdiparams"):
        resolve_model_path(str(export))  # the exported model's own check names what is missing
    with pytest.raises(CheckpointError, match="ONNX model not found"):
        resolve_model_path(str(tmp_path / "m.onnx"))
