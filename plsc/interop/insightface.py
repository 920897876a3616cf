"""insightface arcface_torch `.pt` / `.pth` files -> plsc backbones (IResNet r18..r200 and r2060,
MobileFaceNet mbf / mbf_large, ViT t/s/b/l/h).

What arcface_torch writes: `torch.save(backbone.module.state_dict(), "model.pt")` (train_v2.py), or
with `save_all_states` a `checkpoint_gpu_<rank>.pt` dict whose `state_dict_backbone` is the same
(its partial-FC shard, optimizer and scheduler states are reported, not imported: one rank's file
holds one shard only). The three layouts' tables below are shared with PLSC `.pdparams` files
(PLSC's IResNet and FaceViT parameter names are plsc's; its MobileFaceNet is insightface's).
"""
import numpy as np

from plsc.interop.mapping import ArchUnreadable, Family, arch_kwargs_against, count, nearest_member, shape_of, tensors
from plsc.io.safe_pickle import brief, clip
from plsc.models import face_vit, iresnet, mobilefacenet


def bn_size(shapes, prefix):
    """(channels, the tensor they were read from) of the BatchNorm at `prefix`."""
    for leaf in ("running_mean", "_mean", "weight"):
        if f"{prefix}.{leaf}" in shapes:
            return shape_of(shapes, f"{prefix}.{leaf}", 1)[0], f"{prefix}.{leaf}"
    raise ArchUnreadable(f"no tensor '{prefix}.running_mean'")


def _choose(members, arch, model, distance, name_keys, defaults_of):
    """A registered name whose defaults equal the file's architecture, else the nearest one, plus the
    arch_kwargs that make it the file's architecture."""
    if model is None:
        exact = [m for m in members if all(defaults_of(m)[k] == arch[k] for k in name_keys)]
        model = exact[0] if exact else nearest_member(members, distance)
    return model, arch_kwargs_against(arch, defaults_of(model))


# ------------------------------------------------------------------ IResNet (insightface and PLSC names)
IRESNET_TABLE = [
    (r"(?P<p>conv1|bn1|prelu|bn2|fc|features)", "{p}"),
    (r"(?P<p>layer[1-4]\.\d+\.(?:bn1|conv1|bn2|prelu|conv2|bn3|downsample\.[01]))", "{p}"),
]


def _iresnet_layers(shapes):
    return [count(shapes, rf"layer{i}\.(\d+)\.conv1\.weight") for i in range(1, 5)]


def _iresnet_distance(layers):
    return lambda m: sum(abs(a - b) for a, b in zip(iresnet.LAYERS[m], layers))


def _detect_iresnet(shapes):
    widths = [shape_of(shapes, f"layer{i}.0.conv1.weight", 4)[0] for i in range(1, 5)]
    nf, nf_key = bn_size(shapes, "features")
    return {"arch": {"layers": _iresnet_layers(shapes), "widths": widths}, "num_features": nf, "nf_key": nf_key}


def _choose_iresnet(info, model):
    arch = info["arch"]
    return _choose(list(iresnet.LAYERS), arch, model, _iresnet_distance(arch["layers"]), ["layers"],
                   lambda m: {"layers": iresnet.LAYERS[m], "widths": iresnet.WIDTHS})


IRESNET = Family("IResNet (insightface iresnet / PLSC IResNet names)", IRESNET_TABLE, _detect_iresnet,
                 _choose_iresnet, default="IResNet50", members=list(iresnet.LAYERS),
                 guess=lambda shapes: nearest_member(iresnet.LAYERS, _iresnet_distance(_iresnet_layers(shapes))))

# ------------------------------------------------------------------ MobileFaceNet (insightface = PLSC names)
MBF_TABLE = [
    (r"layers\.0\.layers\.(?P<k>[0-2])", "stem.{k}"),
    (r"layers\.1\.layers\.(?P<k>[0-2])", "blocks.0.{k}"),  # blocks[0] == 1: one grouped ConvBlock
    (r"layers\.(?P<s>[1357])\.layers\.(?P<n>\d+)\.layers\.(?P<a>[0-2])\.layers\.(?P<k>[0-2])",
     "blocks.{unit}.layers.{a}.{k}"),  # Residual stages: DepthWise units
    (r"layers\.(?P<s>[246])\.layers\.(?P<a>[0-2])\.layers\.(?P<k>[0-2])", "blocks.{unit}.layers.{a}.{k}"),  # stride 2
    (r"conv_sep\.layers\.(?P<k>[0-2])", "conv_sep.{k}"),
    (r"features\.layers\.0\.layers\.(?P<k>[01])", "features.conv.{k}"),
    (r"features\.layers\.2", "features.linear"),
    (r"features\.layers\.3", "features.bn"),
]
_MBF_UNIT = r"layers\.{}\.layers\.(\d+)\.layers\.0\.layers\.0\.weight"


