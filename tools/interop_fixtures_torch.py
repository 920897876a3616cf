"""The torch half of tools/make_interop_fixtures.py (run by it under --torch-python): insightface
arcface_torch and AdaFace fixtures written by torch / PyTorch Lightning with the projects' own classes."""
import os
import sys
import tempfile
import types

import numpy as np

from make_interop_fixtures import (ADA_CUT, ADA_SE_CUT, CLASSES, IRESNET_CUT, MBF_CUT, SAVE_ALL_CUT, SEED, cut_shape,
                                   images, to_input)


def torch_part(args):
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)

    def uniform(lo, hi, shape):
        return torch.from_numpy(rng.uniform(lo, hi, shape).astype(np.float32))

    @torch.no_grad()
    def randomize(model, bgr=False):
        """Random affine / PReLU / LayerNorm parameters; then BatchNorm running statistics measured on
        calibration images (one pass, BN layers in train mode) and perturbed, so the signal survives the
        depth and the statistics are far from their initial 0 / 1."""
        norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
        for m in norms:
            c = m.running_mean.shape[0]
            if m.affine:
                m.weight.data.copy_(uniform(0.5, 1.5, c))
                m.bias.data.copy_(uniform(-0.2, 0.2, c))
        for m in model.modules():
            if isinstance(m, nn.PReLU):
                m.weight.data.copy_(uniform(0.05, 0.6, m.weight.shape))
            elif isinstance(m, nn.LayerNorm):
                m.weight.data.copy_(uniform(0.5, 1.5, m.weight.shape))
                m.bias.data.copy_(uniform(-0.3, 0.3, m.bias.shape))
        model.eval()
        for m in norms:
            m.train()
            m.momentum = 1.0
        model(torch.from_numpy(to_input(images(SEED + 2, 8), bgr)))
        for m in norms:
            std = m.running_var.sqrt()
            m.running_mean.add_(0.2 * std * torch.from_numpy(rng.standard_normal(std.shape[0]).astype(np.float32)))
            m.running_var.mul_(uniform(0.7, 1.3, std.shape[0]))
            m.num_batches_tracked.fill_(int(rng.integers(1, 1000)))
            m.momentum = 0.1
        model.eval()

    @torch.no_grad()
    def cut(model, sizes, overrides=None):
        """Every parameter / buffer -> its first k channels on each axis (sizes: full -> k); grouped convs
        keep their channels per group; the source's forward then runs on the thinner net."""
        overrides = overrides or {}
        for mod_name, m in model.named_modules():
            old_out = m.out_channels if isinstance(m, nn.Conv2d) else None
            for leaf, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
                key = f"{mod_name}.{leaf}" if mod_name else leaf
                if t.ndim == 0:
                    continue
                shape = cut_shape(t.shape, sizes, overrides.get(key))
                new = t[tuple(slice(0, n) for n in shape)].clone()
                if isinstance(t, nn.Parameter):
                    setattr(m, leaf, nn.Parameter(new, requires_grad=t.requires_grad))
                else:
                    setattr(m, leaf, new)
            if isinstance(m, nn.Conv2d):
                if m.groups > 1:  # grouped / depthwise: the same channels per group, fewer groups
                    m.groups = m.groups * m.weight.shape[0] // old_out
                m.out_channels, m.in_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
            elif isinstance(m, nn.Linear):
                m.out_features, m.in_features = m.weight.shape
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.num_features = m.running_mean.shape[0]
        return model

    @torch.no_grad()
    def embed(model, bgr=False):
        model.eval()
        out = model(torch.from_numpy(to_input(images(), bgr)))
        return (out[0] if isinstance(out, tuple) else out).numpy()

    def check_randomized(model, name):
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                assert not torch.all(m.running_var == 1) and not torch.all(m.running_mean == 0), name
            if isinstance(m, nn.PReLU):
                assert not torch.all(m.weight == 0.25), name

    results, meta = {}, {}
    sys.path.insert(0, args.arcface)  # its backbones/ package, and losses.py, partial_fc_v2.py, lr_scheduler.py
    _timm_stand_in()
    from backbones.iresnet import IBasicBlock, IResNet, iresnet50
    from backbones.mobilefacenet import MobileFaceNet, get_mbf
    from backbones.vit import VisionTransformer

    # ---- insightface
    def insightface(name, model, expect):
        randomize(model)
        check_randomized(model, name)
        results[name] = embed(model)
        path = os.path.join(args.tmp if args.full else args.out, f"{name}.pth")
        torch.save(model.state_dict(), path)  # as arcface_torch's train_v2.py saves model.pt
        meta[name] = dict(expect, file=f"{name}.pth", format="insightface-pt")
        if args.full:
            meta[name]["path"] = path

    if args.full:
        insightface("arcface_r50", iresnet50(num_features=512), {"model": "IResNet50"})
        insightface("arcface_mbf", get_mbf(False, 512), {"model": "MobileFaceNet_base"})
        insightface("arcface_vit_t", VisionTransformer(img_size=112, patch_size=9, num_classes=512, embed_dim=256,
                                                       depth=12, num_heads=8, drop_path_rate=0.1, norm_layer="ln",
                                                       mask_ratio=0.1), {"model": "FaceViT_tiny_patch9_112"})
    else:
        insightface("arcface_r18_thin", cut(IResNet(IBasicBlock, [2, 1, 1, 1], num_features=8), IRESNET_CUT),
                    {"model": "IResNet18", "num_features": 8,
                     "arch_kwargs": {"layers": [2, 1, 1, 1], "widths": [8, 16, 16, 24]}})
        insightface("arcface_mbf_thin", cut(MobileFaceNet(False, 8, blocks=(1, 1, 1, 1), scale=1), MBF_CUT),
                    {"model": "MobileFaceNet_base", "num_features": 8,
                     "arch_kwargs": {"blocks": [1, 1, 1, 1], "scale": 1, "width": 8}})
        insightface("arcface_mbf_large_thin", cut(MobileFaceNet(False, 8, blocks=(2, 1, 1, 1), scale=1), MBF_CUT),
                    {"model": "MobileFaceNet_large", "num_features": 8,
                     "arch_kwargs": {"blocks": [2, 1, 1, 1], "scale": 1, "width": 8}})
        insightface("arcface_vit_small", VisionTransformer(img_size=112, patch_size=9, num_classes=8, embed_dim=16,
                                                           depth=2, num_heads=8, drop_path_rate=0.0,
                                                           norm_layer="ln", mask_ratio=0.1),
                    {"model": "FaceViT_tiny_patch9_112", "num_features": 8,
                     "arch_kwargs": {"embed_dim": 16, "depth": 2}, "model_options": {"mask_ratio": 0.1}})
        model = cut(IResNet(IBasicBlock, [1, 1, 1, 1], num_features=8), SAVE_ALL_CUT)
        randomize(model)
        check_randomized(model, "arcface_save_all_states")
        results["arcface_save_all_states"] = embed(model)
        save_all_states(model, os.path.join(args.out, "arcface_save_all_states.pt"))
        meta["arcface_save_all_states"] = {"model": "IResNet18", "num_features": 8, "format": "insightface-pt",
                                           "file": "arcface_save_all_states.pt",
                                           "arch_kwargs": {"layers": [1, 1, 1, 1], "widths": [4, 8, 8, 8]}}
        _dtype_fixture(torch, args.out, meta)

    # ---- AdaFace
    sys.path.insert(0, args.adaface)
    import net

    def adaface(name, arch, keep, sizes, nf, expect, **cut_kwargs):
        model = net.build_model(arch)
        if keep is not None:
            model.body = nn.Sequential(*[model.body[i] for i in keep])
        if sizes is not None:
            full_in = model.output_layer[3].in_features
            w3 = sizes[512]
            cut(model, sizes, {"output_layer.3.weight": (nf, full_in // 512 * w3), "output_layer.3.bias": (nf,),
                               "output_layer.4.running_mean": (nf,), "output_layer.4.running_var": (nf,)})
        randomize(model, bgr=True)
        path = os.path.join(args.tmp if args.full else args.out, f"{name}.ckpt")
        lightning_checkpoint(model, arch, path, args.adaface, nf if sizes is not None else 512)
        check_randomized(model, name)
        results[name] = embed(model, bgr=True)
        meta[name] = dict(expect, file=f"{name}.ckpt", format="adaface-ckpt", bgr=True)
        if args.full:
            meta[name]["path"] = path

    if args.full:
        adaface("adaface_ir50", "ir_50", None, None, 512, {"model": "IR_50"})
    else:
        adaface("adaface_ir18_thin", "ir_18", [0, 1, 2, 4, 6], ADA_CUT, 8,
                {"model": "IR_18", "num_features": 8,
                 "arch_kwargs": {"layers": [2, 1, 1, 1], "widths": [8, 12, 16, 24]}})
        adaface("adaface_irse50_thin", "ir_se_50", [0, 1, 3, 7, 21], ADA_SE_CUT, 8,
                {"model": "IR_SE_50", "num_features": 8,
                 "arch_kwargs": {"layers": [2, 1, 1, 1], "widths": [16, 20, 24, 32]}})
    return results, meta


def _timm_stand_in():
    """insightface's vit.py imports DropPath, to_2tuple, trunc_normal_ from timm. timm needs torchvision, which
    has no CPU wheel for this torch here; when timm cannot be imported, these three small helpers stand in
    (DropPath is not used at drop_path_rate 0 / in eval; trunc_normal_ only initialises)."""
    try:
        import timm.models.layers  # noqa: F401
        return
    except Exception:
        pass
    import torch
    from torch import nn

    class DropPath(nn.Module):
        def __init__(self, p=0.0):
            super().__init__()
            self.p = p

        def forward(self, x):
            if not self.training or self.p == 0:
                return x
            keep = torch.rand(x.shape[0], *([1] * (x.ndim - 1)), device=x.device) >= self.p
            return x * keep / (1 - self.p)

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath, layers.to_2tuple = DropPath, (lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v))
    layers.trunc_normal_ = lambda t, std=1.0, **kw: nn.init.trunc_normal_(t, std=std, **kw)
    for name in ("timm", "timm.models"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["timm.models.layers"] = layers


def save_all_states(backbone, path):
    """What arcface_torch's train_v2.py writes with cfg.save_all_states (checkpoint_gpu_<rank>.pt) on 1 rank,
    with its own PartialFC_V2, CombinedMarginLoss and PolynomialLRWarmup and the SGD it builds, after one
    lr-0 step (so the optimizer holds momentum buffers). Two things differ, because this torch is CPU-only
    and newer: PartialFC_V2.forward moves tensors to CUDA, so the step's loss is a plain softmax over its
    weight (the file's structure, not the loss, is what the fixture is about); PolynomialLRWarmup passes
    `verbose=` to torch's LRScheduler, which torch 2.13 no longer takes, so its __init__ body runs without it."""
    import torch
    from torch import distributed
    from torch.nn.functional import cross_entropy, linear, normalize

    from losses import CombinedMarginLoss
    from lr_scheduler import PolynomialLRWarmup
    from partial_fc_v2 import PartialFC_V2

    class Warmup(PolynomialLRWarmup):
        def __init__(self, optimizer, warmup_iters, total_iters, power=1.0):
            torch.optim.lr_scheduler.LRScheduler.__init__(self, optimizer)
            self.total_iters, self.power, self.warmup_iters = total_iters, power, warmup_iters

    with tempfile.TemporaryDirectory() as tmp:
        distributed.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=0, world_size=1)
        try:
            pfc = PartialFC_V2(CombinedMarginLoss(64, 1.0, 0.5, 0.0, 0), 8, CLASSES, 1.0, False)
        finally:
            distributed.destroy_process_group()
    opt = torch.optim.SGD(params=[{"params": backbone.parameters()}, {"params": pfc.parameters()}], lr=0.0,
                          momentum=0.9, weight_decay=5e-4)
    lr_scheduler = Warmup(opt, warmup_iters=2, total_iters=20)
    backbone.eval()  # the BatchNorm statistics stay the ones the expected embeddings were computed with
    x = torch.from_numpy(to_input(images(SEED + 1, 4)))
    loss = cross_entropy(64 * linear(normalize(backbone(x)), normalize(pfc.weight)), torch.arange(4) % CLASSES)
    loss.backward()
    opt.step()
    lr_scheduler.step()
    torch.save({"epoch": 1, "global_step": 1, "state_dict_backbone": backbone.state_dict(),
                "state_dict_softmax_fc": pfc.state_dict(), "state_optimizer": opt.state_dict(),
                "state_lr_scheduler": lr_scheduler.state_dict()}, path)


