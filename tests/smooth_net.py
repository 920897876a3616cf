"""Small smooth backbones registered for equivalence tests (imported by the tests and their launched scripts).

IResNet's PReLU kinks and the tiny smoke net make training chaotic: two runs whose sums are added in a
different order (1 rank x 16 images vs 2 ranks x 8) drift from 1e-7 to 1e-3 within 10 steps. With
tanh activations rounding differences stay at rounding level, so "equal within 1e-5 after 10 steps"
tests the distributed arithmetic itself. `SmoothNet` has BatchNorm (for sync_bn), `SmoothNetNoBN`
none (a batch split into micro-batches then computes exactly what the whole batch computes).
"""
import paddle
from paddle import nn

from plsc.models.common import Backbone
from plsc.registry import MODELS


class SmoothNet(Backbone):
    def __init__(self, num_features=32, norm=True):
        super().__init__("SmoothNet" if norm else "SmoothNetNoBN")
        ident = lambda c: nn.Identity()  # noqa: E731
        bn2d = nn.BatchNorm2D if norm else ident
        self.conv1 = nn.Conv2D(3, 8, 8, stride=8, bias_attr=not norm)
        self.bn1 = bn2d(8)
        self.conv2 = nn.Conv2D(8, 16, 2, stride=2, bias_attr=not norm)
        self.bn2 = bn2d(16)
        self.fc = nn.Linear(16 * 7 * 7, num_features, bias_attr=not norm)  # no bias right before a BatchNorm
        self.features = nn.BatchNorm1D(num_features) if norm else nn.Identity()

    def fp32_layers(self):
        return [self.fc, self.features]

    def forward(self, x):
        x = paddle.tanh(self.bn1(self.conv1(self.enter(x))))
        x = paddle.tanh(self.bn2(self.conv2(x)))
        return self.features(self.fc(paddle.flatten(x, 1)))


def _smooth(**kw):
    return SmoothNet(kw.get("num_features", 32), norm=True)


def _smooth_no_bn(**kw):
    return SmoothNet(kw.get("num_features", 32), norm=False)


if "SmoothNet" not in MODELS:
    MODELS.register("SmoothNet")(_smooth)
    MODELS.register("SmoothNetNoBN")(_smooth_no_bn)
