"""Build each part of a run from its config section through the registries."""
import paddle

from plsc.data.loader import build_loader
from plsc.env import tune_allocator
from plsc.errors import ConfigError
from plsc.registry import DATASETS, SAMPLERS


def build_dataset(spec, seed):
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    return DATASETS.build(spec["name"], seed=seed, **kwargs)


def build_train_loader(cfg, rank, world_size):
    section = cfg["DataLoader"]["Train"]
    seed = cfg["Global"]["seed"]
    dataset = build_dataset(section["dataset"], seed)
    num_classes = getattr(dataset, "num_classes", None)
    if num_classes is not None and num_classes != cfg["Model"]["class_num"]:
        raise ConfigError(
            f"Model.class_num is {cfg['Model']['class_num']} but the training dataset "
            f"({section['dataset']['name']}) has {num_classes} classes; set -o Model.class_num={num_classes}")
    s = section["sampler"]
    sampler = SAMPLERS.build(s["name"], dataset=dataset, seed=seed, rank=rank, world_size=world_size,
                             **{k: v for k, v in s.items() if k != "name"})
    if len(sampler) == 0:
        raise ConfigError(f"the training set has {len(dataset)} samples: fewer than one batch of "
                          f"{s.get('batch_size')} per rank across {world_size} ranks (drop_last={s.get('drop_last')})")
    if hasattr(dataset, "defer_to_device"):
        dataset.defer_to_device()  # uint8 batches; flip + normalize in the train step (plsc.data.device_transform)
    loader_cfg = section["loader"]
    loader = build_loader(dataset, sampler, num_workers=loader_cfg["num_workers"],
                          use_shared_memory=loader_cfg["use_shared_memory"])
    return dataset, sampler, loader


def device_of(cfg, log):
    want = cfg["Global"]["device"]
    if want == "gpu" and not paddle.is_compiled_with_cuda():
        log.info("Global.device is gpu but this Paddle build has no CUDA: running on cpu")
        want = "cpu"
    if want == "gpu":
        paddle.set_device(f"gpu:{paddle.distributed.ParallelEnv().device_id}")
    else:
        paddle.set_device("cpu")
        tune_allocator()  # CPU runs only: GPU runs keep glibc's defaults
    return want


PLSC_GPU_FLAGS = {"FLAGS_cudnn_exhaustive_search": 1, "FLAGS_cudnn_batchnorm_spatial_persistent": 1,
                  "FLAGS_max_inplace_grad_add": 8}


def apply_flags(flags, device, note):
    """Global.flags, PLSC's meaning: merged over PLSC's GPU defaults and set with paddle.set_flags on GPU runs.
    On CPU runs the defaults are not set and a user's cuDNN flag is skipped with a note."""
    user = dict(flags or {})
    merged = ({**PLSC_GPU_FLAGS, **user} if device == "gpu" else
              {k: v for k, v in user.items() if "cudnn" not in k.lower()})
    for k in sorted(set(user) - set(merged)):
        note(f"Global.flags.{k} has no effect on a CPU run (a cuDNN flag)")
    for k, v in merged.items():
        try:
            paddle.set_flags({k: v})
        except (ValueError, TypeError, RuntimeError) as e:
            raise ConfigError(f"Global.flags.{k}={v!r}: Paddle refused it ({str(e).strip().splitlines()[0]})") from None
