"""FaceViT (insightface arcface_torch `vit_*`, PLSC FaceViT_*_patch9_112).

    patch   conv 9x9 stride 9: 112x112 -> 12x12 = 144 tokens of embed_dim (the last 4 px are unused)
            + learned position embedding
    mask    training only, mask_ratio > 0: each sample keeps a random int(144 * (1 - mask_ratio))
            tokens; the blocks run on those; after the final LN the dropped places are filled with a
            learned mask token (original order restored)
    blocks  depth x pre-norm [x + DropPath(MHSA(LN(x))), x + DropPath(MLP(LN(x)))], MLP act ReLU6,
            qkv without bias; drop-path rate rises linearly 0 -> drop_path_rate over the blocks
    neck    final LN - flatten (144*D) - [dropout] - Linear(144*D -> D, no bias) - BN1d
            - Linear(D -> num_features, no bias) - BN1d   (BN eps 2e-5)

Parameter names follow insightface / PLSC (patch_embed.proj, blocks.i.attn.qkv, blocks.i.mlp.fc1,
norm, feature.0-3, pos_embed, mask_token), so PLSC FaceViT state dicts load by name.

Sizes (embed_dim, depth, heads): tiny (256, 12, 8), small (512, 12, 8), base (512, 24, 8),
large (768, 24, 8), huge (1024, 48, 8; insightface `vit_h`), mlp_ratio 4. Defaults as insightface:
mask_ratio 0.1, drop_path_rate 0.1 (huge: mask_ratio 0).
arch_kwargs {embed_dim, depth, num_heads, mlp_ratio} give reduced models for tests.
"""
import paddle
from paddle import nn

from plsc.errors import ConfigError
from plsc.models.common import Backbone, DropPath, check_int, parse_options
from plsc.registry import MODELS

PATCH = 9
GRID = 112 // PATCH  # 12
NUM_PATCHES = GRID * GRID  # 144
VIT_DEFAULTS = {"mask_ratio": 0.1, "drop_path_rate": 0.1}
# name -> (embed_dim, depth, mask_ratio default)
SIZES = {"FaceViT_tiny_patch9_112": (256, 12, 0.1), "FaceViT_small_patch9_112": (512, 12, 0.1),
         "FaceViT_base_patch9_112": (512, 24, 0.1), "FaceViT_large_patch9_112": (768, 24, 0.1),
         "FaceViT_huge_patch9_112": (1024, 48, 0.0)}


class Attention(nn.Layer):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias_attr=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        # x [B, L, D] -> q, k, v [B, H, L, hd]
        qkv = paddle.reshape(self.qkv(x), [0, 0, 3, self.num_heads, self.head_dim])
        q, k, v = paddle.unbind(paddle.transpose(qkv, [2, 0, 3, 1, 4]), axis=0)
        attn = nn.functional.softmax(paddle.matmul(q, k, transpose_y=True) * self.scale, axis=-1)
        out = paddle.transpose(paddle.matmul(attn, v), [0, 2, 1, 3])
        return self.proj(paddle.reshape(out, [0, 0, self.num_heads * self.head_dim]))


class Mlp(nn.Layer):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed(nn.Layer):
    def __init__(self, dim, data_format):
        super().__init__()
        self.proj = nn.Conv2D(3, dim, PATCH, stride=PATCH, data_format=data_format)

    def forward(self, x):
        return self.proj(x)


