"""load_config is the door: the rules that span several keys refuse a config before anything is built, PLSC's
keys arrive translated into plsc's schema, and loading a config imports neither Paddle nor any model."""
import glob
import os
import subprocess
import sys

import pytest

from plsc import registry
from plsc.config import load_config
from plsc.errors import ConfigError
from plsc_published import published

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "smoke", "IResNet_tiny_random.yaml")
EVAL_SET = "DataLoader.Eval.dataset={name: FaceBinDataset, bin_path: data/lfw.bin}"

# (overrides, the keys the message must name): one case per rule of plsc/config/rules.py and plsc_compat.py
BROKEN = [
    (["Loss.Train=[{MarginLoss: {}}, {AdaFaceLoss: {}}]"], r"Loss.Train: expected exactly one margin loss"),
    (["Model.pfc_config.sample_ratio=1.5"], r"Model.pfc_config.sample_ratio must be in \(0, 1\], got 1.5"),
    (["Model.pfc_config.sample_num=0"], r"Model.pfc_config.sample_num must be an integer >= 1"),
    (["Model.pfc_config.sample_ratio=0.1", "Model.pfc_config.sample_num=10"],
     r"Model.pfc_config: sample_ratio=0.1 and sample_num=10 are both set"),
    (["Model.pfc_config.storage_dtype=bfloat16", "Model.num_features=7"],
     r"Model.pfc_config.storage_dtype=bfloat16 needs an even Model.num_features .*got 7"),
    (["Model.pfc_config.interclass_filtering_threshold=1.0"],
     r"Model.pfc_config.interclass_filtering_threshold must be in \[0, 1\)"),
    (["Model.class_num=0"], r"Model.class_num must be >= 1, got 0"),
    (["Loss.Train.0.MarginLoss.model_parallel=false"],
     r"Loss.Train.0.MarginLoss.model_parallel=False disagrees with Model.pfc_config.model_parallel=True"),
    (["Model.pfc_config.sparse_update=false", "Model.pfc_config.update_rows=sampled"],
     r"Model.pfc_config.sparse_update=False .*disagrees with Model.pfc_config.update_rows=sampled"),
    (["FP16.fp16_custom_white_list=[matmul, conv2d]", "FP16.fp16_custom_black_list=[conv2d]"],
     r"FP16: ops \['conv2d'\] are in both fp16_custom_white_list and fp16_custom_black_list"),
    (["FP16.GradScaler.init_loss_scaling=2048", "FP16.GradScaler.max_loss_scaling=1024"],
     r"FP16.GradScaler.max_loss_scaling \(1024\) must be >= init_loss_scaling \(2048\)"),
    (["Global.accum_steps=0"], r"Global.accum_steps must be >= 1, got 0"),
    (["Global.accum_steps=32"],
     r"Global.accum_steps=32 splits each batch of DataLoader.Train.sampler.batch_size=16 .*<= the batch size"),
    ([EVAL_SET, "DataLoader.Eval.sampler={name: BatchSampler, batch_size: 8, shuffle: true}"],
     r"DataLoader.Eval.sampler.shuffle=true: verification embeds every pair in file order"),
    ([EVAL_SET, "DataLoader.Eval.sampler={name: BatchSampler, batch_size: 8, drop_last: true}"],
     r"DataLoader.Eval.sampler.drop_last=true"),
    (["DataLoader.Eval.sampler={name: BatchSampler, batch_size: 8, drop_last: true}"], None),  # no eval set: unused
    ([EVAL_SET, "DataLoader.Eval.sampler={name: DistributedBatchSampler, batch_size: 8, shuffle: false}"],
     None),  # accepted: the distributed sampler without shuffling reads every image once, in order
    (["DataLoader.Eval.dataset=[{name: FaceBinDataset, bin_path: a/lfw.bin}, {name: FaceBinDataset, "
      "bin_path: b/lfw.bin}]"], r"DataLoader.Eval.dataset: two eval sets are named 'lfw'"),
    (["Metric.Eval=[{LFWAcc: {}}, {LFWAcc: {flip_test: false}}]"], r"Metric.Eval: one verification metric"),
    (["Optimizer={name: AdamW, betas: [0.9, 0.99], beta2: 0.999}"],
     r"Optimizer.betas=\[0.9, 0.99\] disagrees with Optimizer.beta2=0.999"),
    (["Optimizer={name: AdamW, eps: 1.0e-6, epsilon: 1.0e-8}"],
     r"Optimizer.eps=1e-06 disagrees with Optimizer.epsilon"),
    (["Optimizer={name: AdamW, betas: '(0.9, x)'}"], r"Optimizer.betas: '\(0.9, x\)' is not two numbers"),
    (["Optimizer={name: Momentum, betas: [0.9, 0.99]}"], r"Optimizer.betas: unknown key for Momentum"),
    (["Model.name=IResNet51"], r"Model.name: unknown model 'IResNet51'. Did you mean 'IResNet50'\?"),
    (["Global.use_dali=3"], r"Global.use_dali: expected bool, got 3"),
    (["LRScheduler.last_epoch=3"], r"LRScheduler.last_epoch=3: plsc starts schedules at the beginning \(-1\)"),
    (["DistributedStrategy.data_sharding=true"], r"DistributedStrategy.data_sharding: 'True' is not one of \[False\]"),
    (["Global.device=tpu"], r"Global.device: 'tpu' is not one of \['gpu', 'cpu'\]"),
]


