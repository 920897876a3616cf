"""Readers of other projects' checkpoints: PLSC .pdparams (+ _rank<r> FC shards), insightface
arcface_torch .pt / .pth, AdaFace Lightning .ckpt -> plsc checkpoints. Nothing here imports torch
or runs a general unpickler: every pickle goes through plsc.io.safe_pickle.

    from plsc.interop import load_source, write_checkpoint
    src = load_source("ms1mv3_r50/model.pt")          # format + architecture detected (model= forces a name)
    src.model, src.arch_kwargs, src.num_features      # what to put in Model.*
    src.model_options                                 # Model.* the weights do not store ({"mask_ratio": 0.1})
    src.backbone                                      # {plsc state_dict name: float32 array}
    src.fc, src.class_num                             # [C, D] classifier (PLSC files) or None
    write_checkpoint(src, "imported/r50", world_size=1)   # a directory Global.pretrained_model takes

Modules (the restricted unpickler and its numpy stand-ins are plsc.io.safe_pickle / numpy_pickle, shared
with the .bin reader): torch_file / torch_legacy / pdparams (file readers), insightface / adaface / plsc_paddle (one per source, name
tables as data), mapping (the table machinery), convert (detection, mapping, checks), writer (the
checkpoint directory).
"""


def load_source(path, model=None, mask_ratio=None):
    from plsc.interop.convert import load_source as _load  # lazy: `import plsc.interop` stays cheap

    return _load(path, model, mask_ratio)


def write_checkpoint(src, out_dir, world_size=1, force=False):
    from plsc.interop.writer import write_checkpoint as _write  # lazy: `import plsc.interop` stays cheap

    return _write(src, out_dir, world_size, force)
