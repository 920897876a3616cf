"""The Paddle half of tools/make_interop_fixtures.py (one process per simulated rank): PLSC fixtures
written by PLSC's own model classes and Model.save.

Two shims, both needed only because PLSC's code is from the Paddle 2.x era and hard-codes its widths:
- `_plsc_import_shims`: PLSC's model files `import paddle.fluid` (removed in Paddle 3) for two names
  (the eager parameter class and `core.is_compiled_with_dist`); a stand-in module gives them, taken
  from public Paddle 3 API; PLSC's package __init__ (which imports every task) is bypassed.
- `thin_layers`: PLSC's IResNet and MobileFaceNet take no width arguments (64..512 are literals), so
  a thin model is built by PLSC's own constructors while paddle.nn's Conv2D / BatchNorm / PReLU /
  Linear are wrapped to map each channel count through the cut table (grouped convs keep their
  channels per group, as the torch half cuts them). Only public constructor arguments are used: no
  private attribute of a Paddle layer is read or written.
BatchNorm statistics are measured with public forward pre-hooks and written with set_state_dict.
"""
import contextlib
import os
import sys
import types

import numpy as np

from make_interop_fixtures import CLASSES, IRESNET_CUT, MBF_CUT, SEED, images, to_input


@contextlib.contextmanager
def thin_layers(paddle, sizes):
    """While active, paddle.nn layers built by any code have every channel count c replaced by sizes.get(c, c)."""
    nn = paddle.nn
    cut = lambda c: sizes.get(c, c)  # noqa: E731

    class Conv2D(nn.Conv2D):
        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                     *args, **kwargs):
            new_out = cut(out_channels)
            groups = groups * new_out // out_channels if groups > 1 else 1  # channels per group kept
            super().__init__(cut(in_channels), new_out, kernel_size, stride, padding, dilation, groups, *args,
                             **kwargs)

    class BatchNorm2D(nn.BatchNorm2D):
        def __init__(self, num_features, *args, **kwargs):
            super().__init__(cut(num_features), *args, **kwargs)

    class BatchNorm1D(nn.BatchNorm1D):
        def __init__(self, num_features, *args, **kwargs):
            super().__init__(cut(num_features), *args, **kwargs)

    class PReLU(nn.PReLU):
        def __init__(self, num_parameters=1, *args, **kwargs):
            super().__init__(cut(num_parameters), *args, **kwargs)

    class Linear(nn.Linear):
        def __init__(self, in_features, out_features, *args, **kwargs):
            super().__init__(cut(in_features), cut(out_features), *args, **kwargs)

    thin = {"Conv2D": Conv2D, "BatchNorm2D": BatchNorm2D, "BatchNorm1D": BatchNorm1D, "PReLU": PReLU,
            "Linear": Linear}
    saved = {k: getattr(nn, k) for k in thin}
    for k, cls in thin.items():
        setattr(nn, k, cls)
    try:
        yield
    finally:
        for k, cls in saved.items():
            setattr(nn, k, cls)


