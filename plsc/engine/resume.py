"""Save / restore a training run, and load pretrained weights, through plsc.io.checkpoint.

Every rank writes its own FC shard; rank 0 writes the backbone, the dense optimizer and the run
state. On restore each rank reads the shards it needs: at the same world size its own file, at
another world size all of them, merged and re-split for the new sharding.
"""
import os

from plsc.io import checkpoint as ckpt
from plsc.distributed import barrier
from plsc.engine.state_io import join_state, layer_arrays, split_state
from plsc.errors import CheckpointError
from plsc.io import fc_shards
from plsc.models.loading import load_backbone


def save_training(engine, final_dir):
    rank, world_size = engine.rank, engine.world_size
    if rank == 0:
        ckpt.begin(final_dir)
    barrier()
    tmp = ckpt.tmp_dir_for(final_dir)
    fc_shards.write(fc_shards.shard_file(tmp, rank), engine.head.shard_state())
    if rank == 0:
        ckpt.save_arrays(os.path.join(tmp, "backbone.npz"), layer_arrays(engine.backbone))
        if engine.ema is not None:
            ckpt.save_arrays(os.path.join(tmp, "ema.npz"), engine.ema.arrays())
        if engine.distiller is not None and engine.distiller.arrays():
            ckpt.save_arrays(os.path.join(tmp, "distill.npz"), engine.distiller.arrays())
        arrays, rest = split_state(engine.opt.state_dict())
        ckpt.save_arrays(os.path.join(tmp, "optimizer.npz"), arrays)
        ckpt.save_json(os.path.join(tmp, "optimizer.json"), rest)
        ckpt.save_json(os.path.join(tmp, "state.json"), {
            "train_state": engine.state, "scaler": engine.scaler.state_dict(), "world_size": world_size,
            "micro_global_batch": engine.cfg["DataLoader"]["Train"]["sampler"]["batch_size"] * world_size,
            "class_num": engine.cfg["Model"]["class_num"], "model": engine.cfg["Model"]["name"],
            "config": engine.cfg, "ema_updates": None if engine.ema is None else engine.ema.updates,
        })
    barrier()
    if rank == 0:
        ckpt.commit(final_dir, world_size)
        engine.log.info(f"saved checkpoint {final_dir}")
    barrier()


def restore_training(engine, path):
    if _is_plsc_prefix(path):
        raise CheckpointError(f"Global.checkpoint={path} is a PLSC checkpoint prefix: plsc resumes its own checkpoints "
                              f"(PLSC's .pdopt pickles PLSC's classes and is not read); start from its weights with "
                              f"-o Global.pretrained_model={path} (the backbone, and the FC when Model.class_num matches)")
    d = ckpt.resolve(path)
    ckpt.verify(d)
    state = ckpt.load_json(os.path.join(d, "state.json"))
    if state["class_num"] != engine.cfg["Model"]["class_num"]:
        raise CheckpointError(f"checkpoint {d} was trained with Model.class_num={state['class_num']} but the "
                              f"config has {engine.cfg['Model']['class_num']}; to fine-tune on new classes use "
                              f"Global.pretrained_model instead of Global.checkpoint")
    _load_backbone(engine, ckpt.load_arrays(os.path.join(d, "backbone.npz")), f"checkpoint {d}")
    opt_state = join_state(ckpt.load_arrays(os.path.join(d, "optimizer.npz")),
                           ckpt.load_json(os.path.join(d, "optimizer.json")))
    engine.opt.set_state_dict(opt_state)
    if engine.distiller is not None and engine.distiller.proj is not None:
        path = os.path.join(d, "distill.npz")
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint {d} has no distillation projection (distill.npz): it was not "
                                  f"trained with this Distill section")
        engine.distiller.load_arrays(ckpt.load_arrays(path), path)
    engine.head.load_shards(fc_shards.read_all(d, state["world_size"]))
    engine.scaler.set_state_dict(state["scaler"])
    if engine.ema is not None:
        _load_ema(engine, d, state, "resuming")
    engine.state.update(state["train_state"])
    engine.state.pop("last_saved_step", None)
    _convert_data_position(engine, state)
    if state["world_size"] != engine.world_size:
        engine.log.info(f"re-sharded the FC from {state['world_size']} to {engine.world_size} rank(s)")
    engine.log.info(f"resumed from {d} at epoch {engine.state['epoch']}, global step "
                    f"{engine.state['global_step']}")
    barrier()


