"""Every model-zoo config builds exactly its named backbone and margin and trains 2 steps (real sizes).

The dataset is swapped for FaceRandomDataset (via -o, as a user would) and class_num reduced; the
backbone keeps its real architecture, so this also checks the configs against the registry.
"""
import glob
import os

import numpy as np
import pytest

from plsc.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*", "*.yaml"))
             if not any(os.sep + d + os.sep in p for d in ("_base_", "smoke", "demo")))


def _expected(path):
    """(model name, loss name) that the file name promises."""
    name = os.path.basename(path)
    model = name.split("_")[0] if not name.startswith("AdaFace_") else name.split("_")[1]
    if model.startswith("FaceViT") or model.startswith("MobileFaceNet"):
        model = "_".join(name.split("_")[:2]) if model.startswith("MobileFaceNet") else "_".join(name.split("_")[:4])
    loss = "AdaFaceLoss" if name.startswith("AdaFace_") else "MarginLoss"
    return model, loss


def test_zoo_has_the_seed_rows():
    names = {os.path.basename(p) for p in ZOO}
    for want in ("IResNet50_MS1MV3_ArcFace_pfc10", "IResNet100_WebFace42M_CosFace_pfc02",
                 "MobileFaceNet_base_WebFace42M_CosFace_pfc02", "FaceViT_tiny_patch9_112_WebFace42M_CosFace_pfc10",
                 "FaceViT_tiny_patch9_112_WebFace42M_CosFace_pfc02", "FaceViT_base_patch9_112_WebFace42M_CosFace_pfc03",
                 "AdaFace_IResNet50_CASIA", "AdaFace_IResNet100_MS1MV2"):
        assert any(n.startswith(want) for n in names), want


@pytest.mark.parametrize("path", ZOO, ids=lambda p: os.path.basename(p)[:48])
def test_zoo_config_trains_two_steps(path, tmp_path):
    from plsc.engine.engine import Trainer

    overrides = [f"Global.output_dir={tmp_path}", "Global.max_train_step=2", "Global.eval_during_train=false",
                 "Global.use_visualdl=false", "Global.print_batch_step=1", "Model.class_num=50",
                 "DataLoader.Train.dataset={name: FaceRandomDataset, num_classes: 50, num_samples: 8}",
                 "DataLoader.Train.sampler.batch_size=2", "DataLoader.Train.loader.num_workers=0"]
    cfg = load_config(path, overrides)
    model, loss = _expected(path)
    assert cfg["Model"]["name"] == model
    assert list(cfg["Loss"]["Train"][0]) == [loss]
    engine = Trainer(cfg)
    assert not cfg["Model"]["arch_kwargs"], "zoo configs use the real architecture"
    assert engine.backbone.model_name == model
    assert type(engine.head.margin).__name__ == loss
    m = cfg["Loss"]["Train"][0][loss]
    assert engine.head.margin.s == m["s"]
    assert engine.head.sample_ratio == cfg["Model"]["pfc_config"]["sample_ratio"]
    train_two_steps(engine)


def train_two_steps(engine):
    """Two optimizer steps through Trainer.train_step (without the final checkpoint of Trainer.train, which
    costs more than the steps at these sizes): finite losses, the backbone and the classifier moved."""
    batches = iter(engine.loader)
    w0 = [p.numpy().copy() for p in engine.backbone.parameters() if not p.stop_gradient][:3]
    fc0 = engine.head.weight.numpy().copy()
    values = []
    for _ in range(2):
        values.append(engine.train_step(next(batches)).item())
        engine.state["global_step"] += 1  # as the train loop does (the LR schedule reads it)
    assert all(np.isfinite(values)), values
    w1 = [p.numpy() for p in engine.backbone.parameters() if not p.stop_gradient][:3]
    assert any(not np.array_equal(a, b) for a, b in zip(w0, w1)) and not np.array_equal(fc0, engine.head.weight.numpy())
    return values


PLSC_OWN = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*", "*.yaml"))
                  if os.sep + "_base_" + os.sep not in p and os.sep + "reference" + os.sep not in p)


@pytest.mark.parametrize("path", PLSC_OWN, ids=lambda p: os.path.basename(p)[:48])
def test_plsc_configs_state_their_poly_power(path):
    """Poly's default power (PLSC's 2.0) differs from arcface_torch's current 1.0: no plsc config may lean on it
    (configs/reference is PLSC's own file and keeps PLSC's meaning)."""
    from plsc.config import read_yaml as _read_yaml

    sched = _read_yaml(path, []).get("LRScheduler", {})
    if sched.get("name") == "Poly":
        assert "power" in sched, f"{path}: LRScheduler.power is inherited from the default"
    if "sgd_poly_20e" in open(path).read() or "adamw_poly_40e" in open(path).read():
        assert sched["power"] == 1.0, "the arcface_torch recipes decay linearly (train_v2.py PolynomialLRWarmup)"
