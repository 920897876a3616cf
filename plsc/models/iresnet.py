"""IResNet (insightface arcface_torch): the improved residual network of ArcFace.

    stem    conv3x3(3 -> w0) - BN - PReLU                          112x112
    stages  IBasicBlock x layers[i], width widths[i], first block stride 2   56, 28, 14, 7
    block   BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN  (+ conv1x1(stride) - BN shortcut)
    neck    BN2d - dropout - flatten - Linear(w3*7*7 -> num_features) - BatchNorm1D (scale fixed at 1)

Real sizes: widths [64, 128, 256, 512]; layers r18 [2,2,2,2], r34 [3,4,6,3], r50 [3,4,14,3],
r100 [3,13,30,3], r200 [6,26,60,6], r2060 [3,128,896,3] (insightface `iresnet2060`: the same blocks; use
DistributedStrategy.recompute). arch_kwargs {layers, widths} give reduced models for tests.
"""
import math

import paddle
from paddle import nn

from plsc.models.common import Backbone, int_list, parse_options
from plsc.models.prelu import PReLU
from plsc.registry import MODELS

BN_EPS = 1e-5
WIDTHS = [64, 128, 256, 512]
LAYERS = {"IResNet18": [2, 2, 2, 2], "IResNet34": [3, 4, 6, 3], "IResNet50": [3, 4, 14, 3],
          "IResNet100": [3, 13, 30, 3], "IResNet200": [6, 26, 60, 6], "IResNet2060": [3, 128, 896, 3]}


def batch_norm2d(c, fmt):
    return nn.BatchNorm2D(c, epsilon=BN_EPS, data_format=fmt)


