"""Every config key plsc reads: its default, its type and a one-line doc, in one place.

`docs/config.md` is generated from this tree (`python -m plsc.config --markdown`). These are plsc's own keys;
PLSC's other spellings are translated into them before validation (plsc/config/plsc_compat.py).

Sections whose value is a mapping with a `name` (dataset, sampler, LRScheduler, Optimizer,
grad_clip) or a list of `{Name: {kwargs}}` items (Loss.Train, Metric.Eval, transform_ops) are
"registered": their keys are checked against the signature of the registered builder.
"""


class Key:
    """A leaf: default value, accepted type(s) and a one-line doc."""

    def __init__(self, default, types, doc, choices=None):
        self.default = default
        self.types = types if isinstance(types, tuple) else (types,)
        self.doc = doc
        self.choices = choices


class Registered:
    """A mapping {name: <registered builder>, **kwargs} checked against the builder's signature."""

    def __init__(self, registry, default, doc):
        self.registry = registry  # attribute name in plsc.registry, e.g. "DATASETS"
        self.default = default
        self.doc = doc


class RegisteredList:
    """A list of single-key mappings [{Name: {kwargs}}] checked against each builder's signature."""

    def __init__(self, registry, default, doc):
        self.registry = registry
        self.default = default
        self.doc = doc


NUM = (int, float)
OPT_STR = (str, type(None))
OPT_INT = (int, type(None))

_TRANSFORMS_DEFAULT = [
    {"DecodeImage": {"to_rgb": True, "channel_first": False}},
    {"RandFlipImage": {"flip_code": 1}},
    {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "order": ""}},
    {"ToCHWImage": None},
]


def _loader_section(train):
    return {
        "dataset": Registered(
            "DATASETS",
            {"name": "FaceRandomDataset"} if train else None,
            "dataset: {name: <registered dataset>, ...its kwargs}"
            + ("" if train else "; a list of such mappings evaluates several sets"),
        ),
        "sampler": Registered(
            "SAMPLERS",
            {"name": "DistributedBatchSampler" if train else "BatchSampler", "batch_size": 128,
             "drop_last": False, "shuffle": False},
            "batch sampler: {name, batch_size (per rank), drop_last, shuffle}",
        ),
        "loader": {
            "num_workers": Key(8 if train else 0, int, "worker processes per rank reading batches" +
                               (" (0: one reading thread)" if train else
                                " (0: one decoding thread; evaluation during training and plsc-eval)")),
            "use_shared_memory": Key(True, bool, "pass batches through shared memory"),
        },
    }


