"""The rules that span several keys of a validated config, checked by load_config before anything is built,
so that a config that loads runs (or fails only on its data or the hardware: the dataset's classes, the world
size, the device). Each raises ConfigError naming the keys.

    check_all(cfg)      # load_config calls it on the validated config
"""
import math
import os

from plsc import registry
from plsc.config.schema import SCHEMA
from plsc.errors import ConfigError


def check_all(cfg):
    check_finite(cfg)
    check_finetune(cfg)
    check_distill(cfg)
    check_model(cfg)
    check_head(cfg["Model"], cfg["Loss"]["Train"])
    check_optimizer(cfg)
    check_fp16(cfg)
    check_train_batch(cfg)
    check_eval(cfg)


def check_finite(node, path=""):
    """Every number of the config is finite: a NaN or infinite learning rate, margin, scale, weight decay,
    momentum, clip norm or loss weight cannot train (ConfigError naming the key)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        p = f"{path}.{k}" if path else str(k)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{p}: {v} is not a finite number (a run cannot train with it); set a finite value")
        check_finite(v, p)


def check_distill(cfg):
    d = cfg["Distill"]
    if d["teacher"] is not None and not d["weight"] > 0:
        raise ConfigError(f"Distill.weight must be > 0 when Distill.teacher is set, got {d['weight']}")


def check_finetune(cfg):
    """Global.finetune's recipe is complete and in range (every plsc backbone has 4 stages)."""
    g, f = cfg["Global"], cfg["FineTune"]
    if not g["finetune"]:
        return
    if not g["pretrained_model"]:
        raise ConfigError("Global.finetune is true but Global.pretrained_model is not set: name the released or "
                          "trained model to fine-tune (a plsc checkpoint directory, or plsc-import's output)")
    n = f["freeze_stages"]
    if not (n == "all" or (isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 4)):
        raise ConfigError(f"FineTune.freeze_stages={n!r}: plsc backbones have 4 stages; give 0..4, or 'all' (only "
                          f"the neck trains)")
    if not f["backbone_lr_mult"] >= 0:
        raise ConfigError(f"FineTune.backbone_lr_mult must be >= 0, got {f['backbone_lr_mult']}")
    if f["head_warmup_steps"] < 0:
        raise ConfigError(f"FineTune.head_warmup_steps must be >= 0, got {f['head_warmup_steps']}")


def check_model(cfg):
    """Model.name is a registered backbone (a plugin's name counts once its module registered it)."""
    name = cfg["Model"]["name"]
    if name not in registry.MODELS:
        raise ConfigError(f"Model.name: {registry.MODELS.unknown(name)}")