def _mbf_blocks(shapes):
    first = 1 if "layers.1.layers.0.weight" in shapes else count(shapes, _MBF_UNIT.format(1))
    return [first] + [count(shapes, _MBF_UNIT.format(s)) for s in (3, 5, 7)]


def _mbf_distance(blocks, scale=None):
    """Block and scale differences; a different first stage (base: one ConvBlock, large: a Residual of
    DepthWise units) outweighs any count, so a reduced mbf_large stays MobileFaceNet_large."""
    def distance(m):
        ref_blocks, ref_scale = mobilefacenet.ARCHS[m]
        first_stage = 1000 * ((ref_blocks[0] == 1) != (blocks[0] == 1))
        return first_stage + sum(abs(a - b) for a, b in zip(ref_blocks, blocks)) + \
            (abs(ref_scale - scale) if scale is not None else 0)

    return distance


def _detect_mbf(shapes):
    width = bn_size(shapes, "conv_sep.layers.1")[0] // 8
    c1 = shape_of(shapes, "layers.0.layers.0.weight", 4)[0]
    if width <= 0 or c1 % width:
        raise ArchUnreadable(f"stem width {c1} is not a multiple of the base width {width} (conv_sep / 8)")
    nf, nf_key = bn_size(shapes, "features.layers.3")
    return {"arch": {"blocks": _mbf_blocks(shapes), "scale": c1 // width, "width": width}, "num_features": nf,
            "nf_key": nf_key}


def _mbf_unit(groups, arch):
    if "s" not in groups:
        return {}
    b = arch["blocks"]
    sizes = [1 if b[0] == 1 else b[0], 1, b[1], 1, b[2], 1, b[3]]
    s, n = int(groups["s"]), int(groups.get("n") or 0)
    if n >= sizes[s - 1] or (s == 1 and b[0] == 1):
        raise IndexError(n)
    return {"unit": sum(sizes[: s - 1]) + n}


def _choose_mbf(info, model):
    arch = info["arch"]
    archs = mobilefacenet.ARCHS
    return _choose(list(archs), arch, model, _mbf_distance(arch["blocks"], arch["scale"]), ["blocks", "scale", "width"],
                   lambda m: {"blocks": archs[m][0], "scale": archs[m][1], "width": mobilefacenet.WIDTH})


MBF = Family("MobileFaceNet (insightface mbf / PLSC MobileFaceNet names)", MBF_TABLE, _detect_mbf, _choose_mbf,
             resolve=_mbf_unit, default="MobileFaceNet_base", members=list(mobilefacenet.ARCHS),
             guess=lambda shapes: nearest_member(mobilefacenet.ARCHS, _mbf_distance(_mbf_blocks(shapes))))

# ------------------------------------------------------------------ ViT (insightface vit = PLSC FaceViT names)
VIT_TABLE = [
    (r"", ""),  # pos_embed, mask_token
    (r"patch_embed\.proj", "patch_embed.proj"),
    (r"blocks\.(?P<i>\d+)\.(?P<m>norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)", "blocks.{i}.{m}"),
    (r"norm", "norm"),
    (r"feature\.(?P<k>[0-3])", "feature.{k}"),
]
VIT_HEADS = 8  # insightface and PLSC build every face ViT with 8 heads; the weights do not record it


def _vit_depth(shapes):
    return count(shapes, r"blocks\.(\d+)\.attn\.qkv\.weight")


def _vit_distance(depth, dim=None):
    sizes = face_vit.SIZES
    return lambda m: abs(sizes[m][1] - depth) + (abs(sizes[m][0] - dim) / 256 if dim is not None else 0)


def _detect_vit(shapes):
    dim = shape_of(shapes, "pos_embed", 3)[-1]
    hidden = shape_of(shapes, "blocks.0.mlp.fc1.bias", 1)[0]
    if dim <= 0:
        raise ArchUnreadable(f"'pos_embed' has shape {list(shapes['pos_embed'])}: no embedding width")
    ratio = hidden / dim
    arch = {"embed_dim": dim, "depth": _vit_depth(shapes), "num_heads": VIT_HEADS,
            "mlp_ratio": int(ratio) if ratio == int(ratio) else ratio}
    nf, nf_key = bn_size(shapes, "feature.3")
    return {"arch": arch, "num_features": nf, "nf_key": nf_key,
            "notes": [f"num_heads {VIT_HEADS}: not stored in the weights (the value insightface and PLSC use)"]}


def _choose_vit(info, model):
    arch = info["arch"]
    sizes = face_vit.SIZES
    return _choose(list(sizes), arch, model, _vit_distance(arch["depth"], arch["embed_dim"]),
                   ["embed_dim", "depth", "mlp_ratio"],
                   lambda m: {"embed_dim": sizes[m][0], "depth": sizes[m][1], "num_heads": VIT_HEADS,
                              "mlp_ratio": 4})


def _vit_options(shapes, name, requested):
    """FaceViT's mask_ratio, which the weights do not store: insightface and PLSC always save a
    mask_token (also when they trained with mask_ratio 0), plsc's FaceViT has one only when
    mask_ratio > 0. The ratio is the plsc model's default unless --mask-ratio says otherwise; at 0 the
    file's mask_token is reported, not imported."""
    requested = dict(requested)
    ratio = requested.pop("mask_ratio", None)
    if requested:
        raise ValueError(f"{', '.join(requested)}: not an option of a FaceViT import")
    has_token = "mask_token" in shapes
    if ratio is None:
        ratio, how = (face_vit.SIZES[name][2], f"the default of {name}") if has_token else \
            (0.0, "the file has no mask_token")
    elif isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise ValueError(f"--mask-ratio {brief(ratio)} must be in [0, 1)")
    elif ratio > 0 and not has_token:
        raise ValueError(f"--mask-ratio {ratio}: the file has no mask_token, which a FaceViT with masking needs")
    else:
        how = "--mask-ratio"
    ratio = float(ratio)
    dropped = {"mask_token": "plsc's FaceViT has a mask token only when Model.mask_ratio > 0"} \
        if has_token and ratio == 0 else {}
    note = (f"mask_ratio {ratio} ({how}): not stored in the weights, so check it is the one the model was trained "
            f"with (insightface vit_t/s/b/l and PLSC's default FaceViT configs: 0.1; vit_*_mask0, vit_h and "
            f"PLSC's *_mask0 configs: 0; vit_b_dp005_mask_005: 0.05); re-import with --mask-ratio to change it "
            f"(masking is training-only: eval and export do not depend on it)")
    return {"mask_ratio": ratio}, dropped, [note]


VIT = Family("FaceViT (insightface vit / PLSC FaceViT names)", VIT_TABLE, _detect_vit, _choose_vit,
             default="FaceViT_tiny_patch9_112", members=list(face_vit.SIZES), options=_vit_options,
             guess=lambda shapes: nearest_member(face_vit.SIZES, _vit_distance(_vit_depth(shapes))))

FAMILIES = (IRESNET, MBF, VIT)

# ------------------------------------------------------------------ the file
_CHECKPOINT_KEYS = ("state_dict_backbone", "state_dict_softmax_fc", "state_optimizer", "state_lr_scheduler")


def claims(obj):
    """A flat {name: array} state dict, or arcface_torch's save_all_states checkpoint."""
    if isinstance(obj, dict) and "state_dict_backbone" in obj:
        return True
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj) and \
        not any(k.startswith("model.") for k in obj) and "state_dict" not in obj


def split(obj, path):
    """-> (backbone arrays, {what: description} of the rest of the file, notes)."""
    if "state_dict_backbone" not in obj:
        return tensors(obj, path, "the state dict"), {}, []
    rest = {clip(k, 120) if type(k) is str else brief(k): "not imported" for k in obj if k != "state_dict_backbone"}
    fc = obj.get("state_dict_softmax_fc")
    w = fc.get("weight") if isinstance(fc, dict) else None
    if isinstance(w, np.ndarray):
        rest["state_dict_softmax_fc"] = (f"one rank's partial-FC shard {list(w.shape)}: not imported (the other "
                                         f"ranks' rows are in their own files)")
    return (tensors(obj["state_dict_backbone"], path, "state_dict_backbone"), rest,
            ["arcface_torch save_all_states checkpoint: backbone only"])
