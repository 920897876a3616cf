"""The configured backbone: Model (+ DistributedStrategy.recompute) -> a registered backbone."""
from plsc.registry import MODELS


def build_backbone(cfg):
    m = cfg["Model"]
    kwargs = {"num_features": m["num_features"], "data_format": m["data_format"], "dropout": m["dropout"],
              "recompute": cfg["DistributedStrategy"]["recompute"]}
    for key in ("mask_ratio", "drop_path_rate"):  # FaceViT options; passed only when set
        if m[key] is not None:
            kwargs[key] = m[key]
    if m["arch_kwargs"]:
        kwargs["arch_kwargs"] = dict(m["arch_kwargs"])
    return MODELS.build(m["name"], **kwargs)