def check_head(model_cfg, loss_cfg):
    """The classifier's keys agree: one margin loss; sample_ratio / sample_num (one of them); a 16-bit storage
    dtype with an even embedding size; the inter-class filtering threshold and class_num in range."""
    if not loss_cfg or len(loss_cfg) != 1:
        raise ConfigError(f"Loss.Train: expected exactly one margin loss (e.g. [- MarginLoss: {{m2: 0.5}}]), "
                          f"got {len(loss_cfg or [])} entries")
    pfc = model_cfg["pfc_config"]
    ratio = pfc.get("sample_ratio", 1.0)
    if not (0.0 < ratio <= 1.0):
        raise ConfigError(f"Model.pfc_config.sample_ratio must be in (0, 1], got {ratio}")
    sample_num = pfc.get("sample_num")
    if sample_num is not None:
        if isinstance(sample_num, bool) or not isinstance(sample_num, int) or sample_num < 1:
            raise ConfigError(f"Model.pfc_config.sample_num must be an integer >= 1 (rows per rank per step) or null, "
                              f"got {sample_num!r}")
        if ratio != 1.0:
            raise ConfigError(f"Model.pfc_config: sample_ratio={ratio} and sample_num={sample_num} are both set; "
                              f"set one (sample_num: rows per rank per step; sample_ratio: a fraction of the shard)")
    storage = pfc.get("storage_dtype", "float32")
    dtypes = SCHEMA["Model"]["pfc_config"]["storage_dtype"].choices
    if storage not in dtypes:
        raise ConfigError(f"Model.pfc_config.storage_dtype={storage!r}: expected one of {', '.join(dtypes)}")
    if storage != "float32" and model_cfg["num_features"] % 2:
        raise ConfigError(f"Model.pfc_config.storage_dtype={storage} needs an even Model.num_features (16-bit rows "
                          f"move as pairs), got {model_cfg['num_features']}")
    threshold = pfc.get("interclass_filtering_threshold", 0.0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold < 1.0:
        raise ConfigError(f"Model.pfc_config.interclass_filtering_threshold must be in [0, 1) (0: off), got "
                          f"{threshold!r}")
    if model_cfg["class_num"] < 1:
        raise ConfigError(f"Model.class_num must be >= 1, got {model_cfg['class_num']}")


def check_optimizer(cfg):
    """The classifier is updated by the sparse twin of Optimizer.name: there must be one."""
    name = cfg["Optimizer"]["name"]
    if name not in registry.SPARSE_OPTIMIZERS:
        raise ConfigError(f"Optimizer.name={name}: there is no sparse version of it for the PartialFC weight "
                          f"(sparse optimizers: {', '.join(registry.SPARSE_OPTIMIZERS.names())})")


def check_fp16(cfg):
    f = cfg["FP16"]
    check_op_lists(f["fp16_custom_white_list"], f["fp16_custom_black_list"])
    check_loss_scaling(f["GradScaler"]["init_loss_scaling"], f["GradScaler"]["max_loss_scaling"])


def check_op_lists(white, black):
    """No op is both kept in fp32 and run in low precision (also checked by plsc.amp.AmpPolicy)."""
    both = {op for op in white or () if isinstance(op, str)} & {op for op in black or () if isinstance(op, str)}
    if both:
        raise ConfigError(f"FP16: ops {sorted(both)} are in both fp16_custom_white_list and fp16_custom_black_list")


def check_loss_scaling(init_loss_scaling, max_loss_scaling):
    """The scale starts at or below its ceiling (also checked by plsc.amp.LossScaler)."""
    if not max_loss_scaling >= init_loss_scaling:
        raise ConfigError(f"FP16.GradScaler.max_loss_scaling ({max_loss_scaling}) must be >= init_loss_scaling "
                          f"({init_loss_scaling})")


def check_train_batch(cfg):
    accum, batch_size = cfg["Global"]["accum_steps"], cfg["DataLoader"]["Train"]["sampler"]["batch_size"]
    if accum < 1:
        raise ConfigError(f"Global.accum_steps must be >= 1, got {accum}")
    if isinstance(batch_size, int) and accum > batch_size:
        raise ConfigError(f"Global.accum_steps={accum} splits each batch of "
                          f"DataLoader.Train.sampler.batch_size={batch_size} into micro-batches: it must be "
                          f"<= the batch size")


def eval_sets(cfg):
    """{set name: dataset spec} for every configured eval set (DataLoader.Eval.dataset: one or a list); a set is
    named by its set_name, else by its file or folder name."""
    spec = cfg["DataLoader"]["Eval"]["dataset"]
    specs = [] if spec is None else spec if isinstance(spec, list) else [spec]
    sets = {}
    for s in specs:
        path = s.get("bin_path") or s.get("image_root") or s.get("name")
        name = str(s.get("set_name") or os.path.splitext(os.path.basename(str(path).rstrip("/")))[0])
        if name in sets:
            raise ConfigError(f"DataLoader.Eval.dataset: two eval sets are named '{name}'")
        sets[name] = s
    return sets


def check_eval(cfg):
    """Eval sets are read whole, in file order, by one verification metric."""
    sampler = cfg["DataLoader"]["Eval"]["sampler"]
    if eval_sets(cfg):
        if sampler.get("name") not in ("BatchSampler", "DistributedBatchSampler"):
            raise ConfigError(f"DataLoader.Eval.sampler.name={sampler.get('name')!r}: evaluation reads every "
                              f"image once, split across ranks; use BatchSampler")
        for key in ("shuffle", "drop_last"):
            if sampler.get(key):
                raise ConfigError(f"DataLoader.Eval.sampler.{key}=true: verification embeds every pair in "
                                  f"file order (its folds are contiguous runs of pairs); set it to false")
    metrics = cfg["Metric"]["Eval"] or []
    if len(metrics) > 1:
        raise ConfigError(f"Metric.Eval: one verification metric, got {[next(iter(m)) for m in metrics]}")
