"""The face configs PaddlePaddle/PLSC has published, as YAML texts, for the compatibility tests.

PLSC v2.4's `task/recognition/face/configs/IResNet50_MS1MV3_ArcFace_pfc10_1n8c_dp_mp_fp16o1.yaml` is
configs/reference/ (unchanged). Every other published config is described here by the lines in which
it differs from that one, as a diff would show them (keys and values as PLSC writes them, e.g.
`betas: (0.9, 0.999)`, `epsilon: 1e-8`, `data_format : "NHWC"`): the five other v2.4 configs, their
earlier versions (`defualt_train_one_epoch`, before PLSC's commit 1462b8e), and the eleven configs of
the older `plsc/configs/FaceRecognition/` (2022-07 .. 2022-12).
"""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, "configs", "reference", "IResNet50_MS1MV3_ArcFace_pfc10_1n8c_dp_mp_fp16o1.yaml")

WEBFACE = [("      image_root: ./dataset/MS1M_v3/\n      cls_label_path: ./dataset/MS1M_v3/label.txt\n",
            "      image_root: ./dataset/WebFace42M\n      cls_label_path: ./dataset/WebFace42M/label.txt\n"),
           ("./dataset/MS1M_v3/agedb_30\n      cls_label_path: ./dataset/MS1M_v3/agedb_30/label.txt",
            "./dataset/WebFace42M/agedb_30\n      cls_label_path: ./dataset/WebFace42M/agedb_30/label.txt"),
           ("  class_num: 93431\n", "  class_num: 2059906\n")]
COSFACE = [("        m2: 0.5\n        m3: 0.0\n", "        m2: 0.0\n        m3: 0.4\n")]
VIT_SCHEDULE = [("  learning_rate: 0.1\n  decay_unit: step\n  warmup_steps: 0\n",
                 "  learning_rate: 0.001\n  decay_unit: step\n  warmup_epochs: 4\n  warmup_end_lr: 0.001\n"),
                ("  name: Momentum\n  momentum: 0.9\n  weight_decay: 5e-4\n",
                 "  name: AdamW\n  betas: (0.9, 0.999)\n  epsilon: 1e-8\n  weight_decay: 0.1\n"),
                ("    always_clip: True\n", ""),
                ("  eval_interval: 2000\n", "  eval_interval: 4000\n"),
                ("  epochs: 20\n", "  epochs: 40\n"),
                ("      batch_size: 128\n      drop_last: False\n      shuffle: True\n",
                 "      batch_size: 256\n      drop_last: False\n      shuffle: True\n")]


def vit(name, extra_model, ratio, **more):
    return WEBFACE + COSFACE + VIT_SCHEDULE + [
        ("  name: IResNet50\n  num_features : 512\n  data_format : \"NHWC\"\n",
         f"  name: {name}\n{extra_model}  num_features : 512\n"),
        ("    sample_ratio: 1.0\n    model_parallel: True\n", f"    sample_ratio: {ratio}\n    model_parallel: True\n"
                                                            + more.get("pfc", ""))]


