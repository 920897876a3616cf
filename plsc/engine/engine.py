"""The Trainer: everything a training run needs, built from the config; the train loop; evaluation hooks.

    trainer = Trainer(cfg)
    trainer.train()

It only trains: plsc-eval, plsc-export, plsc-ijb and plsc-embed build their model with
plsc.engine.inference_model.load_model (no optimizer, classifier, EMA average, watchdog or run state).

One training step (`train_step`) reads top-down: the loader batch split into Global.accum_steps
micro-batches, the FC rows of the step chosen once (`head.plan`), per micro-batch forward under
the AMP policy, margin loss, scaled backward (paddle.DataParallel all-reduces the backbone's
gradients during the last one), then one check of every gradient (finite on all ranks, unscale,
clip: the step's one host read), dense + sparse optimizer steps, scaler update. The loss stays on
the device; it is read only on logging steps. Checkpoints and evaluation hang off the loop.
"""
import os

import paddle

from plsc.amp import LossScaler
from plsc.io import checkpoint as ckpt
from plsc.engine.builders import build_train_loader
from plsc.models.build import build_backbone
from plsc.engine.dp import average_running_stats, data_parallel, no_sync, sync_batch_norms
from plsc.engine.ema import build_ema
from plsc.engine.evaluation import Evaluator
from plsc.engine.distill import Distiller
from plsc.engine.finetune import FineTune, imprint_classifier
from plsc.engine.inference_model import embed
from plsc.engine.logger import ScalarWriter, StepTimer, format_eta
from plsc.engine.preflight import remove_replaced_run
from plsc.engine.start import amp_policy, start_run
from plsc.engine.watchdog import Watchdog
from plsc.engine.resume import TrainParts, load_pretrained, restore_training, save_training
from plsc.distributed import shard_range
from plsc.errors import PlscError
from plsc.metrics.evaluator import format_table
from plsc.nn import build_head
from plsc.nn.storage import FCStorageOverflow
from plsc.optim.grad_step import GradCheck
from plsc.optim.lr import build_lr_schedule
from plsc.optim.optimizers import build_optimizer, build_sparse_optimizer