class Block(nn.Layer):
    def __init__(self, dim, num_heads, mlp_ratio, drop_path):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, epsilon=1e-5)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, epsilon=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class FaceViT(Backbone):
    def __init__(self, name, embed_dim=256, depth=12, num_heads=8, mlp_ratio=4.0, num_features=512, dropout=0.0,
                 mask_ratio=0.1, drop_path_rate=0.1, data_format="NCHW", recompute=False):
        super().__init__(name, data_format, recompute)
        self.embed_dim = embed_dim
        self.mask_ratio = mask_ratio
        self.patch_embed = PatchEmbed(embed_dim, data_format)
        tn = nn.initializer.TruncatedNormal(std=0.02)
        self.pos_embed = self.create_parameter([1, NUM_PATCHES, embed_dim], default_initializer=tn)
        # only a masked model has (and trains) the mask token: an unused parameter would have no grad
        self.mask_token = (self.create_parameter([1, 1, embed_dim], default_initializer=tn)
                           if mask_ratio > 0 else None)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.LayerList([Block(embed_dim, num_heads, mlp_ratio, r) for r in rates])
        self.norm = nn.LayerNorm(embed_dim, epsilon=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.feature = nn.Sequential(
            nn.Linear(embed_dim * NUM_PATCHES, embed_dim, bias_attr=False),
            nn.BatchNorm1D(embed_dim, epsilon=2e-5),
            nn.Linear(embed_dim, num_features, bias_attr=False),
            nn.BatchNorm1D(num_features, epsilon=2e-5))
        for m in self.sublayers():
            if isinstance(m, nn.Linear):
                tn(m.weight)
                if m.bias is not None:
                    nn.initializer.Constant(0.0)(m.bias)
        self.check_recompute_names()

    def fp32_layers(self):
        return [self.norm, self.dropout, self.feature]

    def _tokens(self, x):
        x = self.patch_embed(x)  # NCHW [B, D, 12, 12] or NHWC [B, 12, 12, D]
        if self.data_format == "NCHW":
            x = paddle.transpose(paddle.flatten(x, 2), [0, 2, 1])
        else:
            x = paddle.flatten(x, 1, 2)
        return x + self.pos_embed

    def _random_keep(self, x):
        """Per sample, a random subset of int(L * (1 - mask_ratio)) tokens, and the inverse order."""
        n, length = x.shape[0], x.shape[1]
        keep = int(length * (1 - self.mask_ratio))
        order = paddle.argsort(paddle.rand([n, length]), axis=1)
        restore = paddle.argsort(order, axis=1)
        kept = paddle.take_along_axis(x, order[:, :keep].unsqueeze(-1).tile([1, 1, x.shape[2]]), axis=1)
        return kept, restore

    def _neck(self, x, restore=None):
        x = self.norm(x)
        if restore is not None:
            fill = self.mask_token.astype(x.dtype).tile([x.shape[0], restore.shape[1] - x.shape[1], 1])
            x = paddle.concat([x, fill], axis=1)
            x = paddle.take_along_axis(x, restore.unsqueeze(-1).tile([1, 1, x.shape[2]]), axis=1)
        return self.feature(self.dropout(paddle.flatten(x, 1)))

    def forward(self, x):
        x = self._tokens(self.enter(x))
        restore = None
        if self.training and self.mask_ratio > 0:
            x, restore = self._random_keep(x)
        for i, block in enumerate(self.blocks):
            x = self.run_block(block, x, index=i)
        return self.run_neck(lambda t: self._neck(t, restore), x)


def _build(name, kwargs):
    embed_dim, depth, mask_ratio = SIZES[name]
    arch_defaults = {"embed_dim": embed_dim, "depth": depth, "num_heads": 8, "mlp_ratio": 4.0}
    opts = parse_options(name, kwargs, arch_defaults, dict(VIT_DEFAULTS, mask_ratio=mask_ratio))
    arch = opts["arch"]
    dim, heads = check_int(name, "embed_dim", arch["embed_dim"]), check_int(name, "num_heads", arch["num_heads"])
    if dim % heads:
        raise ConfigError(f"Model.arch_kwargs: embed_dim {dim} for {name} is not divisible by num_heads {heads}")
    ratio = arch["mlp_ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0:
        raise ConfigError(f"Model.arch_kwargs.mlp_ratio: {ratio!r} for {name} must be a positive number")
    return FaceViT(name, dim, check_int(name, "depth", arch["depth"]), heads, float(ratio),
                   num_features=opts["num_features"], dropout=opts["dropout"], mask_ratio=opts["mask_ratio"],
                   drop_path_rate=opts["drop_path_rate"], data_format=opts["data_format"],
                   recompute=opts["recompute"])


@MODELS.register()
def FaceViT_tiny_patch9_112(**kwargs):
    return _build("FaceViT_tiny_patch9_112", kwargs)


@MODELS.register()
def FaceViT_small_patch9_112(**kwargs):
    return _build("FaceViT_small_patch9_112", kwargs)


@MODELS.register()
def FaceViT_base_patch9_112(**kwargs):
    return _build("FaceViT_base_patch9_112", kwargs)


@MODELS.register()
def FaceViT_large_patch9_112(**kwargs):
    return _build("FaceViT_large_patch9_112", kwargs)


@MODELS.register()
def FaceViT_huge_patch9_112(**kwargs):
    return _build("FaceViT_huge_patch9_112", kwargs)