def _dtype_fixture(torch, out, meta):
    """Tensors of every float width, a transposed view, an offset view and ints: the reader's dtype handling."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 8 - 1
    sd = {"f32": base, "f16": base.half(), "bf16": base.bfloat16(), "f64": base.double(), "t": base.t(),
          "row": base[2], "col": base[:, 3], "i64": torch.arange(5), "scalar": torch.tensor(3.5)}
    torch.save(sd, os.path.join(out, "dtypes.pt"))
    expected = {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}
    np.savez(os.path.join(out, "dtypes_expected.npz"), **expected)
    meta["dtypes"] = {"file": "dtypes.pt", "expected": "dtypes_expected.npz"}


def lightning_checkpoint(model, arch, path, adaface_dir, nf):
    """A real PyTorch Lightning .ckpt of a LightningModule shaped like AdaFace's train_val.Trainer (`self.model`:
    net.py backbone, `self.head`: head.py AdaFace; hyper-parameters from AdaFace's config.py). AdaFace's own
    Trainer needs bcolz/sklearn and Lightning 1.x; this module keeps its attribute names, so the state_dict keys
    are the same (`model.*`, `head.kernel`, `head.t`, ...). One step at lr 0 fills the optimizer state (of the
    head only, to keep the fixture small: momentum buffers of the backbone would double the file)."""
    import warnings

    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint

    import config
    import head as ada_head

    warnings.filterwarnings("ignore")
    argv, sys.argv = sys.argv, ["main.py", "--arch", arch, "--head", "adaface", "--m", "0.4", "--h", "0.333",
                                "--lr_milestones", "12,20,24", "--epochs", "26", "--custom_num_class", str(CLASSES)]
    try:
        hparams = vars(config.get_args())
    finally:
        sys.argv = argv

    class Trainer(pl.LightningModule):
        def __init__(self, **kwargs):
            super().__init__()
            self.save_hyperparameters()
            self.model = model
            self.head = ada_head.build_head("adaface", embedding_size=nf, class_num=CLASSES, m=self.hparams.m,
                                            h=self.hparams.h, t_alpha=self.hparams.t_alpha, s=self.hparams.s)

        def training_step(self, batch, batch_idx):
            x, y = batch
            emb, norm = self.model(x)
            return torch.nn.functional.cross_entropy(self.head(emb, norm, y), y)

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.head.parameters(), lr=0.0, momentum=self.hparams.momentum)
            return [opt], [torch.optim.lr_scheduler.MultiStepLR(opt, milestones=self.hparams.lr_milestones)]

    module = Trainer(**hparams)
    x = torch.from_numpy(to_input(images(SEED + 1, 4), bgr=True))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.arange(4) % CLASSES), batch_size=2)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp,
                             callbacks=[ModelCheckpoint(dirpath=tmp, save_last=True, monitor=None)])
        trainer.fit(module, data)
        trainer.save_checkpoint(path)
