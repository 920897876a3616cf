"""plsc-import: convert a released checkpoint into a plsc checkpoint directory.

    plsc-import ms1mv3_arcface_r50_fp16/backbone.pth --out imported/r50
    plsc-import adaface_ir50_ms1mv2.ckpt --out imported/ir50
    plsc-import output/IResNet50/latest --out imported/plsc_r50 --world-size 8   # PLSC prefix (+ _rank<r> shards)

Sources: PLSC `.pdparams` (IResNet, MobileFaceNet, FaceViT; the file or its prefix; `_rank<r>`
classifier shards next to it are joined and re-split for --world-size), insightface arcface_torch
`.pt` / `.pth` state dicts (r18..r200, r2060, mbf, ViT t/s/b/l/h), AdaFace `.ckpt` (IR-18/34/50/101,
IR-SE-50; converted to take RGB input). The format and architecture are read from the file;
--model names the plsc model when the file cannot tell, --mask-ratio a FaceViT's masking (not stored
in the weights; default: the plsc model's). Files are read without torch and without a general
unpickler: a file that names code is refused and nothing in it runs.

The output is what Global.pretrained_model takes for fine-tuning, plsc-eval and plsc-export; the
tool prints the -o overrides to pass with a config of that backbone (also Model.mask_ratio for a
FaceViT: pass it, the checkpoint holds a mask token exactly when it is > 0).
"""
import argparse
import json
import shlex
import sys

from plsc.env import setup_threads


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
    from plsc.models.loading import backbone_shapes, check_backbone_state

    kwargs = {"num_features": src.num_features, **(src.model_options or {})}
    if src.arch_kwargs:
        kwargs["arch_kwargs"] = src.arch_kwargs
    check_backbone_state(backbone_shapes(src.model, **kwargs), {k: v.shape for k, v in src.backbone.items()},
                         f"{source} (converted)", src.model, src.num_features)


def main(argv=None):
    p = argparse.ArgumentParser(prog="plsc-import", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="PLSC .pdparams file or prefix, insightface .pt/.pth, AdaFace .ckpt")
    p.add_argument("--out", required=True, help="output checkpoint directory (must not exist unless --force)")
    p.add_argument("--model", default=None, help="plsc Model.name to import as (default: detected)")
    p.add_argument("--mask-ratio", type=float, default=None,
                   help="FaceViT only: the Model.mask_ratio the model was trained with (not stored in the weights; "
                        "default: the plsc model's default; 0 drops the file's mask token)")
    p.add_argument("--world-size", type=int, default=1, help="split the classifier (if any) for this many ranks")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out (only an earlier plsc-import output or an empty directory)")
    args = p.parse_args(argv)
    setup_threads()
    from plsc.errors import PlscError

    try:
        from plsc.interop import load_source, write_checkpoint
        from plsc.registry import MODELS

        if args.world_size < 1:
            raise PlscError(f"--world-size must be at least 1, got {args.world_size}")

        if args.model is not None:
            import plsc.models  # noqa: F401

            if args.model not in MODELS.names():
                raise PlscError(f"--model {args.model}: not a registered plsc model "
                                f"(one of {', '.join(sorted(MODELS.names()))})")
        src = load_source(args.source, model=args.model, mask_ratio=args.mask_ratio)
        check_output(src, args.source)
        state = write_checkpoint(src, args.out, world_size=args.world_size, force=args.force)
        print(report(src, state, args.out), flush=True)
        return 0
    except PlscError as e:
        print(f"plsc-import: error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
