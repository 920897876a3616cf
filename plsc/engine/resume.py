"""Save / restore a training run, and start one from pretrained weights, through plsc.io.checkpoint.

    parts = TrainParts(cfg, backbone, head, opt, scaler, ema, distiller, state, rank, world_size, log)
    save_training(parts, "<run_dir>/latest");  restore_training(parts, "<run_dir>/latest")
    load_pretrained(parts, "output/IResNet50/best_model")   # fine-tuning: the backbone, and the FC when it fits

Every rank writes its own FC shard; rank 0 writes the backbone, the dense optimizer and the run
state. On restore each rank reads the shards it needs: at the same world size its own file, at
another world size all of them, merged and re-split for the new sharding. (plsc-eval and plsc-export
load weights through plsc.engine.inference_model; nothing here is for them.)
"""
import os
from dataclasses import dataclass

from plsc.distributed import barrier
from plsc.engine.preflight import is_plsc_prefix
from plsc.engine.pretrained import load_pretrained_backbone
from plsc.engine.state_io import join_state, layer_arrays, split_state
from plsc.errors import CheckpointError
from plsc.io import checkpoint as ckpt
from plsc.io import fc_shards
from plsc.models.loading import load_backbone


@dataclass
class TrainParts:
    """What a training checkpoint holds, and who reads and writes it."""
    cfg: dict
    backbone: object   # the (AMP-decorated) backbone Layer
    head: object       # the classifier (plsc.nn): its shard state
    opt: object        # the dense optimizer
    scaler: object     # plsc.amp.LossScaler
    ema: object        # plsc.engine.ema.BackboneEMA or None
    distiller: object  # plsc.engine.distill.Distiller or None
    state: dict        # the run state (epoch, step, data position, best metrics), updated in place on restore
    rank: int
    world_size: int
    log: object


def save_training(parts, final_dir):
    p, rank = parts, parts.rank
    if rank == 0:
        ckpt.begin(final_dir)
    barrier()
    tmp = ckpt.tmp_dir_for(final_dir)
    fc_shards.write(fc_shards.shard_file(tmp, rank), p.head.shard_state())
    if rank == 0:
        ckpt.save_arrays(os.path.join(tmp, "backbone.npz"), layer_arrays(p.backbone))
        if p.ema is not None:
            ckpt.save_arrays(os.path.join(tmp, "ema.npz"), p.ema.arrays())
        if p.distiller is not None and p.distiller.arrays():
            ckpt.save_arrays(os.path.join(tmp, "distill.npz"), p.distiller.arrays())
        arrays, rest = split_state(p.opt.state_dict())
        ckpt.save_arrays(os.path.join(tmp, "optimizer.npz"), arrays)
        ckpt.save_json(os.path.join(tmp, "optimizer.json"), rest)
        ckpt.save_json(os.path.join(tmp, "state.json"), {
            "train_state": p.state, "scaler": p.scaler.state_dict(), "world_size": p.world_size,
            "micro_global_batch": p.cfg["DataLoader"]["Train"]["sampler"]["batch_size"] * p.world_size,
            "class_num": p.cfg["Model"]["class_num"], "model": p.cfg["Model"]["name"],
            "config": p.cfg, "ema_updates": None if p.ema is None else p.ema.updates,
        })
    barrier()
    if rank == 0:
        ckpt.commit(final_dir, p.world_size)
        p.log.info(f"saved checkpoint {final_dir}")
    barrier()


