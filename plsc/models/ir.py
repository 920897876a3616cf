"""IR and IR-SE (AdaFace's `net.py` backbones: ir_18, ir_34, ir_50, ir_101, ir_se_50).

    stem    conv3x3(3 -> w0) - BN - PReLU                                     112x112
    stages  IRBlock x layers[i], width widths[i], first block stride 2         56, 28, 14, 7
    block   BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN [- SE]
            + shortcut: conv1x1(stride) - BN when the width changes, else a strided subsample
              (AdaFace's weight-free MaxPool2d(1, stride): every stride-th pixel)
    SE      avg-pool - conv1x1(C -> C/16) - ReLU - conv1x1(C/16 -> C) - sigmoid, times the branch
    neck    BN2d - dropout - flatten - Linear(w3*7*7 -> num_features) - BatchNorm1D without affine
            (scale 1 and shift 0, both frozen)

The block is insightface's IBasicBlock and the skeleton IResNet's (plsc.models.iresnet, shared);
what differs from IResNet is the stage-1 shortcut (a subsample, not conv+BN), the affine-free
embedding BN, the optional SE and AdaFace's initialisation. AdaFace's model returns
the L2-normalised embedding and its norm; plsc returns the embedding (same direction) and
normalises where it is used. AdaFace feeds BGR images: plsc-import flips the stem's input channels,
so an imported model takes plsc's RGB input. AdaFace trains with dropout 0.4 (`-o Model.dropout=0.4`).

Real sizes: widths [64, 128, 256, 512]; layers IR_18 [2,2,2,2], IR_34 [3,4,6,3], IR_50 / IR_SE_50
[3,4,14,3], IR_101 [3,13,30,3]. arch_kwargs {layers, widths} give reduced models for tests.
"""
import math
from functools import partial

import paddle
from paddle import nn

from plsc.errors import ConfigError
from plsc.models.common import int_list, parse_options
from plsc.models.iresnet import BN_EPS, WIDTHS, IBasicBlock, ResidualFaceNet, conv2d
from plsc.registry import MODELS

SE_REDUCTION = 16
# name -> (layers, squeeze-excitation)
ARCHS = {"IR_18": ([2, 2, 2, 2], False), "IR_34": ([3, 4, 6, 3], False), "IR_50": ([3, 4, 14, 3], False),
         "IR_101": ([3, 13, 30, 3], False), "IR_SE_50": ([3, 4, 14, 3], True)}


class SqueezeExcite(nn.Layer):
    def __init__(self, c, fmt):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2D(1, data_format=fmt)
        self.fc1 = conv2d(c, c // SE_REDUCTION, 1, 1, fmt)
        self.fc2 = conv2d(c // SE_REDUCTION, c, 1, 1, fmt)

    def forward(self, x):
        return x * nn.functional.sigmoid(self.fc2(nn.functional.relu(self.fc1(self.pool(x)))))


def _affine_free_bn1d(num_features):
    """AdaFace's BatchNorm1d(affine=False): plsc's BatchNorm1D with scale 1 / shift 0, both frozen."""
    frozen = dict(trainable=False)
    return nn.BatchNorm1D(num_features, epsilon=BN_EPS,
                          weight_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(1.0), **frozen),
                          bias_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0), **frozen))


class IR(ResidualFaceNet):
    """insightface's IResNet skeleton with AdaFace's blocks (subsample shortcut, optional SE) and neck."""

    def __init__(self, name, layers, widths=WIDTHS, se=False, num_features=512, dropout=0.0, data_format="NCHW",
                 recompute=False):
        fmt = data_format
        block = partial(IBasicBlock, data_format=fmt, se=partial(SqueezeExcite, fmt=fmt) if se else None,
                        subsample_shortcut=True)
        super().__init__(name, layers, widths, block, _affine_free_bn1d, num_features, dropout, data_format,
                         recompute)
        # AdaFace: kaiming normal (fan_out, relu) for conv and linear, zero linear bias, BN scale 1 / shift 0
        self.init_blocks(lambda w: nn.initializer.Normal(0.0, math.sqrt(2.0 / (w.shape[0] * w.shape[2] *
                                                                                 w.shape[3])))(w))
        nn.initializer.Normal(0.0, math.sqrt(2.0 / self.fc.weight.shape[1]))(self.fc.weight)
        nn.initializer.Constant(0.0)(self.fc.bias)


def _build(name, kwargs):
    layers, se = ARCHS[name]
    opts = parse_options(name, kwargs, {"layers": layers, "widths": WIDTHS})
    arch = opts["arch"]
    widths = int_list(name, "widths", arch["widths"], 4)
    if se and min(widths) < SE_REDUCTION:
        raise ConfigError(f"Model.arch_kwargs.widths: {widths} for {name}: every width must be at least "
                          f"{SE_REDUCTION} (the squeeze-excitation reduction)")
    return IR(name, int_list(name, "layers", arch["layers"], 4), widths, se, num_features=opts["num_features"],
              dropout=opts["dropout"], data_format=opts["data_format"], recompute=opts["recompute"])


@MODELS.register()
def IR_18(**kwargs):
    return _build("IR_18", kwargs)


@MODELS.register()
def IR_34(**kwargs):
    return _build("IR_34", kwargs)


@MODELS.register()
def IR_50(**kwargs):
    return _build("IR_50", kwargs)


@MODELS.register()
def IR_101(**kwargs):
    return _build("IR_101", kwargs)


@MODELS.register()
def IR_SE_50(**kwargs):
    return _build("IR_SE_50", kwargs)