CURRENT = {  # task/recognition/face/configs/ at PLSC v2.4.0 (= release/2.4 = master)
    "IResNet50_MS1MV3_ArcFace_pfc10_1n8c_dp_mp_fp16o1": [],
    "IResNet100_WebFace42M_CosFace_pfc02_1n8c_dp_mp_fp16o1": WEBFACE + COSFACE + [
        ("  eval_interval: 2000\n", "  eval_interval: 10370\n"), ("  print_batch_step: 100\n", "  print_batch_step: 10\n"),
        ("  name: IResNet50\n", "  name: IResNet100\n"), ("    sample_ratio: 1.0\n", "    sample_ratio: 0.2\n"),
        ("  warmup_steps: 0\n", ""), ("  weight_decay: 5e-4\n", "  weight_decay: 5e-4\n  use_master_param: False\n"),
        ("    always_clip: True\n", "")],
    "MobileFaceNet_WebFace42M_CosFace_pfc02_1n8c_dp_mp_fp16o1": WEBFACE + COSFACE + [
        ("  eval_interval: 2000\n", "  eval_interval: 10000\n"),
        ("  name: IResNet50\n  num_features : 512\n", "  name: MobileFaceNet_base\n  num_features: 512\n"),
        ("    sample_ratio: 1.0\n", "    sample_ratio: 0.2\n"),
        ("  warmup_steps: 0\n", "  warmup_steps: 2\n  warmup_end_lr: 0.1\n"),
        ("  weight_decay: 5e-4\n", "  weight_decay: 1e-4\n"),
        ("      batch_size: 128\n      drop_last: False\n      shuffle: True\n",
         "      batch_size: 256\n      drop_last: False\n      shuffle: True\n")],
    "FaceViT_tiny_patch9_112_WebFace42M_CosFace_pfc10_droppath005_mask0_1n8c_dp_mp_fp16o1": vit(
        "FaceViT_tiny_patch9_112", "  mask_ratio: 0.0\n  drop_path_rate: 0.05\n", "1.0", pfc="    sparse_update: False\n")
    + [("  max_num_latest_checkpoint: 0\n", "  max_num_latest_checkpoint: 5\n"),
       ("  print_batch_step: 100\n", "  print_batch_step: 200\n")],
    "FaceViT_tiny_patch9_112_WebFace42M_CosFace_pfc02_droppath005_mask0_1n8c_dp_mp_fp16o1": vit(
        "FaceViT_tiny_patch9_112", "  mask_ratio: 0.0\n  drop_path_rate: 0.05\n", "0.2")
    + [("  max_num_latest_checkpoint: 0\n", "  max_num_latest_checkpoint: 5\n"),
       ("  print_batch_step: 100\n", "  print_batch_step: 200\n")],
    "FaceViT_base_patch9_112_WebFace42M_CosFace_pfc03_droppath005_mask005_1n8c_dp_mp_fp16o1": vit(
        "FaceViT_base_patch9_112", "  mask_ratio: 0.05\n  drop_path_rate: 0.05\n", "0.3")
    + [("  print_batch_step: 100\n", "  print_batch_step: 10\n")],
}

OLD_BASE = [  # plsc/configs/FaceRecognition/IResNet50_MS1MV3_ArcFace_0.1_1n8c_dp_mp_fp16o2.yaml
    ("  epochs: 20\n", "  epochs: 25\n"),
    ("  level: O1\n  GradScaler:\n    init_loss_scaling: 27648.0\n",
     "  level: O2\n  GradScaler:\n    init_loss_scaling: 27648.0\n    no_unscale_list: ['dist']\n"),
    ("    sample_ratio: 1.0\n", "    sample_ratio: 0.1\n"),
    ("  name: Poly\n  learning_rate: 0.1\n  decay_unit: step\n  warmup_steps: 0\n",
     "  name: Step\n  boundaries: [10, 16, 22]\n  values: [0.2, 0.02, 0.002, 0.0002]\n  decay_unit: epoch\n"),
    ("  weight_decay: 5e-4\n", "  weight_decay: 5e-4\n  use_master_param: False\n"),
    ("    clip_norm: 5.0\n", "    clip_norm: 2.0\n    clip_norm_max: 2.0\n")]
NO_FP16 = [("  level: O2\n  GradScaler:\n    init_loss_scaling: 27648.0\n    no_unscale_list: ['dist']\n", ""),
           ("FP16:\n", "")]
DP = [("    sample_ratio: 0.1\n    model_parallel: True\n", "    sample_ratio: 0.1\n    model_parallel: False\n"),
      ("        model_parallel: True\n", "        model_parallel: False\n"),
      ("    no_clip_list: ['dist']\n", "    no_clip_list: ['partialfc']\n")]