def plsc_part(args):
    """Runs in a fresh process per simulated rank: PLSC's package shadows plsc's, so nothing of plsc is imported."""
    import paddle

    _plsc_import_shims(args.plsc, paddle)
    from plsc.models.face_vit import FaceViT
    from plsc.models.iresnet import IBasicBlock, IResNet
    from plsc.models.mobilefacenet import MobileFaceNet

    rank, world = int(os.environ.get("PADDLE_TRAINER_ID", 0)), int(os.environ.get("PADDLE_TRAINERS_NUM", 1))
    rng = np.random.default_rng(SEED + 7)
    out = args.tmp if args.full else args.out

    def randomize(model):
        """As the torch part: random affine / PReLU / LayerNorm, measured-then-perturbed BN statistics."""
        norms = [m for m in model.sublayers() if isinstance(m, (paddle.nn.BatchNorm1D, paddle.nn.BatchNorm2D))]
        for m in norms:
            c = m.weight.shape[0]
            m.weight.set_value(rng.uniform(0.5, 1.5, c).astype("float32"))
            m.bias.set_value(rng.uniform(-0.2, 0.2, c).astype("float32"))
        for m in model.sublayers():
            if isinstance(m, paddle.nn.PReLU):
                (w,) = m.parameters()
                w.set_value(rng.uniform(0.05, 0.6, w.shape).astype("float32"))
            elif isinstance(m, paddle.nn.LayerNorm):
                m.weight.set_value(rng.uniform(0.5, 1.5, m.weight.shape).astype("float32"))
                m.bias.set_value(rng.uniform(-0.3, 0.3, m.bias.shape).astype("float32"))
        seen = {}

        def record(layer, inputs):  # returns None: the input goes on unchanged
            seen[id(layer)] = inputs[0].numpy()

        hooks = [m.register_forward_pre_hook(record) for m in norms]
        model.eval()
        for m in norms:  # normalise by the batch's statistics, as a BN in training does (the torch part: momentum 1)
            m.train()
        with paddle.no_grad():
            model(paddle.to_tensor(to_input(images(SEED + 2, 8))))
        for h in hooks:
            h.remove()
        for m in norms:
            x = seen[id(m)]
            axes = tuple(i for i in range(x.ndim) if i != 1)
            mean, var = x.mean(axis=axes), x.var(axis=axes)
            mean = mean + 0.2 * np.sqrt(var) * rng.standard_normal(mean.shape[0])
            var = var * rng.uniform(0.7, 1.3, var.shape[0])
            m.set_state_dict({**{k: v.numpy() for k, v in m.state_dict().items()},
                              "_mean": mean.astype("float32"), "_variance": var.astype("float32")})
        model.eval()
        head = model.head
        start = head.class_start
        rows = np.stack([np.random.default_rng(1000 + start + i).normal(0, 0.1, head.embedding_size)
                         for i in range(head.num_local)]).astype("float32")
        head.weight.set_value(rows)

    def build(name):
        paddle.seed(SEED)
        mp = {"model_parallel": world > 1, "sample_ratio": 1.0}
        if name == "plsc_r50":
            return IResNet(IBasicBlock, [3, 4, 14, 3], num_features=512, class_num=CLASSES, pfc_config=mp)
        if name == "plsc_iresnet_thin":
            with thin_layers(paddle, IRESNET_CUT):
                return IResNet(IBasicBlock, [1, 1, 1, 1], num_features=8, class_num=CLASSES, pfc_config=mp)
        if name == "plsc_mbf_thin":
            with thin_layers(paddle, MBF_CUT):
                return MobileFaceNet(num_features=8, blocks=(1, 1, 1, 1), scale=1, class_num=CLASSES, pfc_config=mp)
        return FaceViT(img_size=112, patch_size=9, num_features=8, class_num=CLASSES, embed_dim=16, depth=1,
                       num_heads=8, mask_ratio=0.1, pfc_config=mp)

    name = args.plsc_model
    model = build(name)
    randomize(model)
    model.save(os.path.join(out, name), local_rank=rank, rank=rank)  # PLSC's own save
    if rank == 0:
        model.eval()
        with paddle.no_grad():
            emb = model(paddle.to_tensor(to_input(images()))).numpy()
        np.save(os.path.join(args.tmp, f"{name}.emb.npy"), emb)
    full = np.stack([np.random.default_rng(1000 + i).normal(0, 0.1, model.head.embedding_size)
                     for i in range(CLASSES)]).astype("float32")
    np.save(os.path.join(args.tmp, f"{name}.fc.npy"), full)


def _plsc_import_shims(plsc_dir, paddle):
    """Import PLSC's model files without its package __init__ (which imports every task) and give its
    Paddle 2.x `paddle.fluid` imports the two names they use, taken from public Paddle 3 API."""
    for name, sub in (("plsc", "plsc"), ("plsc.models", "plsc/models"), ("plsc.utils", "plsc/utils")):
        mod = types.ModuleType(name)
        mod.__path__ = [os.path.join(plsc_dir, sub)]
        sys.modules[name] = mod
    fluid = types.ModuleType("paddle.fluid")
    fluid.framework = types.ModuleType("paddle.fluid.framework")
    fluid.framework.EagerParamBase = type(paddle.nn.Linear(1, 1).weight)
    fluid.core = types.ModuleType("paddle.fluid.core")
    fluid.core.is_compiled_with_dist = paddle.is_compiled_with_distribute
    paddle.fluid = fluid
    sys.modules.update({"paddle.fluid": fluid, "paddle.fluid.framework": fluid.framework,
                        "paddle.fluid.core": fluid.core})
    try:
        import scipy  # noqa: F401  (PLSC's vision_transformer imports it for pretrained pos-embed resizing only)
    except ImportError:
        sys.modules["scipy"] = types.ModuleType("scipy")
