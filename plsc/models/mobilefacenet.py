"""MobileFaceNet (insightface arcface_torch `mbf` / `mbf_large`): depthwise residual blocks and
a GDC (global depthwise conv) neck.

    stem    ConvBlock 3x3 s2 (3 -> 64s)                                     56x56
            blocks[0]==1: ConvBlock 3x3 (64s -> 64s, groups 64); else blocks[0] x DW(64s, inner 128)
    stage   DW s2 (64s -> 64s, inner 128) + blocks[1] x DW(64s, inner 128)      28x28
            DW s2 (64s -> 128s, inner 256) + blocks[2] x DW(128s, inner 256)    14x14
            DW s2 (128s -> 128s, inner 512) + blocks[3] x DW(128s, inner 256)   7x7
    sep     ConvBlock 1x1 (128s -> 512)
    neck    GDC: depthwise 7x7 conv + BN (linear) - [dropout] - Linear(512 -> num_features, no bias) - BN1d
    (every 64 above is the base `width`; 128, 256, 512 are 2, 4, 8 x width)

ConvBlock = conv - BN - PReLU; LinearBlock = conv - BN; DW(in, out, inner) = ConvBlock 1x1 (in -> inner)
- depthwise ConvBlock 3x3 (inner) - LinearBlock 1x1 (inner -> out), residual when stride 1.
base: blocks (1, 4, 6, 2), scale s=2; large: blocks (2, 8, 12, 4), s=4; width 64 for both.
arch_kwargs {blocks, scale, width} give reduced models for tests (width: a thinner net, e.g. 16).
"""
import math

import paddle
from paddle import nn

from plsc.models.common import Backbone, check_int, int_list, parse_options
from plsc.models.prelu import PReLU
from plsc.registry import MODELS

BN_EPS = 1e-5
WIDTH = 64
ARCHS = {"MobileFaceNet_base": ([1, 4, 6, 2], 2), "MobileFaceNet_large": ([2, 8, 12, 4], 4)}


class ConvBlock(nn.Sequential):
    def __init__(self, cin, cout, k=1, stride=1, groups=1, fmt="NCHW", act=True):
        layers = [nn.Conv2D(cin, cout, k, stride=stride, padding=(k // 2 if k == 3 else 0), groups=groups,
                            bias_attr=False, data_format=fmt),
                  nn.BatchNorm2D(cout, epsilon=BN_EPS, data_format=fmt)]
        if act:
            layers.append(PReLU(cout, data_format=fmt))
        super().__init__(*layers)


class DepthWise(nn.Layer):
    def __init__(self, cin, cout, inner, stride, residual, fmt):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(cin, inner, 1, 1, 1, fmt),
            ConvBlock(inner, inner, 3, stride, inner, fmt),
            ConvBlock(inner, cout, 1, 1, 1, fmt, act=False))

    def forward(self, x):
        out = self.layers(x)
        return x + out if self.residual else out


class GDC(nn.Layer):
    def __init__(self, channels, num_features, dropout, fmt):
        super().__init__()
        self.conv = ConvBlock(channels, channels, 7, 1, channels, fmt, act=False)
        self.dropout = nn.Dropout(p=dropout)
        self.linear = nn.Linear(channels, num_features, bias_attr=False)
        self.bn = nn.BatchNorm1D(num_features, epsilon=BN_EPS)

    def forward(self, x):
        x = paddle.flatten(self.conv(x), 1)  # [N,512,1,1] or [N,1,1,512]: the same vector
        return self.bn(self.linear(self.dropout(x)))


class MobileFaceNet(Backbone):
    def __init__(self, name, blocks=(1, 4, 6, 2), scale=2, width=WIDTH, num_features=512, dropout=0.0,
                 data_format="NCHW", recompute=False):
        super().__init__(name, data_format, recompute)
        w = width
        fmt, c1, c2 = data_format, w * scale, 2 * w * scale
        self.stem = ConvBlock(3, c1, 3, 2, 1, fmt)
        units = []
        if blocks[0] == 1:
            units.append(ConvBlock(c1, c1, 3, 1, w, fmt))
        else:
            units += [DepthWise(c1, c1, 2 * w, 1, True, fmt) for _ in range(blocks[0])]
        units.append(DepthWise(c1, c1, 2 * w, 2, False, fmt))
        units += [DepthWise(c1, c1, 2 * w, 1, True, fmt) for _ in range(blocks[1])]
        units.append(DepthWise(c1, c2, 4 * w, 2, False, fmt))
        units += [DepthWise(c2, c2, 4 * w, 1, True, fmt) for _ in range(blocks[2])]
        units.append(DepthWise(c2, c2, 8 * w, 2, False, fmt))
        units += [DepthWise(c2, c2, 4 * w, 1, True, fmt) for _ in range(blocks[3])]
        self.blocks = nn.LayerList(units)
        self.conv_sep = ConvBlock(c2, 8 * w, 1, 1, 1, fmt)
        self.features = GDC(8 * w, num_features, dropout, fmt)
        self._init_weights()
        self.check_recompute_names()

    def _init_weights(self):
        # insightface: kaiming normal (fan_out, relu) for conv and linear, BN scale 1 / shift 0
        for m in self.sublayers():
            if isinstance(m, nn.Conv2D):
                w = m.weight
                fan_out = w.shape[0] * w.shape[2] * w.shape[3]
                nn.initializer.Normal(0.0, math.sqrt(2.0 / fan_out))(w)
            elif isinstance(m, nn.Linear):
                nn.initializer.Normal(0.0, math.sqrt(2.0 / m.weight.shape[1]))(m.weight)
            elif isinstance(m, (nn.BatchNorm2D, nn.BatchNorm1D)):
                nn.initializer.Constant(1.0)(m.weight)
                nn.initializer.Constant(0.0)(m.bias)

    def fp32_layers(self):
        return [self.features]

    def forward(self, x):
        x = self.stem(self.enter(x))
        for i, block in enumerate(self.blocks):
            x = self.run_block(block, x, index=i)
        return self.run_neck(self.features, self.conv_sep(x))


def _build(name, kwargs):
    blocks, scale = ARCHS[name]
    opts = parse_options(name, kwargs, {"blocks": blocks, "scale": scale, "width": WIDTH})
    arch = opts["arch"]
    return MobileFaceNet(name, int_list(name, "blocks", arch["blocks"], 4), check_int(name, "scale", arch["scale"]),
                         check_int(name, "width", arch["width"]), num_features=opts["num_features"],
                         dropout=opts["dropout"], data_format=opts["data_format"], recompute=opts["recompute"])


@MODELS.register()
def MobileFaceNet_base(**kwargs):
    return _build("MobileFaceNet_base", kwargs)


@MODELS.register()
def MobileFaceNet_large(**kwargs):
    return _build("MobileFaceNet_large", kwargs)