class Trainer:
    def __init__(self, cfg):
        self.cfg = cfg
        g = cfg["Global"]
        run = start_run(cfg, "train")  # checks every input and output first, before any rank trains
        self.rank, self.world_size, self.run_dir, self.log, self.device = \
            run.rank, run.world_size, run.run_dir, run.log, run.device
        self.watchdog = Watchdog(self.run_dir, self.rank, self.world_size,
                                 cfg["DistributedStrategy"]["collective_timeout"])
        self.backbone = build_backbone(cfg)
        if cfg["DistributedStrategy"]["sync_bn"]:
            self.backbone = sync_batch_norms(self.backbone, self.device, self.log)
        self.amp = amp_policy(cfg, self.device, self.log)
        self.evaluator = Evaluator(cfg, self.rank, self.world_size, self.log)
        self.ema = build_ema(cfg, self.backbone)
        self._build_training()
        if g["checkpoint"]:
            restore_training(self.parts(), g["checkpoint"])
        elif g["pretrained_model"]:
            load_pretrained(self.parts(), g["pretrained_model"])
            if self.ema is not None:
                self.ema.reset()  # the average starts from the fine-tuning weights
            if self.finetune is not None and cfg["FineTune"]["imprint"]:
                imprint_classifier(self.backbone, self.head, self._imprint_batches(), self.log)

    def parts(self):
        """What a checkpoint saves and restores (plsc.engine.resume)."""
        return TrainParts(self.cfg, self.backbone, self.head, self.opt, self.scaler, self.ema, self.distiller,
                          self.state, self.rank, self.world_size, self.log)

    def _note(self, *lines):
        """Keys that are accepted but change nothing: one warning line each (rank 0)."""
        for line in lines:
            self.log.warning(line)

    def _build_training(self):
        cfg, g = self.cfg, self.cfg["Global"]
        self.dataset, self.sampler, self.loader = build_train_loader(cfg, self.rank, self.world_size)
        self.inputs = getattr(self.dataset, "device_transform", None)  # uint8 batch -> normalized images
        if self.inputs is not None:
            self.log.info(f"training images cross the loader as uint8; on the device: {self.inputs}")
        batch_size = cfg["DataLoader"]["Train"]["sampler"]["batch_size"]
        self.head = build_head(cfg["Model"], cfg["Loss"]["Train"], g["seed"])
        # before the optimizer and DataParallel see the backbone: frozen parts take no gradient
        self.finetune = FineTune(cfg["FineTune"], self.backbone, self.log) if g["finetune"] else None
        self.distiller = Distiller(cfg["Distill"], cfg, self.log) if cfg["Distill"]["teacher"] else None
        self.steps_per_epoch = len(self.sampler)
        self.schedule = build_lr_schedule(cfg["LRScheduler"], self.steps_per_epoch, g["epochs"])
        self._note(*self.schedule.notes)
        self.opt, clip = build_optimizer(cfg["Optimizer"], _dense_trained(self.backbone, self.distiller), self.schedule(0),
                                         multi_precision=self.amp.level == "O2")
        self.backbone, self.opt = self.amp.decorate(self.backbone, self.opt,
                                                    excluded_layers=self.backbone.fp32_layers())
        self.model = data_parallel(self.backbone, cfg["DistributedStrategy"]["data_parallel"], self.world_size)
        self.fc_opt = self.head.set_optimizer(build_sparse_optimizer(
            cfg["Optimizer"], self.head.weight, every_row=cfg["Model"]["pfc_config"]["update_rows"] == "all",
            store=self.head.store))
        self.scaler = LossScaler.from_config(cfg["FP16"])
        self.grad_check = GradCheck(self.scaler, clip, self.world_size,
                                    no_unscale=cfg["FP16"]["GradScaler"]["no_unscale_list"])
        self.global_batch = batch_size * self.world_size
        self.state = {"epoch": 0, "batch_in_epoch": 0, "global_step": 0, "best": {}, "skipped_steps": 0,
                      "consecutive_skips": 0}
        self.writer = ScalarWriter(self.run_dir, g["use_visualdl"] and self.rank == 0)

    # ------------------------------------------------------------------ training
    def train(self):
        g = self.cfg["Global"]
        self.log.info(f"training {self.cfg['Model']['name']} on {self.world_size} rank(s), global batch "
                      f"{self.global_batch}, {self.steps_per_epoch} steps/epoch, {g['epochs']} epochs")
        if self.rank == 0:
            remove_replaced_run(self.run_dir, g, self.log)  # Global.overwrite: the earlier run's checkpoints
        if self.finetune is not None:
            self.finetune.start(self.state["global_step"])
            if self.cfg["FineTune"]["eval_at_start"] and self.state["global_step"] == 0:
                self._evaluate_pretrained()
        while self.state["epoch"] < g["epochs"] and not self._reached_max_step():
            self._train_epoch()
        if self.state.get("last_saved_step") != self.state["global_step"]:
            self.save("latest")
        if g["eval_during_train"] and self.evaluator.enabled and \
                self.state.get("last_eval_step") != self.state["global_step"]:
            self._evaluate_and_track()
        self.writer.close()
        return self.state

    def _reached_max_step(self):
        m = self.cfg["Global"]["max_train_step"]
        return m is not None and self.state["global_step"] >= m

    def _train_epoch(self):
        st = self.state
        self.sampler.set_epoch(st["epoch"], start_batch=st["batch_in_epoch"])
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(st["epoch"])
        self.backbone.train()
        batches = iter(self.loader)
        try:
            if self._run_batches(batches):
                return
        finally:
            batches.close()  # stops read-ahead (thread or workers) when the epoch ends early
        st["epoch"] += 1
        st["batch_in_epoch"] = 0
        self._after_epoch()

    def _run_batches(self, batches):
        """Train on the epoch's remaining batches; True when Global.max_train_step was reached."""
        st = self.state
        timer = StepTimer()
        for _ in range(st["batch_in_epoch"], self.steps_per_epoch):
            batch = next(batches)
            timer.data_ready()
            with self.watchdog(f"train step {st['global_step'] + 1}", step=st["global_step"] + 1):
                loss = self.train_step(batch)
            self.watchdog.beat(st["global_step"] + 1)
            timer.step_done()
            st["batch_in_epoch"] += 1
            st["global_step"] += 1
            self._after_step(loss, timer)
            if self._reached_max_step():
                return True
        return False

    def train_step(self, batch):
        """One optimizer step on one loader batch; returns the loss as a device scalar."""
        g, st = self.cfg["Global"], self.state
        paddle.seed((g["seed"] + 7919 * st["global_step"] + 104729 * self.rank) % (2 ** 31))
        micro = split_batch(self._images(batch), g["accum_steps"])
        sizes = [[int(labels.shape[0])] * self.world_size for _, labels in micro] if self._equal_batches else None
        plan = self.head.plan([labels for _, labels in micro], sizes)
        weights = _micro_weights(plan.sizes)
        total = None
        for i, (images, labels) in enumerate(micro):
            with no_sync(self.model, skip=i < len(micro) - 1):
                with self.amp.autocast():
                    features = self.model(images)
                loss = self.head(features, labels, plan, i)
                if self.distiller is not None:
                    loss = loss + self.distiller.loss(features, images)
                if len(micro) > 1:
                    loss = loss * weights[i]
                self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        _, fc_grad, _ = self.head.sparse_grad()
        dense = [p for p in self.backbone.parameters() if not p.stop_gradient]
        if self.distiller is not None:
            self.distiller.sync_grads(self.world_size)
            dense += self.distiller.parameters()
        verdict = self.grad_check([(p.name, p.grad) for p in dense],
                                  fc=(self.head.weight_name, fc_grad, self.head.model_parallel), loss=total,
                                  status=plan.label_status())
        lr = self.schedule(st["global_step"])
        if verdict.status:
            plan.raise_for_labels()
        if verdict.ok:
            backbone_lr = lr if self.finetune is None else self.finetune.backbone_lr(lr, st["global_step"])
            if backbone_lr is not None:  # None: a head-only warm-up step of fine-tuning
                self.opt.set_lr(backbone_lr)
                self.opt.step()
            self._fc_step(lr)
            if self.ema is not None:
                self.ema.update()
        self.scaler.update(not verdict.ok)
        self.opt.clear_grad()
        self.head.clear_sparse_grad()
        self._count_skip(not verdict.ok, total)
        self.last_lr = lr
        return total

    def _fc_step(self, lr):
        """The classifier's update; float16 class storage out of range: save, then stop (every rank)."""
        try:
            self.head.step(lr)
        except FCStorageOverflow:
            self.state["global_step"] += 1  # the step's batch was consumed: a resume continues after it
            self.state["batch_in_epoch"] += 1
            self.save("latest")
            raise

    def _images(self, batch):
        """(images, labels): uint8 batches (with their flips) normalized on the device, float ones as they are."""
        if self.inputs is None:
            return batch[0], batch[1]
        return self.inputs(batch[0], batch[2] if len(batch) > 2 else None), batch[1]

    @property
    def _equal_batches(self):
        """Every rank's batch has the same size (plsc's samplers guarantee it): no size exchange needed."""
        return getattr(self.sampler, "equal_batches_across_ranks", False)

    def _count_skip(self, skipped, loss):
        st = self.state
        if not skipped:
            st["consecutive_skips"] = 0
            return
        st["skipped_steps"] += 1
        st["consecutive_skips"] += 1
        self.log.warning(f"step {st['global_step'] + 1}: non-finite loss ({loss.item()}) or gradient; update skipped "
                         f"({st['skipped_steps']} skipped so far, loss scale now {self.scaler.scale_value:g})")
        limit = self.cfg["Global"]["max_nan_skips"]
        if limit and st["consecutive_skips"] >= limit:
            # this step's batch was consumed: count it, so a resume continues after it
            st["global_step"] += 1
            st["batch_in_epoch"] += 1
            self.save("latest")
            raise PlscError(f"{limit} consecutive steps had a non-finite loss or gradient (last at step "
                            f"{st['global_step']}); stopped. The last good state is saved in "
                            f"{os.path.join(self.run_dir, 'latest')}")

    def _after_step(self, loss, timer):
        g, st = self.cfg["Global"], self.state
        step = st["global_step"]
        steps_left = (g["epochs"] - st["epoch"]) * self.steps_per_epoch - st["batch_in_epoch"]
        if g["max_train_step"] is not None:
            steps_left = min(steps_left, g["max_train_step"] - step)
        if step % g["print_batch_step"] == 0 or step == 1 or steps_left == 0:  # first, every N-th and last step
            value = loss.item()  # the loss is read back on logging steps only
            if self.distiller is not None:
                self.log.info(f"distillation ({self.distiller.kind} x {self.distiller.weight:g}) "
                              f"{self.distiller.last.item():.6f} at step {step}")
            rc, bc = timer.averages()
            ips = self.global_batch / bc if bc > 0 else 0.0
            self.log.info(
                f"epoch {st['epoch']} step {st['batch_in_epoch']}/{self.steps_per_epoch} "
                f"global_step {step} lr {self.last_lr:.6f} loss: {value:.6f} reader_cost: {rc:.5f}s "
                f"batch_cost: {bc:.5f}s ips: {ips:.2f} images/sec eta: {format_eta(bc * steps_left)}")
            timer.reset()
            self.writer.add("train/loss", value, step)
            self.writer.add("train/lr", self.last_lr, step)
        if g["save_unit"] == "step" and step % g["save_interval"] == 0:
            self.save("latest")
        if g["eval_during_train"] and g["eval_unit"] == "step" and step % g["eval_interval"] == 0:
            self._evaluate_and_track()

    def _after_epoch(self):
        g, epoch = self.cfg["Global"], self.state["epoch"]  # epoch = number of finished epochs
        if g["save_unit"] == "epoch" and epoch % g["save_interval"] == 0:
            keep = g["max_num_latest_checkpoint"]  # PLSC: 0 -> no epoch_N at all, N > 0 -> the N newest, < 0 -> all
            if keep != 0:
                self.save(f"epoch_{epoch}")
            self.save("latest")
            if self.rank == 0 and keep > 0:
                ckpt.prune(self.run_dir, keep)
        if g["eval_during_train"] and g["eval_unit"] == "epoch" and epoch % g["eval_interval"] == 0:
            self._evaluate_and_track()

    # ------------------------------------------------------------------ evaluation / saving
    def embed(self, images):
        """np.float32 [N,3,112,112] -> np.float32 [N,D] with the backbone in eval mode."""
        return embed(self.backbone, self.amp, images)

    def evaluate(self):
        return self.evaluator.run(self.embed)

    def _evaluate_pretrained(self):
        """Fine-tuning: the pretrained model's figures before the first step, the baseline of every later eval."""
        if not self.evaluator.enabled:
            self.log.warning("FineTune.eval_at_start: no evaluation sets are configured (DataLoader.Eval), so "
                             "nothing tells whether fine-tuning helps")
            return
        with self.watchdog("evaluation of the pretrained model"):
            results = self.evaluate()
        self.state["pretrained_eval"] = {k: {"acc": r["acc"], "std": r["std"]} for k, r in results.items()}
        self.log.info("pretrained model, before fine-tuning:\n" + format_table(results))

    def _imprint_batches(self):
        """One pass over this rank's training batches (epoch 0's order), normalized as in training."""
        self.sampler.set_epoch(0)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(0)
        batches = iter(self.loader)
        try:
            for batch in batches:
                yield self._images(batch)
        finally:
            batches.close()

    def _evaluate_and_track(self):
        if not self.evaluator.enabled:
            return
        st = self.state
        average_running_stats(self.backbone)
        with self.watchdog("evaluation"):
            results = self.evaluate()
        st["last_eval_step"] = st["global_step"]
        improved = self.evaluator.track(results, st["best"], st["global_step"], self.writer)
        if "pretrained_eval" in st:
            self.log.info("against the pretrained model: " + _changes(st["pretrained_eval"], results))
        if improved:
            self.save("best_model")
        e = self.cfg["EMA"]
        if self.ema is not None and e["ema_eval"] and st["epoch"] >= e["eval_start_epoch"]:
            with self.ema.applied(), self.watchdog("evaluation of the EMA weights"):
                ema_results = self.evaluate()
            best = st.setdefault("best_ema", {})
            if self.evaluator.track(ema_results, best, st["global_step"], self.writer, tag="eval_ema", label="EMA "):
                self.save("best_model_ema")

    def save(self, name):
        with self.watchdog(f"saving checkpoint {name}"):
            average_running_stats(self.backbone)
            save_training(self.parts(), os.path.join(self.run_dir, name))
        if name == "latest":  # a best_model saved at the last step is no `latest`: train() still writes it
            self.state["last_saved_step"] = self.state["global_step"]


