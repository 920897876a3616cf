"""What every command that runs a model from a config does first (plsc-train's Trainer, and the model of
plsc-eval / plsc-export / plsc-ijb / plsc-embed): check its inputs, join the ranks, make the run directory,
log there, record the resolved config, pick the device, set the flags and seeds.

    run = start_run(cfg, "train")    # -> Run(rank, world_size, run_dir, log, device)
"""
import os
from dataclasses import dataclass

import numpy as np
import paddle

from plsc.amp import AmpPolicy
from plsc.config import dump_config
from plsc.distributed import barrier, init as init_distributed
from plsc.engine.builders import apply_flags, device_of
from plsc.engine.logger import setup_logger
from plsc.engine.preflight import check_start
from plsc.errors import ConfigError


@dataclass
class Run:
    rank: int
    world_size: int
    run_dir: str
    log: object
    device: str


def start_run(cfg, command):
    """command: "train", "eval" or "export" (names <run_dir>/<command>.log and <command>_config.yaml)."""
    g = cfg["Global"]
    check_start(cfg, command)  # inputs and outputs, before anything is written or any rank trains
    rank, world_size = init_distributed()
    run_dir = prepare_run_dir(g["output_dir"], cfg["Model"]["name"], rank)
    log = setup_logger(run_dir, rank, f"{command}.log")
    device = device_of(cfg, log)
    if rank == 0:
        text = dump_config(cfg)
        log.info("resolved config:\n" + text)
        with open(os.path.join(run_dir, f"{command}_config.yaml"), "w") as f:
            f.write(text)
    for line in getattr(cfg, "notes", ()):  # keys that are accepted but change nothing: one warning each
        log.warning(line)
    apply_flags(g["flags"], device, log.warning)
    paddle.seed(g["seed"])
    np.random.seed(g["seed"])
    return Run(rank, world_size, run_dir, log, device)


def amp_policy(cfg, device, log):
    """The FP16 section's policy on this device (a warning when the device has no low-precision kernels)."""
    amp = AmpPolicy.from_config(cfg["FP16"], device)
    if amp.level != "O0" and not amp.effective:
        log.warning(f"FP16.level={amp.level}: paddle.amp has no low-precision kernels on "
                    f"{device}; this run computes in fp32 (loss scaling and its checks still run)")
    return amp


def prepare_run_dir(output_dir, model_name, rank):
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