SCHEMA = {
    "Global": {
        "checkpoint": Key(None, OPT_STR, "checkpoint dir (e.g. output/IResNet50/latest) to resume from"),
        "pretrained_model": Key(None, OPT_STR, "weights to start from / evaluate / export: a plsc checkpoint dir, a "
                                "plsc-import output, or a PLSC prefix (output/IResNet50/latest -> latest.pdparams "
                                "[+ latest_rank{r}.pdparams])"),
        "finetune": Key(False, bool, "fine-tune Global.pretrained_model with the FineTune section's recipe (imprinted "
                        "classifier, backbone lr multiplier, frozen stages, BatchNorm mode, head-only warm-up, "
                        "evaluation before the first step); false: the weights are loaded and everything trains as "
                        "from scratch"),
        "output_dir": Key("./output/", str, "root of logs and checkpoints; a run writes <output_dir>/<Model.name>/"),
        "overwrite": Key(False, bool, "plsc-train into an <output_dir>/<Model.name>/ that already holds checkpoints "
                         "is refused unless resuming (Global.checkpoint) or this is true (that run's checkpoints are "
                         "then removed when training starts)"),
        "device": Key("gpu", str, "gpu or cpu; gpu falls back to cpu (with a log line) when Paddle has no CUDA",
                      choices=["gpu", "cpu"]),
        "flags": Key(None, (dict, type(None)), "Paddle flags to set (paddle.set_flags), PLSC's: merged over "
                     "FLAGS_cudnn_exhaustive_search 1, FLAGS_cudnn_batchnorm_spatial_persistent 1, "
                     "FLAGS_max_inplace_grad_add 8 on GPU runs (cuDNN flags are warned about and skipped on CPU)"),
        "save_interval": Key(1, int, "save a checkpoint every N save_units"),
        "save_unit": Key("epoch", str, "unit of save_interval", choices=["epoch", "step"]),
        "max_num_latest_checkpoint": Key(0, int, "PLSC's meaning: 0 writes no epoch_N checkpoint, N > 0 keeps the "
                                         "N newest epoch_N, < 0 keeps all (latest / best_model always)"),
        "eval_during_train": Key(True, bool, "evaluate while training"),
        "eval_interval": Key(2000, int, "evaluate every N eval_units"),
        "eval_unit": Key("step", str, "unit of eval_interval", choices=["step", "epoch"]),
        "accum_steps": Key(1, int, "PLSC's meaning: each batch of sampler.batch_size is split into N micro-batches "
                           "(one optimizer step per batch; the global batch stays batch_size x ranks)"),
        "epochs": Key(20, int, "number of epochs"),
        "max_train_step": Key(None, OPT_INT, "stop after this many optimizer steps (null: run all epochs)"),
        "print_batch_step": Key(100, int, "log every N steps"),
        "use_visualdl": Key(True, bool, "write VisualDL scalars to <output_dir>/<Model.name>/vdl"),
        "seed": Key(2022, int, "random seed (rank r uses seed + r for its data augmentation)"),
        "max_nan_skips": Key(10, int, "stop (saving the last good state) after N consecutive non-finite steps"),
    },
    "FP16": {
        "level": Key("O0", str, "mixed precision level: O0 fp32, O1 auto_cast, O2 fp16 params (+ fp32 master "
                     "weights with Optimizer.use_master_param); as in PLSC, O2 when the FP16 section is given "
                     "without a level, O0 when there is no FP16 section", choices=["O0", "O1", "O2"]),
        "dtype": Key("float16", str, "low-precision dtype", choices=["float16", "bfloat16"]),
        "fp16_custom_white_list": Key([], list, "extra ops run in low precision under O1/O2"),
        "fp16_custom_black_list": Key([], list, "extra ops kept in fp32 under O1/O2"),
        "GradScaler": {
            "init_loss_scaling": Key(1024.0, NUM, "initial loss scale (> 0)"),
            "max_loss_scaling": Key(2.0 ** 32, NUM, "the scale never grows above this"),
            "incr_ratio": Key(2.0, NUM, "scale growth factor (> 1)"),
            "decr_ratio": Key(0.5, NUM, "scale backoff factor (in (0, 1))"),
            "incr_every_n_steps": Key(1000, int, "grow the scale after N consecutive finite steps"),
            "decr_every_n_nan_or_inf": Key(2, int, "back off after N consecutive non-finite steps"),
            "use_dynamic_loss_scaling": Key(True, bool, "adjust the scale dynamically"),
            "no_unscale_list": Key([], list, "substrings of parameter names whose gradients are neither unscaled "
                                   "nor checked for inf / NaN (PLSC)"),
        },
    },
    "DistributedStrategy": {
        "data_parallel": Key(True, bool, "average backbone gradients across ranks"),
        "recompute": Key(False, (bool, dict), "recompute blocks in backward (saves activation memory): true (every "
                         "block) or PLSC's {layerlist_interval: k, names: [stage names]}: every k-th block of the "
                         "backbone's block lists, and the named stages (e.g. layer1) as one unit each"),
        "sync_bn": Key(False, bool, "BatchNorm with global-batch statistics across ranks (W ranks x b == 1 x W*b)"),
        "collective_timeout": Key(300, int, "seconds a collective may wait for other ranks before the job fails"),
    },
    "Model": {
        "name": Key("IResNet50", str, "registered backbone name"),
        "num_features": Key(512, int, "embedding size"),
        "data_format": Key("NCHW", str, "backbone layout (NHWC is the GPU fast path); input is always NCHW",
                           choices=["NCHW", "NHWC"]),
        "dropout": Key(0.0, NUM, "dropout before the embedding FC"),
        "mask_ratio": Key(None, (float, int, type(None)), "FaceViT: fraction of tokens masked in training (null: model default)"),
        "drop_path_rate": Key(None, (float, int, type(None)), "FaceViT: stochastic depth rate (null: model default)"),
        "arch_kwargs": Key({}, dict, "extra backbone builder kwargs for reduced sizes, e.g. {layers: [1,1,1,1]}"),
        "class_num": Key(93431, int, "number of identities"),
        "pfc_config": {
            "sample_ratio": Key(1.0, NUM, "PartialFC: fraction of each class shard sampled per step, in (0, 1]"),
            "sample_num": Key(None, OPT_INT, "PartialFC: rows sampled per rank per step (>= 1), instead of "
                              "sample_ratio (leave that at 1.0): a step's cost stops growing with the classes. Rule: "
                              "K = min(shard rows, max(sample_num, labels of the step)): every positive is kept, "
                              "a shard smaller than sample_num uses all its rows; null: use sample_ratio"),
            "storage_dtype": Key("float32", str, "PartialFC: dtype the class rows and their optimizer slots are "
                                 "stored in; bfloat16 / float16 halve the bytes per class (rows are read as float32, "
                                 "all math is float32, updates are written back with stochastic rounding; float16 "
                                 "stops the run with a checkpoint if a value leaves its range)",
                                 choices=["float32", "bfloat16", "float16"]),
            "interclass_filtering_threshold": Key(0.0, NUM, "PartialFC: arcface_torch's inter-class filtering for "
                                                  "noisy labels: a non-target cosine above this counts as 0 (no "
                                                  "push away from a likely duplicate identity); 0: off, in [0, 1)"),
            "model_parallel": Key(False, bool, "shard the FC by class across ranks (false: replicate it; PLSC's "
                                  "default)"),
            "update_rows": Key("sampled", str, "rows of the class shard the optimizer updates each step: sampled "
                               "(only the rows the step used) or all (every row's momentum decays and weight decay "
                               "applies each step: PLSC's dense update, its sparse_update false)",
                               choices=["sampled", "all"]),
        },
    },
    "Loss": {
        "Train": RegisteredList("LOSSES", [{"MarginLoss": {"m1": 1.0, "m2": 0.5, "m3": 0.0, "s": 64.0,
                                                           "weight": 1.0}}],
                                "margin head: [- MarginLoss {m1, m2, m3, s}] or [- AdaFaceLoss {m, h, s, t_alpha}]"),
    },
    "LRScheduler": Registered("LR_SCHEDULERS", {"name": "Poly", "learning_rate": 0.1, "decay_unit": "step",
                                                "warmup_steps": 0},
                              "learning rate schedule: {name: Poly|Cosine|Step|MultiStep|Constant, ...}"),
    "Optimizer": Registered("OPTIMIZERS", {"name": "Momentum", "momentum": 0.9, "weight_decay": 5e-4,
                                           "grad_clip": None},
                            "optimizer: {name: Momentum|AdamW, ..., grad_clip: {name: ClipGradByGlobalNorm, ...}}"),
    "DataLoader": {"Train": _loader_section(True), "Eval": _loader_section(False)},
    "Metric": {
        "Eval": RegisteredList("METRICS", [{"LFWAcc": {"flip_test": True}}], "verification metrics"),
    },
    "FineTune": {
        "imprint": Key(True, bool, "start the classifier from the pretrained backbone's class means of the training "
                       "set (one pass, sharded as the FC)"),
        "backbone_lr_mult": Key(0.1, NUM, "the backbone's learning rate is the schedule's times this (the FC's is "
                                "the schedule's); 0.1 measured best when the pretrained features carry over "
                                "(docs/finetune.md)"),
        "freeze_stages": Key(0, (int, str), "backbone stages kept as loaded, from the stem on (0-4), or 'all': only "
                             "the neck trains"),
        "head_warmup_steps": Key(0, int, "first steps in which only the classifier learns (backbone not stepped, "
                                 "its BatchNorm statistics not updated)"),
        "bn": Key("train", str, "BatchNorm layers: train, frozen_stats (running statistics kept and used) or "
                  "frozen (statistics and affine parameters kept)", choices=["train", "frozen_stats", "frozen"]),
        "eval_at_start": Key(True, bool, "evaluate the pretrained model before the first step and log each later "
                             "evaluation's change against it (needs evaluation sets)"),
    },
    "Distill": {
        "teacher": Key(None, OPT_STR, "a plsc checkpoint directory (plsc-train's or plsc-import's, any backbone) "
                       "whose embeddings the trained backbone also learns; null: no distillation"),
        "loss": Key("cosine", str, "per sample: cosine (1 - cos(student, teacher)) or l2 (mean squared error)",
                    choices=["cosine", "l2"]),
        "weight": Key(1.0, NUM, "the distillation loss is added to the margin loss times this"),
    },
    "EMA": {
        "enabled": Key(False, bool, "keep an exponential moving average of the backbone weights (true when an EMA "
                       "section is given, as in PLSC); saved and resumed with the checkpoints; plsc-eval / "
                       "plsc-export use it when the section is present"),
        "decay": Key(0.9999, NUM, "shadow = d * shadow + (1 - d) * weight"),
        "thres_steps": Key(True, bool, "d = min(decay, (1 + n) / (10 + n)) after n updates"),
        "ema_eval": Key(False, bool, "also evaluate the EMA weights when evaluating during training"),
        "eval_start_epoch": Key(0, int, "evaluate the EMA weights only after this many epochs"),
    },
    "Export": {
        "export_type": Key("onnx", str, "paddle (inference.json/pdiparams) or onnx", choices=["paddle", "onnx"]),
        "input_shape": Key([None, 3, 112, 112], list, "exported input shape (None = dynamic batch)"),
        "opset_version": Key(11, int, "ONNX opset"),
        "fp16": Key(False, bool, "export fp16 weights (GPU inference); default fp32"),
        "parity_check": Key(True, bool, "compare dygraph / inference / onnxruntime outputs after export"),
        "export_dir": Key(None, OPT_STR, "where to write; null: <output_dir>/<Model.name>/export"),
    },
}

REGISTERED_KWARGS = {
    # keys every registered LR scheduler accepts besides its own
    "LR_SCHEDULERS": {"name", "learning_rate", "decay_unit", "warmup_steps", "warmup_epochs", "warmup_start_lr",
                      "warmup_end_lr"},
    # keys every optimizer section accepts besides the optimizer's own
    "OPTIMIZERS": {"name", "grad_clip", "no_weight_decay_for_bn_bias"},
}
