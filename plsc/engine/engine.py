"""The Engine: everything a run needs, built from the config; the train loop; evaluation hooks.

    engine = Engine(cfg, mode="train")   # or "eval" / "export"
    engine.train()

One training step (`train_step`) reads top-down: forward under the AMP policy, margin loss,
scaled backward, gradient averaging, unscale + finiteness check (all ranks agree), clip,
dense + sparse optimizer steps, scaler update. Checkpoints and evaluation hang off the loop.
"""
import os
import time

import numpy as np
import paddle

from plsc.amp import AmpPolicy, LossScaler
from plsc.config import dump_config
from plsc.engine import checkpoint as ckpt
from plsc.engine.builders import build_backbone, build_train_loader, device_of
from plsc.engine.dp import average_grads, average_running_stats, barrier, broadcast_from_rank0, world
from plsc.engine.evaluation import Evaluator
from plsc.engine.logger import ScalarWriter, setup_logger
from plsc.engine.watchdog import Watchdog
from plsc.engine.resume import load_pretrained, restore_training, save_training
from plsc.errors import ConfigError, PlscError
from plsc.nn import build_head
from plsc.optim.lr import build_lr_schedule
from plsc.optim.optimizers import build_optimizer
from plsc.optim.sparse_momentum import build_sparse_optimizer


