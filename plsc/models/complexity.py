"""Multiply-accumulates of one 112x112 image, counted from the shapes each layer really sees.

    macs = count_macs(model)   # conv + linear + attention matmuls (q.k^T and attn.v); eval mode

Norms, activations and additions are not counted (the convention of the published IResNet
figures: r50 6.31G, r100 12.09G).
"""
import paddle
from paddle import nn

from plsc.models.face_vit import Attention


def _conv_macs(layer, out):
    w = layer.weight  # [out, in/groups, kh, kw] in both layouts
    return int(out.size) * w.shape[1] * w.shape[2] * w.shape[3]  # every output value: in/groups*kh*kw MACs


def _linear_macs(layer, inp, out):
    rows = 1
    for d in out.shape[:-1]:
        rows *= d
    return rows * layer.weight.shape[0] * layer.weight.shape[1]


def _attention_macs(layer, inp):
    b, length, dim = inp.shape
    return 2 * b * length * length * dim  # q @ k^T and attn @ v over all heads


def count_macs(model, batch=1):
    """MACs per image of one eval-mode forward (hooks on Conv2D, Linear and FaceViT Attention)."""

    total = [0]
    hooks = []

    def hook(layer, inputs, output):
        if isinstance(layer, nn.Conv2D):
            total[0] += _conv_macs(layer, output)
        elif isinstance(layer, nn.Linear):
            total[0] += _linear_macs(layer, inputs[0], output)
        elif isinstance(layer, Attention):
            total[0] += _attention_macs(layer, inputs[0])

    for m in model.sublayers():
        if isinstance(m, (nn.Conv2D, nn.Linear, Attention)):
            hooks.append(m.register_forward_post_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            model(paddle.zeros([batch, 3, 112, 112], dtype="float32"))
    finally:
        for h in hooks:
            h.remove()
        if was_training:
            model.train()
    return total[0] // batch
