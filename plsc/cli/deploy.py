"""Console scripts: plsc-embed, plsc-verify, plsc-calibrate (and the model options plsc-search shares); docs/deploy.md.

    plsc-embed MODEL INPUT... --out faces.npz
    plsc-verify MODEL a.jpg b.jpg
    plsc-calibrate MODEL lfw.bin --far 1e-3
    plsc-search build MODEL gallery/ --out gallery.faiss ; plsc-search query gallery.faiss photo.jpg

A problem with one input is one line on stderr naming it; the command goes on with the others and exits
with 2 only when nothing could be processed (or on an error that concerns everything: a missing model,
a bad option, an index of another model). Every output file is written atomically.
"""
# plsc.deploy (Paddle, onnxruntime, faiss) is imported inside the run functions: --help and a bad command line
# answer without loading it, and the thread settings are made before Paddle loads.
import json
import os
import sys

from plsc.cli.wrapper import Parser, describe, run_command
from plsc.env import setup_threads
from plsc.errors import DataError, PlscError

_MODEL_HELP = ("exported Paddle inference directory (plsc-export), a model.onnx, or a plsc checkpoint "
               "directory (then -c CONFIG)")


def _model_args(p, positional=True):
    if positional:
        p.add_argument("model", help=_MODEL_HELP)
    p.add_argument("-c", "--config", help="config of a checkpoint MODEL")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for a checkpoint MODEL (repeatable)")
    p.add_argument("--align", default="auto", choices=("auto", "crops", "none"),
                   help="auto: detect + 5-point align (112x112 images pass through); crops: inputs are aligned "
                        "crops; none: resize the whole image (default auto)")
    p.add_argument("--detector", default="mtcnn", help="face detector (default: MTCNN)")
    p.add_argument("--flip", action="store_true", help="add the mirror image's features (as evaluation does)")
    p.add_argument("--batch-size", type=int, default=64, help="faces per forward pass (default 64)")
    p.add_argument("--workers", type=int, default=2, help="decoding / detection threads (default 2)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is available")


def _embedder(args, faces="largest", model=None):
    from plsc.deploy.embed import Embedder

    return Embedder(model or args.model, args.config, args.override, align=args.align, faces=faces,
                    detector=args.detector, flip=args.flip, batch_size=args.batch_size, workers=args.workers,
                    use_gpu=False if args.cpu else None)


def _report(result, stream=None):
    stream = stream or sys.stderr
    for note in getattr(result, "notes", []):
        print(f"warning: {note}", file=stream)
    for status, message in zip(result.status, result.messages):
        if message:
            print(f"{'warning' if status in ('several_faces', 'face') else 'skipped'}: {message}", file=stream)


def _main(prog, build, argv, description):
    """Parse argv with build(parser) and run the command under plsc.cli's one error wrapper."""
    parser = build(Parser(prog=prog, description=description, epilog=describe(__doc__)[1]))

    def run(args):  # the thread settings first: before Paddle is imported
        setup_threads("cpu" if getattr(args, "cpu", False) else "gpu")
        return args.command_run(args)

    parser.set_defaults(run=run)
    return run_command(parser, argv)


def _check_out_dir(path):
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise PlscError(f"--out {path}: the folder {d} does not exist")


# ------------------------------------------------------------------ plsc-embed
def _embed(args):
    from plsc.deploy.embed import terminal_progress

    _check_out_dir(args.out)
    emb = _embedder(args, faces=args.faces)
    r = emb.embed(args.inputs, progress=terminal_progress())
    _report(r)
    if not len(r.embeddings):
        raise DataError(f"no face embedded from {len(r.inputs)} input(s){': ' + r.messages[0] if r.messages else ''}")
    r.save(args.out, extra={"model": os.path.abspath(args.model), "align": args.align, "flip": args.flip})
    done = int(r.ok.sum())
    print(f"{len(r.embeddings)} embeddings ({r.embeddings.shape[1]}-d) from {done} of {len(r.inputs)} inputs -> "
          f"{args.out}")


def _embed_parser(p):
    _model_args(p)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or .txt lists")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--faces", default="largest", choices=("largest", "all"),
                   help="embed the largest face of each image (default) or all of them")
    p.set_defaults(command_run=_embed)
    return p


def embed_main(argv=None):
    return _main("plsc-embed", _embed_parser, argv, "Embed the faces of photos (detect + 5-point align) into an .npz.")


# ------------------------------------------------------------------ plsc-verify
def _threshold(args, model, extra_paths=()):
    """(threshold, where it came from) from --threshold, a calibration file, or (None, None)."""
    from plsc.deploy.model import read_calibration, same_model

    if args.threshold is not None:
        return float(args.threshold), "--threshold"
    for path in list(extra_paths) + [model.calibration_path()]:
        cal = read_calibration(path)
        if cal is None:
            continue
        if "fingerprint" in cal and not same_model(cal["fingerprint"], model.fingerprint())[0]:
            print(f"warning: {path} was calibrated for another model; not used", file=sys.stderr)
            continue
        return float(cal["threshold"]), path
    return None, None


