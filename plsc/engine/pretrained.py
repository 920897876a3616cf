"""Global.pretrained_model's backbone weights into a built backbone, strictly (plsc.models.load_backbone).

    pre = load_pretrained_backbone(backbone, cfg, "output/IResNet50/latest", log)
    pre.directory, pre.state     # a plsc checkpoint directory (plsc-train's, plsc-import's) and its state.json
    pre.plsc                     # or a PLSC file prefix (latest -> latest.pdparams [+ latest_rank{r}.pdparams]),
                                 # converted in memory through plsc.interop as plsc-import would

Fine-tuning (plsc.engine.resume.load_pretrained) takes the classifier from it as well; the model plsc-eval,
plsc-export, plsc-ijb and plsc-embed run (plsc.engine.inference_model) takes the EMA weights
(plsc.engine.ema.load_ema_weights). Both read the backbone here.
"""
import os
from dataclasses import dataclass

from plsc.engine.preflight import is_plsc_prefix, take_source
from plsc.interop import load_source
from plsc.io import checkpoint as ckpt
from plsc.models.loading import load_backbone


@dataclass
class Pretrained:
    path: str
    directory: str = None  # a plsc checkpoint directory ...
    state: dict = None     # ... and its state.json
    plsc: object = None    # or the PLSC source (plsc.interop.Source: backbone, fc, class_num, notes, files)


def load_pretrained_backbone(backbone, cfg, path, log):
    """Load the backbone weights of `path` into `backbone` (all or nothing); -> Pretrained."""
    m = cfg["Model"]
    if is_plsc_prefix(path):
        # converted once per process: the start-up check (plsc.engine.preflight.check_weights) keeps its result
        src = take_source(path, m["name"]) or load_source(path, model=m["name"])
        for line in src.notes:
            log.info(f"{path}: {line}")
        load_backbone(backbone, src.backbone, f"PLSC weights {path}", m["name"], m["num_features"])
        log.info(f"loaded backbone weights from the PLSC file {src.path}")
        return Pretrained(path, plsc=src)
    d = ckpt.resolve(path)
    ckpt.verify(d)
    load_backbone(backbone, ckpt.load_arrays(os.path.join(d, "backbone.npz")), f"pretrained model {d}",
                  m["name"], m["num_features"])
    log.info(f"loaded backbone weights from {d}")
    return Pretrained(path, directory=d, state=ckpt.load_json(os.path.join(d, "state.json")))
