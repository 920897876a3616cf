"""Fine-tuning a released model on one's own faces: the FineTune section's recipe.

With `Global.finetune: true` (PLSC's key, real here) and `Global.pretrained_model`, a run applies:

    imprint             the classifier starts from the pretrained backbone's class means: one pass over the
                        training set (eval mode, no gradient); features and labels are gathered from every
                        rank and each rank sums only the classes of its own FC shard, so memory is the
                        shard's (C / W rows), as for the FC itself. Row j = normalize(mean_i normalize(f_i))
                        over the images i of class j, at a fresh row's length (0.01 sqrt(D)); a class
                        without images keeps its random row (logged).
    backbone_lr_mult    the backbone's learning rate is the schedule's times this (the FC's is the schedule's)
    freeze_stages       0: none; N: the backbone's first N stages (stem included in the first); "all": every
                        stage, only the neck (the layers after the last stage) trains. A frozen layer's
                        parameters take no gradient and its BatchNorm statistics stay as loaded.
    head_warmup_steps   for the first N steps only the FC learns: the backbone is not stepped and its
                        BatchNorm layers use their running statistics (it computes the pretrained features)
    bn                  train (statistics and affine parameters learn), frozen_stats (running statistics
                        are used and kept; affine parameters learn), frozen (neither)
    eval_at_start       evaluate the pretrained model before the first step; every later evaluation logs its
                        change against it

BatchNorm layers that must not update their statistics get a forward pre-hook that puts them in eval mode
at each call, so `backbone.train()` (every epoch, after each evaluation) cannot undo it.
"""
import numpy as np
import paddle

from plsc.distributed import all_gather_sizes, gather_labels, gather_rows
from plsc.errors import ConfigError
from plsc.nn.partial_fc import INIT_STD

BN_MODES = ("train", "frozen_stats", "frozen")