def restore_training(parts, path):
    p, m = parts, parts.cfg["Model"]
    if is_plsc_prefix(path):
        raise CheckpointError(f"Global.checkpoint={path} is a PLSC checkpoint prefix: plsc resumes its own checkpoints "
                              f"(PLSC's .pdopt pickles PLSC's classes and is not read); start from its weights with "
                              f"-o Global.pretrained_model={path} (the backbone, and the FC when Model.class_num matches)")
    d = ckpt.resolve(path)
    ckpt.verify(d)
    state = ckpt.load_json(os.path.join(d, "state.json"))
    if state["class_num"] != m["class_num"]:
        raise CheckpointError(f"checkpoint {d} was trained with Model.class_num={state['class_num']} but the "
                              f"config has {m['class_num']}; to fine-tune on new classes use "
                              f"Global.pretrained_model instead of Global.checkpoint")
    load_backbone(p.backbone, ckpt.load_arrays(os.path.join(d, "backbone.npz")), f"checkpoint {d}", m["name"],
                  m["num_features"])
    opt_state = join_state(ckpt.load_arrays(os.path.join(d, "optimizer.npz")),
                           ckpt.load_json(os.path.join(d, "optimizer.json")))
    p.opt.set_state_dict(opt_state)
    if p.distiller is not None and p.distiller.proj is not None:
        file = os.path.join(d, "distill.npz")
        if not os.path.isfile(file):
            raise CheckpointError(f"checkpoint {d} has no distillation projection (distill.npz): it was not "
                                  f"trained with this Distill section")
        p.distiller.load_arrays(ckpt.load_arrays(file), file)
    p.head.load_shards(fc_shards.read_all(d, state["world_size"]))
    p.scaler.set_state_dict(state["scaler"])
    if p.ema is not None:
        _load_ema(p, d, state)
    p.state.update(state["train_state"])
    p.state.pop("last_saved_step", None)
    _convert_data_position(p, state)
    if state["world_size"] != p.world_size:
        p.log.info(f"re-sharded the FC from {state['world_size']} to {p.world_size} rank(s)")
    p.log.info(f"resumed from {d} at epoch {p.state['epoch']}, global step {p.state['global_step']}")
    barrier()


def _convert_data_position(parts, state):
    """Keep the position in the epoch when batch size x world size changed.

    Every rank takes every W-th sample of one global order per epoch, so after k batches of
    b images on W ranks exactly the first k*b*W samples of that order are consumed; the resumed
    run starts at the batch that begins there."""
    saved = state.get("micro_global_batch")
    now = parts.cfg["DataLoader"]["Train"]["sampler"]["batch_size"] * parts.world_size
    st = parts.state
    if not saved or saved == now or not st["batch_in_epoch"]:
        return
    samples = st["batch_in_epoch"] * saved
    batch = samples // now
    st["batch_in_epoch"] = batch
    note = "" if batch * now == samples else (f"; {samples - batch * now} samples of the interrupted batch are "
                                              f"read again (the new global batch does not divide the position)")
    parts.log.warning(f"global batch per step changed from {saved} to {now} images: resuming epoch "
                      f"{st['epoch']} at batch {batch} (sample {batch * now} of the epoch order){note}; the LR "
                      f"schedule continues from global step {st['global_step']} with the new steps per epoch")


def _load_ema(parts, d, state):
    path = os.path.join(d, "ema.npz")
    if not os.path.isfile(path):
        parts.log.warning(f"EMA is enabled but {d} has no ema.npz (saved without an EMA section): resuming with the "
                          f"average starting from its weights")
        parts.ema.reset()
        return
    parts.ema.load_arrays(ckpt.load_arrays(path), state.get("ema_updates") or 0, f"checkpoint {d}")


def load_pretrained(parts, path):
    """Fine-tuning: the backbone weights of `path` (a plsc checkpoint directory or a PLSC prefix, see
    plsc.engine.pretrained), and its classifier when Model.class_num matches (else the FC starts fresh)."""
    p, classes = parts, parts.cfg["Model"]["class_num"]
    pre = load_pretrained_backbone(p.backbone, p.cfg, path, p.log)
    if pre.plsc is not None:
        src = pre.plsc
        if src.fc is None:
            return
        if src.class_num != classes:
            p.log.info(f"the PLSC classifier has {src.class_num} classes, the config {classes}: the FC starts fresh")
            return
        p.head.load_shards(fc_shards.split_weight(src.fc, 1, src.path), weights_only=True)
        p.log.info(f"loaded the PLSC classifier too ({classes} classes, from {len(src.files) - 1} shard file(s))")
        return
    d, state = pre.directory, pre.state
    if state["class_num"] is None:  # plsc-import of a backbone-only file
        p.log.info(f"pretrained model {d} has no classifier (an imported backbone): the FC starts fresh")
        return
    if state["class_num"] != classes:
        p.log.info(f"pretrained model has {state['class_num']} classes, the config {classes}: the FC starts fresh")
        return
    p.head.load_shards(fc_shards.read_all(d, state["world_size"]), weights_only=True)
    p.log.info("loaded the FC weights too (same class_num)")