class Engine:
    def __init__(self, cfg, mode="train"):
        self.cfg, self.mode = cfg, mode
        g = cfg["Global"]
        self.rank, self.world_size = world()
        self.run_dir = _prepare_run_dir(g["output_dir"], cfg["Model"]["name"], self.rank)
        self.log = setup_logger(self.run_dir, self.rank, f"{mode}.log")
        self.device = device_of(cfg, self.log)
        self.watchdog = Watchdog(self.run_dir, self.rank, self.world_size,
                                 cfg["DistributedStrategy"]["collective_timeout"])
        self._log_config()
        paddle.seed(g["seed"])
        np.random.seed(g["seed"])
        self.backbone = build_backbone(cfg)
        if cfg["DistributedStrategy"]["sync_bn"]:
            self.backbone = sync_batch_norms(self.backbone, self.device, self.log)
        self.amp = AmpPolicy.from_config(cfg["FP16"], self.device)
        if self.amp.level != "O0" and not self.amp.effective:
            self.log.warning(f"FP16.level={self.amp.level}: paddle.amp has no low-precision kernels on "
                             f"{self.device}; this run computes in fp32 (loss scaling and its checks still run)")
        self.evaluator = Evaluator(cfg, self.rank, self.world_size, self.log)
        if mode == "train":
            self._build_training()
        if g["pretrained_model"] and not (mode == "train" and g["checkpoint"]):
            load_pretrained(self, g["pretrained_model"])
        if mode == "train" and g["checkpoint"]:
            restore_training(self, g["checkpoint"])

    def _build_training(self):
        cfg, g = self.cfg, self.cfg["Global"]
        if g["accum_steps"] < 1:
            raise ConfigError(f"Global.accum_steps must be >= 1, got {g['accum_steps']}")
        self.dataset, self.sampler, self.loader = build_train_loader(cfg, self.rank, self.world_size)
        self.head = build_head(cfg["Model"], cfg["Loss"]["Train"], g["seed"])
        self.steps_per_epoch = len(self.sampler) // g["accum_steps"]
        if self.steps_per_epoch == 0:
            raise ConfigError(f"Global.accum_steps={g['accum_steps']} exceeds the {len(self.sampler)} "
                              f"batches of an epoch")
        self.schedule = build_lr_schedule(cfg["LRScheduler"], self.steps_per_epoch, g["epochs"])
        self.opt, self.clip = build_optimizer(cfg["Optimizer"], self.backbone, self.schedule(0),
                                              multi_precision=self.amp.level == "O2")
        self.backbone, self.opt = self.amp.decorate(self.backbone, self.opt,
                                                    excluded_layers=self.backbone.fp32_layers())
        self.head_opt = build_sparse_optimizer(cfg["Optimizer"], self.head, multi_precision=self.amp.level == "O2")
        self.scaler = LossScaler.from_config(cfg["FP16"])
        broadcast_from_rank0(self.backbone)
        self.global_batch = cfg["DataLoader"]["Train"]["sampler"]["batch_size"] * self.world_size * g["accum_steps"]
        self.state = {"epoch": 0, "batch_in_epoch": 0, "global_step": 0, "best": {}, "skipped_steps": 0,
                      "consecutive_skips": 0}
        self.writer = ScalarWriter(self.run_dir, g["use_visualdl"] and self.rank == 0)
        leftover = len(self.sampler) % g["accum_steps"]
        if leftover:
            self.log.warning(f"each epoch has {len(self.sampler)} batches per rank; with accum_steps="
                             f"{g['accum_steps']} the last {leftover} batch(es) of every epoch are not used")

    # ------------------------------------------------------------------ training
    def train(self):
        g = self.cfg["Global"]
        self.log.info(f"training {self.cfg['Model']['name']} on {self.world_size} rank(s), global batch "
                      f"{self.global_batch}, {self.steps_per_epoch} steps/epoch, {g['epochs']} epochs")
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
        g, st = self.cfg["Global"], self.state
        accum = g["accum_steps"]
        self.sampler.set_epoch(st["epoch"], start_batch=st["batch_in_epoch"])
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(st["epoch"])
        self.backbone.train()
        batches = iter(self.loader)
        timer = _Timer()
        for _ in range(st["batch_in_epoch"] // accum, self.steps_per_epoch):
            micro = [next(batches) for _ in range(accum)]
            timer.data_ready()
            with self.watchdog(f"train step {st['global_step'] + 1}", step=st["global_step"] + 1):
                loss = self.train_step(micro)
            self.watchdog.beat(st["global_step"] + 1)
            timer.step_done()
            st["batch_in_epoch"] += accum
            st["global_step"] += 1
            self._after_step(loss, timer)
            if self._reached_max_step():
                return
        st["epoch"] += 1
        st["batch_in_epoch"] = 0
        self._after_epoch()

    def train_step(self, micro_batches):
        g, st = self.cfg["Global"], self.state
        paddle.seed((g["seed"] + 7919 * st["global_step"] + 104729 * self.rank) % (2 ** 31))
        total = 0.0
        for images, labels in micro_batches:
            with self.amp.autocast():
                features = self.backbone(images)
            loss = self.head(features, labels) / len(micro_batches)
            self.scaler.scale(loss).backward()
            self.head_opt.accumulate()
            total += loss.item()
        if self.cfg["DistributedStrategy"]["data_parallel"]:
            average_grads(self.backbone.parameters())
        grads = [p.grad for p in self.backbone.parameters() if p.grad is not None] + self.head_opt.grads()
        found_inf = self.scaler.unscale_and_check(grads) or not np.isfinite(total)
        lr = self.schedule(st["global_step"])
        if not found_inf:
            if self.clip is not None:
                self.clip([(p.name, p.grad) for p in self.backbone.parameters()], self.head_opt.named_grads(),
                          all_reduce=paddle.distributed.all_reduce if self.world_size > 1 else None)
            self.opt.set_lr(lr)
            self.opt.step()
            self.head_opt.step(lr)
        self.scaler.update(found_inf)
        self.opt.clear_grad()
        self.head_opt.clear_grad()
        self._count_skip(found_inf, total)
        self.last_lr = lr
        return total

    def _count_skip(self, skipped, loss):
        st = self.state
        if not skipped:
            st["consecutive_skips"] = 0
            return
        st["skipped_steps"] += 1
        st["consecutive_skips"] += 1
        self.log.warning(f"step {st['global_step'] + 1}: non-finite loss ({loss}) or gradient; update skipped "
                         f"({st['skipped_steps']} skipped so far, loss scale now {self.scaler.scale_value:g})")
        limit = self.cfg["Global"]["max_nan_skips"]
        if limit and st["consecutive_skips"] >= limit:
            # this step's batch was consumed: count it, so a resume continues after it
            st["global_step"] += 1
            st["batch_in_epoch"] += self.cfg["Global"]["accum_steps"]
            self.save("latest")
            raise PlscError(f"{limit} consecutive steps had a non-finite loss or gradient (last at step "
                            f"{st['global_step']}); stopped. The last good state is saved in "
                            f"{os.path.join(self.run_dir, 'latest')}")

    def _after_step(self, loss, timer):
        g, st = self.cfg["Global"], self.state
        step = st["global_step"]
        if step % g["print_batch_step"] == 0 or step == 1:
            steps_left = (g["epochs"] - st["epoch"]) * self.steps_per_epoch - st["batch_in_epoch"] // g["accum_steps"]
            if g["max_train_step"] is not None:
                steps_left = min(steps_left, g["max_train_step"] - step)
            rc, bc = timer.averages()
            ips = self.global_batch / bc if bc > 0 else 0.0
            self.log.info(
                f"epoch {st['epoch']} step {st['batch_in_epoch'] // g['accum_steps']}/{self.steps_per_epoch} "
                f"global_step {step} lr {self.last_lr:.6f} loss: {loss:.6f} reader_cost: {rc:.5f}s "
                f"batch_cost: {bc:.5f}s ips: {ips:.2f} images/sec eta: {_fmt_eta(bc * steps_left)}")
            timer.reset()
        self.writer.add("train/loss", loss, step)
        self.writer.add("train/lr", self.last_lr, step)
        if g["save_unit"] == "step" and step % g["save_interval"] == 0:
            self.save("latest")
        if g["eval_during_train"] and g["eval_unit"] == "step" and step % g["eval_interval"] == 0:
            self._evaluate_and_track()

    def _after_epoch(self):
        g, epoch = self.cfg["Global"], self.state["epoch"]  # epoch = number of finished epochs
        if g["save_unit"] == "epoch" and epoch % g["save_interval"] == 0:
            self.save(f"epoch_{epoch}")
            self.save("latest")
            if self.rank == 0:
                ckpt.prune(self.run_dir, g["max_num_latest_checkpoint"])
        if g["eval_during_train"] and g["eval_unit"] == "epoch" and epoch % g["eval_interval"] == 0:
            self._evaluate_and_track()

    # ------------------------------------------------------------------ evaluation / saving
    def embed(self, images):
        """np.float32 [N,3,112,112] -> np.float32 [N,D] with the backbone in eval mode."""
        was_training = self.backbone.training
        self.backbone.eval()
        with paddle.no_grad(), self.amp.autocast():
            out = self.backbone(paddle.to_tensor(images)).astype("float32").numpy()
        if was_training:
            self.backbone.train()
        return out

    def evaluate(self):
        return self.evaluator.run(self.embed)

    def _evaluate_and_track(self):
        if not self.evaluator.enabled:
            return
        st = self.state
        average_running_stats(self.backbone)
        with self.watchdog("evaluation"):
            results = self.evaluate()
        st["last_eval_step"] = st["global_step"]
        improved = self.evaluator.track(results, st["best"], st["global_step"], self.writer)
        if improved:
            self.save("best_model")

    def save(self, name):
        with self.watchdog(f"saving checkpoint {name}"):
            average_running_stats(self.backbone)
            save_training(self, os.path.join(self.run_dir, name))
        self.state["last_saved_step"] = self.state["global_step"]

    def _log_config(self):
        if self.rank != 0:
            return
        text = dump_config(self.cfg)
        self.log.info("resolved config:\n" + text)
        with open(os.path.join(self.run_dir, f"{self.mode}_config.yaml"), "w") as f:
            f.write(text)


def sync_batch_norms(model, device, log):
    """DistributedStrategy.sync_bn: Paddle's SyncBatchNorm on GPUs, plsc's collective version elsewhere."""
    if device == "gpu":
        model = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        log.info("sync_bn: BatchNorm layers converted to paddle.nn.SyncBatchNorm")
        return model
    from plsc.nn.sync_bn import convert_sync_bn

    log.info(f"sync_bn: {convert_sync_bn(model)} BatchNorm layers normalize with global-batch statistics")
    return model


class _Timer:
    def __init__(self):
        self.reset()
        self._t = time.perf_counter()

    def reset(self):
        self.reader, self.batch, self.n = 0.0, 0.0, 0

    def data_ready(self):
        now = time.perf_counter()
        self.reader += now - self._t
        self._data_t = now

    def step_done(self):
        now = time.perf_counter()
        self.batch += now - self._t
        self.n += 1
        self._t = now

    def averages(self):
        return (self.reader / max(1, self.n), self.batch / max(1, self.n))


def _fmt_eta(seconds):
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _prepare_run_dir(output_dir, model_name, rank):
    run_dir = os.path.join(output_dir, model_name)
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, f".write_probe_{rank}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"Global.output_dir: cannot write to {run_dir} ({e.strerror})") from None
    barrier()
    return run_dir