def split_batch(batch, parts):
    """A batch (images, labels) as `parts` micro-batches (PLSC's Global.accum_steps: the configured
    batch is split, not multiplied); sizes differ by at most one, empty parts are dropped."""
    images, labels = batch
    n = int(labels.shape[0])
    if parts == 1:
        return [(images, labels)]
    bounds = [shard_range(n, i, parts) for i in range(parts)]
    return [(images[a:b], labels[a:b]) for a, b in bounds if b > a]


def _micro_weights(sizes_list):
    """Weight of each micro-batch's mean loss in the step's mean loss (its share of the samples)."""
    counts = [sum(s) for s in sizes_list]
    total = sum(counts)
    return [c / total for c in counts]


def _dense_trained(backbone, distiller):
    """What the dense optimizer steps: the backbone, and a distillation projection when there is one."""
    if distiller is None or distiller.proj is None:
        return backbone
    both = paddle.nn.Layer()
    both.backbone, both.distill_proj = backbone, distiller.proj
    return both


def _changes(before, after):
    """'lfw 0.9500 -> 0.9617 (+0.0117); ...' for the sets of both."""
    return "; ".join(f"{k} {before[k]['acc']:.4f} -> {r['acc']:.4f} ({r['acc'] - before[k]['acc']:+.4f})"
                     for k, r in after.items() if k in before)