DP_UNSCALE = [("    no_unscale_list: ['dist']\n", "    no_unscale_list: ['partialfc']\n")]
OLD = {
    "IResNet50_MS1MV3_ArcFace_0.1_1n8c_dp_mp_fp16o2": [],
    "IResNet50_MS1MV3_ArcFace_0.1_1n8c_dp_mp_fp32": NO_FP16,
    "IResNet50_MS1MV3_ArcFace_0.1_1n8c_dp_fp16o2": DP_UNSCALE + DP,
    "IResNet50_MS1MV3_ArcFace_0.1_1n8c_dp_fp32": NO_FP16 + DP,
    "IResNet50_MS1MV3_ArcFace_1.0_1n8c_dp_mp_fp16o2": [("    sample_ratio: 0.1\n", "    sample_ratio: 1.0\n")],
    "IResNet50_MS1MV3_ArcFace_1.0_1n8c_dp_fp16o2": DP_UNSCALE + DP + [("    sample_ratio: 0.1\n",
                                                                        "    sample_ratio: 1.0\n")],
    "IResNet50_MS1MV3OneSample_ArcFace_0.1_1n8c_dp_fp32": NO_FP16 + DP + [
        ("  eval_interval: 2000\n", "  eval_interval: 200\n"), ("  print_batch_step: 100\n", "  print_batch_step: 10\n"),
        ("  data_format : \"NHWC\"\n", "  data_format : \"NCHW\"\n"),
        ("./dataset/MS1M_v3/\n      cls_label_path: ./dataset/MS1M_v3/label.txt",
         "./dataset/MS1M_v3_One_Sample/\n      cls_label_path: ./dataset/MS1M_v3_One_Sample/label.txt"),
        ("./dataset/MS1M_v3/agedb_30\n      cls_label_path: ./dataset/MS1M_v3/agedb_30/label.txt",
         "./dataset/MS1M_v3_One_Sample/agedb_30\n      cls_label_path: ./dataset/MS1M_v3_One_Sample/agedb_30/label.txt")],
    "IResNet50_RandomMaxID_ArcFace_0.1_1n8c_dp_mp_fp16o2": [
        ("  eval_during_train: True\n", "  eval_during_train: False\n"), ("  epochs: 25\n", "  epochs: 1\n"),
        ("  print_batch_step: 100\n", "  print_batch_step: 1\n"), ("  class_num: 93431\n", "  class_num: 87000000\n"),
        ("      name: FaceIdentificationDataset\n      image_root: ./dataset/MS1M_v3/\n", "TRAIN_DATASET"),
        ("      batch_size: 128\n      drop_last: False\n      shuffle: True\n",
         "      batch_size: 64\n      drop_last: False\n      shuffle: True\n"), ("EVAL_TO_END", "")],
    "IResNet50_WebFace42M_CosFace_0.2_1n8c_dp_mp_fp16o2": WEBFACE + COSFACE + [
        ("    sample_ratio: 0.1\n", "    sample_ratio: 0.2\n"), ("  epochs: 25\n", "  epochs: 20\n"),
        ("  name: Step\n  boundaries: [10, 16, 22]\n  values: [0.2, 0.02, 0.002, 0.0002]\n  decay_unit: epoch\n",
         "  name: Poly\n  learning_rate: 0.4\n  decay_unit: step\n  warmup_epochs: 2\n  warmup_end_lr: 0.4\n"),
        ("      batch_size: 128\n      drop_last: False\n      shuffle: True\n",
         "      batch_size: 512\n      drop_last: False\n      shuffle: True\n"),
        ("  eval_interval: 2000\n", "  eval_interval: 10370\n"), ("  print_batch_step: 100\n", "  print_batch_step: 10\n"),
        ("Export:\n", "Export:\n  export_type: onnx\n  input_shape: [None, 3, 112, 112]\n\nExport:\n")],
    "IResNet50_WebFace42M_CosFace_0.2_2n16c_dp_mp_fp16o2": WEBFACE + COSFACE + [
        ("    sample_ratio: 0.1\n", "    sample_ratio: 0.2\n"), ("  epochs: 25\n", "  epochs: 20\n"),
        ("  name: Step\n  boundaries: [10, 16, 22]\n  values: [0.2, 0.02, 0.002, 0.0002]\n  decay_unit: epoch\n",
         "  name: Poly\n  learning_rate: 0.6\n  decay_unit: step\n  warmup_epochs: 2\n  warmup_end_lr: 0.6\n"),
        ("      batch_size: 128\n      drop_last: False\n      shuffle: True\n",
         "      batch_size: 512\n      drop_last: False\n      shuffle: True\n"),
        ("  eval_interval: 2000\n", "  eval_interval: 4000\n"), ("  print_batch_step: 100\n", "  print_batch_step: 200\n")],
    "FaceViT_tiny_patch9_112_WebFace42M_ArcFace_0.3_droppath005_mask0_1n8c_dp_mp_fp16o2": WEBFACE + COSFACE + [
        ("  eval_interval: 2000\n", "  eval_interval: 4000\n"), ("  epochs: 25\n", "  epochs: 40\n"),
        ("  print_batch_step: 100\n", "  print_batch_step: 200\n"), ("    no_unscale_list: ['dist']\n", ""),
        ("  name: IResNet50\n  num_features : 512\n  data_format : \"NHWC\"\n",
         "  name: FaceViT_tiny_patch9_112\n  num_features : 512\n"),
        ("    sample_ratio: 0.1\n    model_parallel: True\n",
         "    sample_ratio: 0.3\n    model_parallel: True\n    sparse_update: False\n"),
        ("  name: Step\n  boundaries: [10, 16, 22]\n  values: [0.2, 0.02, 0.002, 0.0002]\n  decay_unit: epoch\n",
         "  name: Poly\n  learning_rate: 0.001\n  decay_unit: step\n  warmup_epochs: 4\n  warmup_end_lr: 0.001\n"),
        ("  name: Momentum\n  momentum: 0.9\n  weight_decay: 5e-4\n  use_master_param: False\n",
         "  name: AdamW\n  betas: (0.9, 0.999)\n  epsilon: 1e-8\n  weight_decay: 0.1\n  use_master_param: False\n"
         "  exp_avg_force_fp32: True\n  no_weight_decay_name: [\"pos_embed\", \"norm\"]\n"),
        ("    clip_norm: 2.0\n    clip_norm_max: 2.0\n    always_clip: True\n", "    clip_norm: 5.0\n"),
        ("      batch_size: 128\n      drop_last: False\n      shuffle: True\n",
         "      batch_size: 512\n      drop_last: False\n      shuffle: True\n")],
}
RANDOM_DATASET = "      name: FaceRandomDataset\n      num_classes: 87000000\n"


def _edit(text, edits, name):
    for old, new in edits:
        if old == "EVAL_TO_END":  # the random-data config has no Eval loader, Metric or Export
            text = text[:text.index("\n  Eval:\n")] + "\n"
            continue
        if new == "TRAIN_DATASET":
            start = text.index(old)
            end = text.index("    sampler:\n", start)
            text = text[:start] + RANDOM_DATASET + text[end:]
            continue
        assert text.count(old) >= 1, (name, old)
        text = text.replace(old, new, 1)
    return text


def published():
    """{name: YAML text} of every published PLSC face config (v2.4, its earlier spelling, the old directory)."""
    with open(REFERENCE) as f:
        ref = f.read()
    out = {f"v2.4/{name}": _edit(ref, edits, name) for name, edits in CURRENT.items()}
    typo = ("  train_epoch_func: default_train_one_epoch\n", "  train_epoch_func: defualt_train_one_epoch\n")
    out.update({f"2022-12/{name}": _edit(ref, edits + [typo], name) for name, edits in CURRENT.items()})
    old_base = _edit(ref, OLD_BASE + [typo], "old base")
    out.update({f"old/{name}": _edit(old_base, edits, name) for name, edits in OLD.items()})
    return out
