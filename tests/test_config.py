"""Config loading: reference schema, _base_ merge, every -o form, errors naming keys."""
import os
import subprocess
import sys

import pytest

from plsc.config import load_config, markdown
from plsc.errors import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REFERENCE = os.path.join(ROOT, "..", "shared", "reference", "IResNet50_MS1MV3_ArcFace_pfc10_1n8c_dp_mp_fp16o1.yaml")
REFERENCE_COPY = os.path.join(ROOT, "configs", "reference", "IResNet50_MS1MV3_ArcFace_pfc10_1n8c_dp_mp_fp16o1.yaml")


def write(path, text):
    path.write_text(text)
    return str(path)


def test_reference_config_loads_unchanged():
    for path in (REFERENCE, REFERENCE_COPY):
        if path == REFERENCE and not os.path.exists(path):
            continue
        cfg = load_config(path)
        assert cfg["Model"]["name"] == "IResNet50"
        assert cfg["Model"]["class_num"] == 93431
        assert cfg["Model"]["data_format"] == "NHWC"
        assert cfg["FP16"]["level"] == "O1"
        assert cfg["FP16"]["GradScaler"]["init_loss_scaling"] == 27648.0
        assert cfg["Optimizer"]["weight_decay"] == 5e-4  # written `5e-4`: a float, not a string
        assert cfg["Optimizer"]["grad_clip"]["no_clip_list"] == ["dist"]
        assert cfg["Loss"]["Train"][0]["MarginLoss"]["m2"] == 0.5
        assert cfg["DataLoader"]["Train"]["dataset"]["name"] == "FaceIdentificationDataset"
        assert cfg["Metric"]["Eval"] == [{"LFWAcc": {"flip_test": True}}]
        # keys the file does not set get their defaults
        assert cfg["Global"]["max_train_step"] is None
        assert cfg["Export"]["opset_version"] == 11


def test_base_inheritance_deep_merge_later_wins(tmp_path):
    (tmp_path / "_base_").mkdir()
    write(tmp_path / "_base_" / "a.yaml", "Global:\n  epochs: 3\n  seed: 1\nModel:\n  name: IResNet18\n")
    write(tmp_path / "_base_" / "b.yaml", "Global:\n  seed: 2\nModel:\n  num_features: 128\n")
    cfg = load_config(write(tmp_path / "c.yaml", "_base_: [_base_/a.yaml, _base_/b.yaml]\nGlobal:\n  epochs: 5\n"))
    assert cfg["Global"]["epochs"] == 5          # the file itself wins
    assert cfg["Global"]["seed"] == 2            # later base wins over earlier
    assert cfg["Model"]["name"] == "IResNet18"   # deep merge keeps untouched keys
    assert cfg["Model"]["num_features"] == 128


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "a.yaml"))


def test_base_with_other_registered_name_replaces_subtree(tmp_path):
    write(tmp_path / "base.yaml", "DataLoader:\n  Train:\n    dataset:\n      name: FaceRecordIODataset\n"
                                  "      root_dir: /data/ms1m\n")
    cfg = load_config(write(tmp_path / "c.yaml", "_base_: base.yaml\nDataLoader:\n  Train:\n    dataset:\n"
                                                 "      name: FaceRandomDataset\n      num_classes: 7\n"))
    assert cfg["DataLoader"]["Train"]["dataset"] == {"name": "FaceRandomDataset", "num_classes": 7}


def test_every_override_form(tmp_path):
    path = REFERENCE_COPY
    cfg = load_config(path, [
        "Global.epochs=1",
        "Optimizer.weight_decay=1e-4",
        "Global.use_visualdl=false",
        "Global.checkpoint=null",
        "Global.max_train_step=7",
        "Loss.Train.0.MarginLoss.m2=0.4",
        "Export.input_shape=[null, 3, 112, 112]",
        "DataLoader.Train.dataset={name: FaceRandomDataset, num_classes: 100}",
    ])
    assert cfg["Global"]["epochs"] == 1
    assert cfg["Optimizer"]["weight_decay"] == 1e-4 and isinstance(cfg["Optimizer"]["weight_decay"], float)
    assert cfg["Global"]["use_visualdl"] is False
    assert cfg["Global"]["checkpoint"] is None
    assert cfg["Global"]["max_train_step"] == 7
    assert cfg["Loss"]["Train"][0]["MarginLoss"]["m2"] == 0.4
    assert cfg["Export"]["input_shape"] == [None, 3, 112, 112]
    # a mapping value replaces the whole subtree (no image_root / transform_ops left over)
    assert cfg["DataLoader"]["Train"]["dataset"] == {"name": "FaceRandomDataset", "num_classes": 100}


@pytest.mark.parametrize("override, match", [
    ("Global.epoch=1", r"unknown config key 'Global.epoch'.*Did you mean 'epochs'"),
    ("Globl.epochs=1", r"unknown config key 'Globl'.*Did you mean 'Global'"),
    ("Global.epochs=abc", r"Global.epochs: expected int, got 'abc'"),
    ("Global.use_visualdl=3", r"Global.use_visualdl: expected bool"),
    ("FP16.level=O3", r"FP16.level: 'O3' is not one of"),
    ("Loss.Train.0.MarginLoss.m4=1", r"Loss.Train.0.MarginLoss.m4: unknown key for MarginLoss.*"),
    ("Loss.Train.3.MarginLoss.m2=1", r"index 3 out of range"),
    ("Model.name", r"expected Key.sub=value"),
    ("DataLoader.Train.dataset.rot_dir=/x", r"DataLoader.Train.dataset.rot_dir: unknown key for FaceIdentificationDataset"),
    ("DataLoader.Train.dataset.name=NoSuchDataset", r"unknown dataset 'NoSuchDataset'.*Registered datasets:"),
    ("Optimizer.name=Adam", r"unknown optimizer 'Adam'.*Did you mean 'AdamW'"),
    ("LRScheduler.name=Poly2", r"unknown lr scheduler 'Poly2'"),
    ("Global.seed=[1", r"YAML syntax error"),
])
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(REFERENCE_COPY, [override])


def test_unknown_key_in_file_and_yaml_syntax_line(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'Model.num_feature'.*Did you mean 'num_features'"):
        load_config(write(tmp_path / "a.yaml", "Model:\n  num_feature: 3\n"))
    with pytest.raises(ConfigError, match=r"YAML syntax error at .*b.yaml:\d+:.*opened at line 3, column 9"):
        load_config(write(tmp_path / "b.yaml", "Global:\n  epochs: 1\n  seed: [1, 2\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_docs_config_md_is_generated_from_the_schema():
    with open(os.path.join(ROOT, "docs", "config.md")) as f:
        assert f.read().strip() == markdown().strip(), "regenerate: python -m plsc.config --markdown > docs/config.md"


def test_cli_help_lists_sections():
    out = subprocess.run([sys.executable, "-c", "from plsc.cli import train_main; train_main(['--help'])"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for section in ("Global", "FP16", "DistributedStrategy", "Model", "Loss", "LRScheduler", "Optimizer",
                    "DataLoader", "Metric", "Export"):
        assert section in out.stdout


def test_python_none_in_plsc_configs_reads_as_null():
    cfg = load_config(REFERENCE_COPY)
    assert cfg["Export"]["input_shape"] == [None, 3, 112, 112]
