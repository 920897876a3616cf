"""The large-scale classifier: margins (registered losses), PartialFC, sharded softmax CE.

    head = build_head(cfg["Model"], cfg["Loss"]["Train"], seed)
    loss = head(features, labels)    # fp32 mean loss over the global batch, same on every rank
"""
from plsc.errors import ConfigError
from plsc.nn import margins  # noqa: F401  (registers MarginLoss, AdaFaceLoss)
from plsc.nn.partial_fc import PartialFC
from plsc.nn.storage import STORAGE_DTYPES


def build_head(model_cfg, loss_cfg, seed=0):
    from plsc.distributed import world_size
    from plsc.registry import LOSSES

    if not loss_cfg or len(loss_cfg) != 1:
        raise ConfigError(f"Loss.Train: expected exactly one margin loss (e.g. [- MarginLoss: {{m2: 0.5}}]), "
                          f"got {len(loss_cfg or [])} entries")
    (name, kwargs), = loss_cfg[0].items()
    margin = LOSSES.build(name, **(kwargs or {}))
    pfc = model_cfg["pfc_config"]
    ratio, parallel = pfc["sample_ratio"], pfc["model_parallel"]
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
    if storage not in STORAGE_DTYPES:
        raise ConfigError(f"Model.pfc_config.storage_dtype={storage!r}: expected one of {', '.join(STORAGE_DTYPES)}")
    if storage != "float32" and model_cfg["num_features"] % 2:
        raise ConfigError(f"Model.pfc_config.storage_dtype={storage} needs an even Model.num_features (16-bit rows "
                          f"move as pairs), got {model_cfg['num_features']}")
    threshold = pfc.get("interclass_filtering_threshold", 0.0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold < 1.0:
        raise ConfigError(f"Model.pfc_config.interclass_filtering_threshold must be in [0, 1) (0: off), got "
                          f"{threshold!r}")
    if margin.model_parallel is None:
        margin.model_parallel = parallel
    if bool(margin.model_parallel) != parallel:
        raise ConfigError(f"Loss.Train.0.{name}.model_parallel={margin.model_parallel} disagrees with "
                          f"Model.pfc_config.model_parallel={parallel}; set both the same")
    classes, w = model_cfg["class_num"], world_size()
    if classes < 1:
        raise ConfigError(f"Model.class_num must be >= 1, got {classes}")
    if parallel and classes < w:
        raise ConfigError(f"Model.class_num={classes} is smaller than the world size {w}: every rank must own "
                          f"at least one class (or set Model.pfc_config.model_parallel=false)")
    return PartialFC(model_cfg["num_features"], classes, margin, sample_ratio=ratio, model_parallel=parallel,
                     seed=seed, sample_num=sample_num, storage_dtype=storage,
                     interclass_filtering_threshold=threshold)