def _verify(args):
    emb = _embedder(args)
    r = emb.embed([args.a, args.b])
    for i, name in enumerate((args.a, args.b)):
        if not r.ok[i]:
            raise DataError(r.messages[i] or f"{name}: no face")
    _report(r)
    a, b = r.embeddings[r.rows_of(0)[0]], r.embeddings[r.rows_of(1)[0]]
    sim = float(a @ b)
    thr, source = _threshold(args, emb.model)
    if thr is None:
        print("warning: no threshold: pass --threshold or run plsc-calibrate for this model", file=sys.stderr)
    print(json.dumps({"similarity": round(sim, 6), "same": None if thr is None else bool(sim > thr),
                      "threshold": thr, "threshold_source": source, "a": args.a, "b": args.b}))


def _verify_parser(p):
    _model_args(p)
    p.add_argument("a", help="first photo")
    p.add_argument("b", help="second photo")
    p.add_argument("--threshold", type=float, help="cosine threshold (default: the model's calibration.json)")
    p.set_defaults(command_run=_verify)
    return p


def verify_main(argv=None):
    return _main("plsc-verify", _verify_parser, argv, "Are two photos the same person? Cosine similarity and verdict.")


# ------------------------------------------------------------------ plsc-calibrate
def _calibrate(args):
    import numpy as np

    from plsc.deploy.calibrate import calibrate, read_pairs_text
    from plsc.deploy.embed import atomic_write

    emb = _embedder(args)
    if args.pairs.endswith(".bin"):
        from plsc.data.bin import load_bin
        from plsc.deploy.images import decode_image

        blobs, same = load_bin(args.pairs)
        images = [decode_image(bytes(x), f"{args.pairs} image {i}") for i, x in enumerate(blobs)]
        r = emb.embed(images)
        left, right = np.arange(0, len(images), 2), np.arange(1, len(images), 2)
        names = [f"{args.pairs} image {i}" for i in range(len(images))]
    else:
        pairs = read_pairs_text(args.pairs)
        paths = sorted({p for a, b, _ in pairs for p in (a, b)})
        missing = [p for p in paths if not os.path.isfile(p)]
        for p in missing:
            print(f"skipped: {args.pairs} names {p}: no such file", file=sys.stderr)
        present = [p for p in paths if p not in set(missing)]
        r = emb.embed(present)
        pos = {p: i for i, p in enumerate(present)}
        same = np.asarray([s for _, _, s in pairs], bool)
        left = np.asarray([pos.get(a, -1) for a, _, _ in pairs])
        right = np.asarray([pos.get(b, -1) for _, b, _ in pairs])
        names = present
    _report(r)
    first = {}
    for row, i in enumerate(r.row_input):
        first.setdefault(int(i), row)
    usable = np.asarray([l in first and q in first for l, q in zip(left.tolist(), right.tolist())], bool)
    if not usable.any():
        raise DataError(f"{args.pairs}: no pair could be embedded ({len(names)} images)")
    ea = r.embeddings[[first[int(i)] for i in left[usable]]]
    eb = r.embeddings[[first[int(i)] for i in right[usable]]]
    cal = calibrate(ea, eb, same[usable], args.far)
    cal.update({"pairs": os.path.abspath(args.pairs), "pairs_used": int(usable.sum()),
                "pairs_skipped": int((~usable).sum()), "flip": bool(args.flip), "align": args.align,
                "model": os.path.abspath(args.model), "fingerprint": emb.model.fingerprint()})
    out = args.out or (args.index + ".calibration.json" if args.index else emb.model.calibration_path())
    if args.index:
        from plsc.deploy.gallery import Gallery

        Gallery.load(args.index).check_model(emb.model.fingerprint(), args.model)
    _check_out_dir(out)
    atomic_write(out, lambda f: f.write(json.dumps(cal, indent=1).encode()))
    shown = {k: cal[k] for k in ("threshold", "tar", "far", "target_far", "impostor_pairs", "genuine_pairs",
                                 "pairs_skipped")}
    print(json.dumps({**shown, "written": out}))


def _calibrate_parser(p):
    _model_args(p)
    p.add_argument("pairs", help="verification .bin, or a text file of 'path1 path2 same' lines")
    p.add_argument("--far", type=float, default=1e-4, help="target false-accept rate (default 1e-4)")
    p.add_argument("--out", help="where to write (default: calibration.json next to the model)")
    p.add_argument("--index", help="write INDEX.calibration.json next to this plsc-search index instead")
    p.set_defaults(command_run=_calibrate)
    return p


def calibrate_main(argv=None):
    return _main("plsc-calibrate", _calibrate_parser, argv,
                 "The cosine threshold of a model at a target false-accept rate, from verification pairs.")
