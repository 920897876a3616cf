"""The large-scale classifier: margins (registered losses), PartialFC, sharded softmax CE.

    head = build_head(cfg["Model"], cfg["Loss"]["Train"], seed)
    loss = head(features, labels)    # fp32 mean loss over the global batch, same on every rank

The config's rules for these keys (one margin loss, sample_ratio / sample_num, storage dtype) are checked when
the config loads (plsc.config.rules.check_head; again here for callers that build a head from a dict); what
only the run knows (the world size) is checked here.
"""
from plsc.config.rules import check_head
from plsc.distributed import world_size
from plsc.errors import ConfigError
from plsc.nn import margins  # noqa: F401  (registers MarginLoss, AdaFaceLoss)
from plsc.nn.partial_fc import PartialFC
from plsc.registry import LOSSES


def build_head(model_cfg, loss_cfg, seed=0):
    check_head(model_cfg, loss_cfg)
    (name, kwargs), = loss_cfg[0].items()
    margin = LOSSES.build(name, **(kwargs or {}))
    pfc = model_cfg["pfc_config"]
    parallel = pfc["model_parallel"]
    classes, w = model_cfg["class_num"], world_size()
    if parallel and classes < w:
        raise ConfigError(f"Model.class_num={classes} is smaller than the world size {w}: every rank must own "
                          f"at least one class (or set Model.pfc_config.model_parallel=false)")
    return PartialFC(model_cfg["num_features"], classes, margin, sample_ratio=pfc["sample_ratio"],
                     model_parallel=parallel, seed=seed, sample_num=pfc.get("sample_num"),
                     storage_dtype=pfc.get("storage_dtype", "float32"),
                     interclass_filtering_threshold=pfc.get("interclass_filtering_threshold", 0.0))