def backbone_stages(backbone):
    """(stages, neck) of a plsc backbone: the trunk in forward order as lists of layers / parameters, and the
    layers after it. IResNet / AdaFace IR: stem + layer1, layer2, layer3, layer4; MobileFaceNet: the units
    between its stride-2 downsamplings (stem in the first, conv_sep in the last); FaceViT: the patch
    embedding (+ position embedding) with the first quarter of the blocks, then the other quarters."""
    if hasattr(backbone, "stages"):
        first, *rest = backbone.stages()
        return [[backbone.conv1, backbone.bn1, backbone.prelu, first], *[[s] for s in rest]], list(backbone.fp32_layers())
    if hasattr(backbone, "patch_embed"):
        blocks = list(backbone.blocks)
        cuts = [len(blocks) * i // 4 for i in range(5)]
        stages = [blocks[a:b] for a, b in zip(cuts, cuts[1:])]
        extra = [backbone.patch_embed, backbone.pos_embed] + ([backbone.mask_token] if backbone.mask_token is not None
                                                              else [])
        return [extra + stages[0], *stages[1:]], list(backbone.fp32_layers())
    if hasattr(backbone, "conv_sep"):
        units = list(backbone.blocks)
        starts = [i for i, u in enumerate(units) if getattr(u, "residual", True) is False]  # stride-2 units
        cuts = [0, *starts, len(units)]
        stages = [units[a:b] for a, b in zip(cuts, cuts[1:])]
        stages[0] = [backbone.stem] + stages[0]
        stages[-1] = stages[-1] + [backbone.conv_sep]
        return stages, list(backbone.fp32_layers())
    raise ConfigError(f"FineTune.freeze_stages: {type(backbone).__name__} does not say what its stages are")


def _parameters(items):
    out = []
    for item in items:
        out.extend(item.parameters() if isinstance(item, paddle.nn.Layer) else [item])
    return out


_BN_TYPES = (paddle.nn.BatchNorm1D, paddle.nn.BatchNorm2D, paddle.nn.BatchNorm3D, paddle.nn.SyncBatchNorm)


def _batch_norms(items):
    return [m for item in items if isinstance(item, paddle.nn.Layer) for m in item.sublayers(include_self=True)
            if isinstance(m, _BN_TYPES)]


class FineTune:
    """The recipe for one run (FineTune section, active with Global.finetune)."""

    def __init__(self, section, backbone, log):
        self.imprint = bool(section["imprint"])
        self.lr_mult = float(section["backbone_lr_mult"])
        self.warmup = int(section["head_warmup_steps"])
        self.eval_at_start = bool(section["eval_at_start"])
        self.log, self.backbone = log, backbone
        self.warming = False
        stages, neck = backbone_stages(backbone)
        n = section["freeze_stages"]
        n = len(stages) if n == "all" else n
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= len(stages):
            raise ConfigError(f"FineTune.freeze_stages={section['freeze_stages']!r}: {backbone.model_name} has "
                              f"{len(stages)} stages; give 0..{len(stages)} or 'all' (only the neck trains)")
        frozen = [x for stage in stages[:n] for x in stage]
        for p in _parameters(frozen):
            p.stop_gradient = True
        every_bn = _batch_norms(list(backbone.children()))
        bn_mode = section["bn"]
        if bn_mode == "frozen":
            for m in every_bn:
                for p in m.parameters():
                    p.stop_gradient = True
        self.fixed_stats = set(map(id, _batch_norms(frozen))) | (set(map(id, every_bn)) if bn_mode != "train"
                                                                  else set())
        for m in every_bn:
            m.register_forward_pre_hook(self._bn_hook(id(m) in self.fixed_stats))
        trainable = sum(int(np.prod(p.shape)) for p in backbone.parameters() if not p.stop_gradient)
        total = sum(int(np.prod(p.shape)) for p in backbone.parameters())
        log.info(f"fine-tuning: {n} of {len(stages)} backbone stages frozen, BatchNorm {bn_mode}, backbone lr x "
                 f"{self.lr_mult:g}, {self.warmup} head-only warm-up steps; {trainable:,} of {total:,} backbone "
                 f"parameters train")

    def _bn_hook(self, always_fixed):
        def hook(layer, inputs):  # the backbone's mode, except for statistics that must not move
            layer.training = self.backbone.training and not (always_fixed or self.warming)
        return hook

    def backbone_lr(self, lr, step):
        """The backbone's learning rate at `step` (0-based), or None while only the head learns."""
        self.warming = step + 1 < self.warmup  # the next forward (step + 1) is still in the warm-up
        return None if step < self.warmup else lr * self.lr_mult

    def start(self, step):
        """Before the first step of a run (fresh or resumed): BatchNorm mode of the warm-up."""
        self.warming = step < self.warmup


@paddle.no_grad()
def imprint_classifier(backbone, head, loader, log):
    """FC rows = the normalized mean of the unit embeddings of each class (see the module docstring)."""
    w = head.weight
    rows, dim = w.shape
    sums = np.zeros((rows, dim), dtype=np.float64)
    counts = np.zeros(rows, dtype=np.int64)
    was_training = backbone.training
    backbone.eval()
    images_seen = 0
    try:
        for batch in loader:
            images, labels = batch
            f = backbone(images).astype("float32")
            f = f / paddle.clip(paddle.linalg.norm(f, axis=1, keepdim=True), min=1e-12)
            sizes = all_gather_sizes(int(labels.shape[0]))
            feats = gather_rows(f, sizes, sum_grads=False).numpy().astype(np.float64)
            labs = gather_labels(labels.reshape([-1]).astype("int64"), sizes).numpy()
            images_seen += len(labs)
            local = labs - head.start
            mine = (local >= 0) & (local < rows)
            np.add.at(sums, local[mine], feats[mine])
            np.add.at(counts, local[mine], 1)
    finally:
        if was_training:
            backbone.train()
    have = counts > 0
    means = sums[have] / np.linalg.norm(sums[have], axis=1, keepdims=True).clip(min=1e-12)
    weight = head.weight_float32()  # any storage dtype (plsc.nn.storage)
    # the direction is the class mean; the length a fresh row's (INIT_STD * sqrt(D)): the classifier
    # normalizes its rows, so a row's step is lr / |w|: unit rows would learn ~1 / (INIT_STD^2 D) times slower
    weight[have] = (means * (INIT_STD * np.sqrt(dim))).astype(np.float32)
    head.set_weight_float32(weight)
    missing = int((~have).sum())
    log.info(f"fine-tuning: classifier imprinted from {images_seen} images: {int(have.sum())} of {rows} rows of "
             f"this rank's shard are class means" + (f"; {missing} classes without images keep random rows"
                                                     if missing else ""))
    return counts
