"""Between backward and the update: one pass over every gradient, one host read.

    check = GradCheck(scaler, clip, world_size)
    verdict = check(dense=[(name, grad), ...], fc=(name, grad, sharded), loss=loss, status=plan.label_status())
    if verdict.ok: optimizer steps          # every rank gets the same verdict

For each gradient the squared L2 norm is reduced on the device (fp32). Their sum serves both
purposes: it is non-finite iff some gradient holds an inf or NaN (the only exception, a finite
fp32 value above ~1.8e19 whose square overflows, is reported as non-finite too), and it is the
global norm that clipping needs. Per rank one small vector [sharded-FC squared norm, non-finite
flag, caller's status] is all-reduced (sum) and read back once: that is the step's only
synchronisation. The squared norm of a model-parallel FC shard is summed across ranks (each rank
holds different rows); replicated gradients (the data-parallel backbone, or the FC with
model_parallel false) are identical on every rank and counted once. Then, on the device, every
gradient is multiplied by 1/loss_scale, and the clipped ones also by the clip coefficient.
"""
import paddle

from plsc.distributed import all_reduce_sum_
from plsc.errors import ConfigError
from plsc.registry import GRAD_CLIPS


@GRAD_CLIPS.register()
class ClipGradByGlobalNorm:
    """PLSC's global-norm clipping, on the gradients whose name contains none of `no_clip_list`.

    coef = clip_norm / (global_norm + 1e-6), capped at clip_norm_max when that is set; applied when
    global_norm > clip_norm, or on every step with always_clip (which then also scales small
    gradients *up* to norm clip_norm, as PLSC does). The reference configs list 'dist' in
    no_clip_list: the classifier's weight (`dist_fc_*`) is not clipped.
    """

    def __init__(self, clip_norm=1.0, always_clip=False, no_clip_list=(), clip_norm_max=None):
        if not isinstance(clip_norm, (int, float)) or clip_norm <= 0:
            raise ConfigError(f"Optimizer.grad_clip.clip_norm must be > 0, got {clip_norm!r}")
        if clip_norm_max is not None and (not isinstance(clip_norm_max, (int, float)) or clip_norm_max <= 0):
            raise ConfigError(f"Optimizer.grad_clip.clip_norm_max must be > 0 or null, got {clip_norm_max!r}")
        if not isinstance(no_clip_list, (list, tuple)) or not all(isinstance(s, str) for s in no_clip_list):
            raise ConfigError(f"Optimizer.grad_clip.no_clip_list must be a list of name substrings, got "
                              f"{no_clip_list!r}")
        self.clip_norm, self.always_clip = float(clip_norm), bool(always_clip)
        self.clip_norm_max = None if clip_norm_max is None else float(clip_norm_max)
        self.no_clip_list = list(no_clip_list)

    def excluded(self, name):
        return any(s in name for s in self.no_clip_list)

    def coefficient(self, norm):
        """The factor for the clipped gradients (a device scalar) given their global norm (device scalar)."""
        coef = self.clip_norm / (norm + 1e-6)
        if self.clip_norm_max is not None:
            coef = paddle.clip(coef, max=self.clip_norm_max)
        if self.always_clip:
            return coef
        return paddle.where(norm > self.clip_norm, coef, paddle.ones_like(coef))


class Verdict:
    def __init__(self, ok, nonfinite, status, norm):
        self.ok = ok                # the update may run (finite gradients and loss, status 0, on every rank)
        self.nonfinite = nonfinite  # some rank had an inf / NaN gradient or loss
        self.status = status        # the caller's status summed over ranks (e.g. ranks with bad labels)
        self.norm = norm            # device scalar: global norm of the clipped gradients (unscaled), or None


def _sq(g):
    return paddle.square(g.astype("float32")).sum()


class GradCheck:
    """no_unscale: FP16.GradScaler.no_unscale_list, PLSC's: gradients whose name contains one of these
    substrings are neither unscaled nor checked for inf / NaN."""

    def __init__(self, scaler, clip=None, world_size=1, no_unscale=()):
        self.scaler, self.clip, self.world_size = scaler, clip, world_size
        self.no_unscale = list(no_unscale or [])

    @paddle.no_grad()
    def __call__(self, dense, fc=None, loss=None, status=None):
        """dense: [(name, grad)] identical on every rank; fc: (name, grad, sharded) or None; loss: device
        scalar (its finiteness counts too); status: device scalar the caller wants summed over ranks."""
        skip = lambda n: any(s in n for s in self.no_unscale)  # noqa: E731
        kept = [(n, g) for n, g in dense if g is not None and skip(n)]
        dense = [(n, g) for n, g in dense if g is not None and not skip(n)]
        if fc is not None and fc[1] is not None and skip(fc[0]):
            kept, fc = kept + [fc[:2]], None
        clipped_rep, clipped_sh, other = [], [], []
        for name, g in dense:
            (other if self.clip is not None and self.clip.excluded(name) else clipped_rep).append(g)
        for name, g in kept:  # still clipped (when not excluded), never unscaled
            if self.clip is not None and not self.clip.excluded(name):
                raise ConfigError(f"FP16.GradScaler.no_unscale_list matches '{name}', which Optimizer.grad_clip "
                                  f"clips: a gradient that is never unscaled cannot be clipped; add it to no_clip_list")
        if fc is not None and fc[1] is not None:
            name, g, sharded = fc
            if self.clip is not None and self.clip.excluded(name):
                other.append(g)
            else:
                (clipped_sh if sharded else clipped_rep).append(g)
        zero = paddle.zeros([], dtype="float32")
        sq_rep = paddle.add_n([_sq(g) for g in clipped_rep]) if clipped_rep else zero
        sq_sh = paddle.add_n([_sq(g) for g in clipped_sh]) if clipped_sh else zero
        sq_other = paddle.add_n([_sq(g) for g in other]) if other else zero
        total = sq_rep + sq_sh + sq_other + (zero if loss is None else loss.astype("float32").sum())
        bad = 1.0 - paddle.isfinite(total).astype("float32")
        packed = paddle.stack([paddle.nan_to_num(sq_sh, nan=0.0, posinf=0.0), bad,
                               zero if status is None else status.astype("float32").reshape([])])
        if self.world_size > 1:
            all_reduce_sum_(packed)
        _, n_bad, n_status = packed.numpy().tolist()   # the one host read of the step
        if n_bad > 0 or n_status > 0:
            return Verdict(False, n_bad > 0, n_status, None)
        inv = 1.0 / self.scaler.scale_value
        norm = None
        clipped = clipped_rep + clipped_sh
        if self.clip is not None and clipped:
            norm = paddle.sqrt(sq_rep + packed[0]) * inv
            factor = self.clip.coefficient(norm) * inv
            for g in clipped:
                g.multiply_(factor.astype(g.dtype))
        elif inv != 1.0:
            for g in clipped:
                g.scale_(inv)
        if inv != 1.0:
            for g in other:
                g.scale_(inv)
        return Verdict(True, False, 0.0, norm)