@pytest.mark.parametrize("overrides,message", BROKEN, ids=lambda x: x if isinstance(x, str) else None)
def test_each_cross_key_rule_refuses_at_load(overrides, message):
    if message is None:
        load_config(SMOKE, overrides)
        return
    with pytest.raises(ConfigError, match=message):
        load_config(SMOKE, overrides)


def test_a_dense_optimizer_without_a_sparse_twin_is_refused_at_load():
    if "NoTwinSGD" not in registry.OPTIMIZERS:
        registry.OPTIMIZERS.register("NoTwinSGD")(lambda model, learning_rate, multi_precision=False: None)
    with pytest.raises(ConfigError, match=r"Optimizer.name=NoTwinSGD: there is no sparse version of it for the "
                                          r"PartialFC weight \(sparse optimizers: AdamW, Momentum\)"):
        load_config(SMOKE, ["Optimizer={name: NoTwinSGD}"])


def test_plsc_keys_arrive_in_plscs_schema(tmp_path):
    text = published()["old/FaceViT_tiny_patch9_112_WebFace42M_ArcFace_0.3_droppath005_mask0_1n8c_dp_mp_fp16o2"]
    assert "betas: (0.9, 0.999)" in text and "sparse_update: False" in text and "exp_avg_force_fp32: True" in text
    path = tmp_path / "vit.yaml"
    path.write_text(text)
    cfg = load_config(str(path), ["Global.use_dali=true", "Global.device=npu", "Metric.Train=[{TopkAcc: {}}]",
                                  "LRScheduler.verbose=true", "LRScheduler.last_epoch=-1"])
    opt = cfg["Optimizer"]
    assert (opt["beta1"], opt["beta2"], opt["epsilon"]) == (0.9, 0.999, 1e-8)
    assert not {"betas", "eps", "exp_avg_force_fp32"} & set(opt)
    assert cfg["Model"]["pfc_config"]["update_rows"] == "all" and "sparse_update" not in cfg["Model"]["pfc_config"]
    assert "model_parallel" not in cfg["Loss"]["Train"][0]["MarginLoss"]
    assert cfg["Global"]["device"] == "cpu" and cfg["FP16"]["level"] == "O2"
    for gone in ("task_type", "train_epoch_func", "eval_func", "use_dali"):
        assert gone not in cfg["Global"]
    assert "Train" not in cfg["Metric"] and "Eval" not in cfg["Loss"]
    assert [n.split(" ")[0].split("=")[0] for n in cfg.notes] == [
        "Global.use_dali", "Metric.Train", "LRScheduler.verbose", "Global.device", "Optimizer.exp_avg_force_fp32"], \
        cfg.notes
    assert not {"verbose", "last_epoch"} & set(cfg["LRScheduler"])


def test_registry_reads_every_builtin_signature_as_importing_it_would():
    from plsc.registry import builder_params

    for reg in registry.ALL.values():
        for name, where in reg._table.items():  # every built-in name
            module, attr = where.split(":")
            static = registry._SourceSignatures.of(module).params(attr)
            assert static == builder_params(reg.get(name)), (reg.kind, name)


_NO_PADDLE = """
import glob, sys
import plsc.config
for path in sys.argv[1:]:
    plsc.config.load_config(path)
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("paddle", "numpy", "cv2") or m.startswith("plsc.models"))
assert not bad, bad
print(len(sys.argv) - 1)
"""


def test_loading_configs_imports_no_paddle(tmp_path):
    texts = published()
    paths = [p for p in glob.glob(os.path.join(ROOT, "configs", "*", "*.yaml")) if os.sep + "_base_" + os.sep not in p]
    for name in ("v2.4/FaceViT_base_patch9_112_WebFace42M_CosFace_pfc03_droppath005_mask005_1n8c_dp_mp_fp16o1",
                 "old/IResNet50_MS1MV3_ArcFace_0.1_1n8c_dp_fp32"):
        paths.append(str(tmp_path / (name.replace("/", "_") + ".yaml")))
        open(paths[-1], "w").write(texts[name])
    out = subprocess.run([sys.executable, "-c", _NO_PADDLE, *paths], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == len(paths) >= 10