def _convert_data_position(engine, state):
    """Keep the position in the epoch when batch size x world size changed.

    Every rank takes every W-th sample of one global order per epoch, so after k batches of
    b images on W ranks exactly the first k*b*W samples of that order are consumed; the resumed
    run starts at the batch that begins there."""
    saved = state.get("micro_global_batch")
    now = engine.cfg["DataLoader"]["Train"]["sampler"]["batch_size"] * engine.world_size
    st = engine.state
    if not saved or saved == now or not st["batch_in_epoch"]:
        return
    samples = st["batch_in_epoch"] * saved
    batch = samples // now
    st["batch_in_epoch"] = batch
    note = "" if batch * now == samples else (f"; {samples - batch * now} samples of the interrupted batch are "
                                              f"read again (the new global batch does not divide the position)")
    engine.log.warning(f"global batch per step changed from {saved} to {now} images: resuming epoch "
                       f"{st['epoch']} at batch {batch} (sample {batch * now} of the epoch order){note}; the LR "
                       f"schedule continues from global step {st['global_step']} with the new steps per epoch")


def _load_ema(engine, d, state, what):
    path = os.path.join(d, "ema.npz")
    if not os.path.isfile(path):
        engine.log.warning(f"EMA is enabled but {d} has no ema.npz (saved without an EMA section): {what} with the "
                           f"average starting from its weights")
        engine.ema.reset()
        return False
    engine.ema.load_arrays(ckpt.load_arrays(path), state.get("ema_updates") or 0, f"checkpoint {d}")
    return True


def _load_backbone(engine, arrays, source):
    m = engine.cfg["Model"]
    load_backbone(engine.backbone, arrays, source, m["name"], m["num_features"])


def _is_plsc_prefix(path):
    return not os.path.isdir(path) and (str(path).endswith(".pdparams") or os.path.isfile(f"{path}.pdparams"))


def load_pretrained(engine, path):
    """Backbone weights (and the FC when class_num matches) for fine-tuning, eval or export.

    path: a plsc checkpoint directory (plsc-train, plsc-import), or a PLSC file prefix
    (`output/IResNet50/latest` -> latest.pdparams [+ latest_rank{r}.pdparams]) read through plsc.interop."""
    if _is_plsc_prefix(path):
        return _load_plsc_prefix(engine, path)
    d = ckpt.resolve(path)
    ckpt.verify(d)
    _load_backbone(engine, ckpt.load_arrays(os.path.join(d, "backbone.npz")), f"pretrained model {d}")
    engine.log.info(f"loaded backbone weights from {d}")
    state = ckpt.load_json(os.path.join(d, "state.json"))
    if engine.mode != "train":
        if engine.ema is not None and _load_ema(engine, d, state, "evaluating / exporting its raw weights"):
            engine.ema.copy_to_backbone()
            engine.log.info(f"EMA section: using the EMA weights of {d} ({engine.ema.updates} updates)")
        return
    if state["class_num"] is None:  # plsc-import of a backbone-only file
        engine.log.info(f"pretrained model {d} has no classifier (an imported backbone): the FC starts fresh")
        return
    if state["class_num"] != engine.cfg["Model"]["class_num"]:
        engine.log.info(f"pretrained model has {state['class_num']} classes, the config "
                        f"{engine.cfg['Model']['class_num']}: the FC starts fresh")
        return
    engine.head.load_shards(fc_shards.read_all(d, state["world_size"]), weights_only=True)
    engine.log.info("loaded the FC weights too (same class_num)")


def _load_plsc_prefix(engine, path):
    """A PLSC checkpoint prefix, converted in memory as plsc-import would."""
    from plsc.interop import load_source

    from plsc.engine.preflight import take_source

    src = take_source(path, engine.cfg["Model"]["name"]) or load_source(path, model=engine.cfg["Model"]["name"])
    for line in src.notes:
        engine.log.info(f"{path}: {line}")
    _load_backbone(engine, src.backbone, f"PLSC weights {path}")
    engine.log.info(f"loaded backbone weights from the PLSC file {src.path}")
    if engine.mode != "train" or src.fc is None:
        return
    classes = engine.cfg["Model"]["class_num"]
    if src.class_num != classes:
        engine.log.info(f"the PLSC classifier has {src.class_num} classes, the config {classes}: the FC starts fresh")
        return
    engine.head.load_shards(fc_shards.split_weight(src.fc, 1, src.path), weights_only=True)
    engine.log.info(f"loaded the PLSC classifier too ({classes} classes, from {len(src.files) - 1} shard file(s))")
