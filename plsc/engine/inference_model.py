"""The model plsc-eval, plsc-export, plsc-ijb and plsc-embed run from a config: the configured backbone with
Global.pretrained_model's weights, strictly loaded (its EMA weights when the config has an EMA section).

    model = load_model(cfg, "eval")    # <run_dir>/eval.log and eval_config.yaml ("export": export.log, ...)
    emb = model.embed(images)          # np.float32 [N,3,112,112] -> np.float32 [N,D]
    model.backbone                     # the paddle Layer (plsc-export traces it)

It builds what inference needs and nothing else: the start-up check of the weights, the ranks, the run
directory with its log and resolved config, the device, the backbone and the AMP policy. No classifier,
optimizer, EMA average, watchdog or run state: those are the Trainer's (plsc.engine.engine). An exported
model (plsc.io.exported.is_exported) needs no config: plsc.inference.load_embedder runs it.
"""
import os
from dataclasses import dataclass

import paddle

from plsc.engine.ema import load_ema_weights
from plsc.engine.pretrained import load_pretrained_backbone
from plsc.engine.start import amp_policy, start_run
from plsc.io import checkpoint as ckpt
from plsc.models.build import build_backbone


@dataclass
class InferenceModel:
    backbone: object
    amp: object
    rank: int
    world_size: int
    run_dir: str
    log: object

    def embed(self, images):
        return embed(self.backbone, self.amp, images)


def embed(backbone, amp, images):
    """np.float32 [N,3,112,112] -> np.float32 [N,D] with the backbone in eval mode (its mode is restored after:
    the Trainer evaluates through this too)."""
    was_training = backbone.training
    backbone.eval()
    with paddle.no_grad(), amp.autocast():
        out = backbone(paddle.to_tensor(images)).astype("float32").numpy()
    if was_training:
        backbone.train()
    return out


def load_model(cfg, command="eval"):
    """The backbone of Global.pretrained_model as the config builds it, in eval mode; -> InferenceModel.
    command: "eval" or "export" (names the log and the resolved config in <output_dir>/<Model.name>/)."""
    run = start_run(cfg, command)
    backbone = build_backbone(cfg)
    amp = amp_policy(cfg, run.device, run.log)
    path = cfg["Global"]["pretrained_model"]
    if path:
        pre = load_pretrained_backbone(backbone, cfg, path, run.log)
        if cfg["EMA"]["enabled"] and pre.directory is not None:
            _use_ema_weights(backbone, pre, run.log)
    backbone.eval()
    return InferenceModel(backbone, amp, run.rank, run.world_size, run.run_dir, run.log)


def _use_ema_weights(backbone, pre, log):
    d = pre.directory
    path = os.path.join(d, "ema.npz")
    if not os.path.isfile(path):
        log.warning(f"EMA is enabled but {d} has no ema.npz (saved without an EMA section): evaluating / exporting "
                    f"its raw weights")
        return
    load_ema_weights(backbone, ckpt.load_arrays(path), f"checkpoint {d}")
    log.info(f"EMA section: using the EMA weights of {d} ({pre.state.get('ema_updates') or 0} updates)")