def conv2d(cin, cout, k, stride, fmt):
    """k x k convolution without bias, 'same' padding (insightface / AdaFace convs)."""
    return nn.Conv2D(cin, cout, k, stride=stride, padding=k // 2, bias_attr=False, data_format=fmt)


class FixedScaleBatchNorm1D(nn.BatchNorm1D):
    """BatchNorm1D whose scale stays 1 (insightface sets it to 1 with requires_grad=False) while the
    shift trains. Paddle's batch_norm gives the bias no gradient when the scale does not require
    one, so in training normalise without affine and apply scale and shift outside the kernel."""

    def __init__(self, num_features, epsilon=BN_EPS):
        super().__init__(num_features, epsilon=epsilon, weight_attr=paddle.ParamAttr(
            initializer=nn.initializer.Constant(1.0), trainable=False))

    def forward(self, x):
        if not self.training:  # inference / export: the standard op (oneDNN crashes on a scale-free one)
            return super().forward(x)
        y = nn.functional.batch_norm(x, self._mean, self._variance, weight=None, bias=None, training=self.training,
                                     momentum=self._momentum, epsilon=self._epsilon)
        return y * self.weight + self.bias


class IBasicBlock(nn.Layer):
    """BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN [- SE] + shortcut.

    The shortcut is conv1x1(stride) - BN when the shape changes (insightface); with
    `subsample_shortcut` (AdaFace's IR) only when the width changes, a strided subsample (every
    stride-th pixel, AdaFace's weight-free MaxPool2d(1, stride)) otherwise. `se(planes)` builds an
    optional squeeze-excitation applied to the branch (IR-SE)."""

    def __init__(self, inplanes, planes, stride=1, data_format="NCHW", se=None, subsample_shortcut=False):
        super().__init__()
        fmt = data_format
        self.stride, self.fmt = stride, fmt
        self.bn1 = batch_norm2d(inplanes, fmt)
        self.conv1 = conv2d(inplanes, planes, 3, 1, fmt)
        self.bn2 = batch_norm2d(planes, fmt)
        self.prelu = PReLU(planes, data_format=fmt)
        self.conv2 = conv2d(planes, planes, 3, stride, fmt)
        self.bn3 = batch_norm2d(planes, fmt)
        self.se = se(planes) if se is not None else None
        self.downsample = None
        if inplanes != planes or (stride != 1 and not subsample_shortcut):
            self.downsample = nn.Sequential(conv2d(inplanes, planes, 1, stride, fmt), batch_norm2d(planes, fmt))

    def _shortcut(self, x):
        if self.downsample is not None:
            return self.downsample(x)
        if self.stride == 1:
            return x
        s = self.stride
        return x[:, :, ::s, ::s] if self.fmt == "NCHW" else x[:, ::s, ::s, :]

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        if self.se is not None:
            out = self.se(out)
        return out + self._shortcut(x)


class ResidualFaceNet(Backbone):
    """The skeleton IResNet and AdaFace's IR share: stem conv3x3 - BN - PReLU; four stages of
    `block(inplanes, planes, stride)`, the first of each with stride 2; neck BN2d - dropout -
    flatten - Linear(w3*7*7 -> num_features) - `features(num_features)` (the embedding BN)."""

    def __init__(self, name, layers, widths, block, features, num_features, dropout, data_format, recompute):
        super().__init__(name, data_format, recompute)
        fmt = data_format
        self.conv1 = conv2d(3, widths[0], 3, 1, fmt)
        self.bn1 = batch_norm2d(widths[0], fmt)
        self.prelu = PReLU(widths[0], data_format=fmt)
        inplanes = widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = [block(inplanes, w, 2)] + [block(w, w, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = w
        self.bn2 = batch_norm2d(inplanes, fmt)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(inplanes * 7 * 7, num_features)
        self.features = features(num_features)
        self.check_recompute_names()

    def stages(self):
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def fp32_layers(self):
        return [self.bn2, self.dropout, self.fc, self.features]

    def _neck(self, x):
        x = self.to_nchw(self.bn2(x))  # flatten in NCHW order: same fc weights for both layouts
        return self.features(self.fc(self.dropout(paddle.flatten(x, 1))))

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(self.enter(x))))
        for i, stage in enumerate(self.stages()):
            x = self.run_part(f"layer{i + 1}", stage, x)
        return self.run_neck(self._neck, x)

    def init_blocks(self, conv_init):
        """Every conv from `conv_init`, every BatchNorm2D scale 1 / shift 0."""
        for m in self.sublayers():
            if isinstance(m, nn.Conv2D):
                conv_init(m.weight)
            elif isinstance(m, nn.BatchNorm2D):
                nn.initializer.Constant(1.0)(m.weight)
                nn.initializer.Constant(0.0)(m.bias)


class IResNet(ResidualFaceNet):
    def __init__(self, name, layers, widths=WIDTHS, num_features=512, dropout=0.0, data_format="NCHW",
                 recompute=False):
        super().__init__(name, layers, widths, lambda cin, cout, stride: IBasicBlock(cin, cout, stride, data_format),
                         FixedScaleBatchNorm1D, num_features, dropout, data_format, recompute)
        self.init_blocks(nn.initializer.Normal(0.0, 0.1))  # insightface: normal(0, 0.1) for every conv
        bound = 1.0 / math.sqrt(self.fc.weight.shape[0])  # torch nn.Linear default init
        nn.initializer.Uniform(-bound, bound)(self.fc.weight)
        nn.initializer.Uniform(-bound, bound)(self.fc.bias)


def _build(name, kwargs):
    opts = parse_options(name, kwargs, {"layers": LAYERS[name], "widths": WIDTHS})
    arch = opts["arch"]
    return IResNet(name, int_list(name, "layers", arch["layers"], 4), int_list(name, "widths", arch["widths"], 4),
                   num_features=opts["num_features"], dropout=opts["dropout"], data_format=opts["data_format"],
                   recompute=opts["recompute"])


@MODELS.register()
def IResNet18(**kwargs):
    return _build("IResNet18", kwargs)


@MODELS.register()
def IResNet34(**kwargs):
    return _build("IResNet34", kwargs)


@MODELS.register()
def IResNet50(**kwargs):
    return _build("IResNet50", kwargs)


@MODELS.register()
def IResNet100(**kwargs):
    return _build("IResNet100", kwargs)


@MODELS.register()
def IResNet200(**kwargs):
    return _build("IResNet200", kwargs)


@MODELS.register()
def IResNet2060(**kwargs):
    return _build("IResNet2060", kwargs)
