"""plsc-import's work: a released checkpoint (PLSC .pdparams, insightface .pt/.pth, AdaFace .ckpt) converted into
a plsc checkpoint directory, checked against the backbone plsc builds for it, and the report it prints (with the
-o overrides a config needs). The command line is plsc/cli/interop.py."""
import json
import shlex

import plsc.models  # noqa: F401  (registers the models --model names)
from plsc.errors import PlscError
from plsc.interop import load_source, write_checkpoint
from plsc.models.loading import backbone_shapes, check_backbone_state
from plsc.registry import MODELS


def overrides(state, out_dir):
    """The -o options a config needs to load the imported checkpoint."""
    opts = [f"Model.name={state['model']}", f"Model.num_features={state['num_features']}"]
    if state["arch_kwargs"]:
        opts.append(f"Model.arch_kwargs={json.dumps(state['arch_kwargs'], separators=(', ', ': '))}")
    opts += [f"Model.{k}={json.dumps(v)}" for k, v in state.get("model_options", {}).items()]
    opts.append(f"Global.pretrained_model={out_dir}")
    return " ".join(f"-o {shlex.quote(o)}" for o in opts)


def report(src, state, out_dir):
    lines = [f"source: {src.format} {src.path} (sha256 {src.sha256[:16]}...)",
             f"detected: {src.model}" + (f" with arch_kwargs {src.arch_kwargs}" if src.arch_kwargs else "") +
             f", num_features {src.num_features}, {len(src.backbone)} backbone tensors"]
    lines += [f"  {n}" for n in src.notes]
    if src.fc is not None:
        lines.append(f"classifier: {src.class_num} classes x {src.num_features} -> {state['world_size']} shard(s) "
                     f"(weights only; loaded when Model.class_num is {src.class_num})")
    else:
        lines.append("classifier: none in the source (fine-tuning starts the FC fresh)")
    if src.unused:
        lines.append("not imported: " + "; ".join(f"{k} ({v})" for k, v in src.unused.items()))
    lines.append(f"wrote {out_dir}")
    lines.append(f"use it with a config of that backbone: {overrides(state, out_dir)}")
    return "\n".join(lines)


def check_output(src, source):
    """The converted arrays load into the backbone plsc builds for them (plsc.models.load_backbone's check)."""
    kwargs = {"num_features": src.num_features, **(src.model_options or {})}
    if src.arch_kwargs:
        kwargs["arch_kwargs"] = src.arch_kwargs
    check_backbone_state(backbone_shapes(src.model, **kwargs), {k: v.shape for k, v in src.backbone.items()},
                         f"{source} (converted)", src.model, src.num_features)


def import_checkpoint(source, out, model=None, mask_ratio=None, world_size=1, force=False):
    """Convert `source` into a plsc checkpoint directory `out`; -> the printed report."""
    if world_size < 1:
        raise PlscError(f"--world-size must be at least 1, got {world_size}")
    if model is not None and model not in MODELS.names():
        raise PlscError(f"--model {model}: not a registered plsc model (one of {', '.join(sorted(MODELS.names()))})")
    src = load_source(source, model=model, mask_ratio=mask_ratio)
    check_output(src, source)
    state = write_checkpoint(src, out, world_size=world_size, force=force)
    return report(src, state, out)
