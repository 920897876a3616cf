"""plsc-search build / add / remove / query (the gallery itself is plsc.deploy.gallery).

    plsc-search build MODEL GALLERY --out gallery.faiss [--index flat|hnsw|ivf] [--per-image]
    plsc-search add gallery.faiss carol/ [dave/ ...]            # identity folders (or a folder of them)
    plsc-search remove gallery.faiss carol [dave ...]
    plsc-search query gallery.faiss photo.jpg [...] --top-k 5  # JSON lines

GALLERY: one folder per identity (its name is the identity), several photos each. One template per
identity (the L2-normalised mean of its photos' embeddings) unless --per-image enrols every photo.
The model is recorded in the index's sidecar (path, config, overrides) and used again by add / query;
`--model` overrides it, and a model whose fingerprint differs from the gallery's is refused.
"""
# plsc.deploy is imported inside the run functions: --help and a bad command line answer without loading Paddle
# (plsc.cli.deploy's model options and helpers are shared).
import json
import os
import sys

import numpy as np

from plsc.cli.deploy import _check_out_dir, _embedder, _main, _model_args, _report, _threshold
from plsc.errors import DataError


def _identity_folders(paths):
    """[(identity, folder)] from identity folders or galleries (folders of identity folders)."""
    out = []
    for path in paths:
        if not os.path.isdir(path):
            raise DataError(f"{path}: not a folder (expected an identity folder of photos, or a gallery folder of "
                            f"identity folders)")
        subs = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
        if subs:
            loose = [f for f in os.listdir(path) if os.path.isfile(os.path.join(path, f))]
            if loose:
                print(f"warning: {path}: {len(loose)} file(s) outside the identity folders ignored "
                      f"(e.g. {sorted(loose)[0]})", file=sys.stderr)
            out += [(d, os.path.join(path, d)) for d in subs]
        else:
            out.append((os.path.basename(os.path.normpath(path)), path))
    if not out:
        raise DataError(f"no identity folders in {', '.join(paths)}")
    return out


def _enrol(gallery, emb, folders, per_image):
    """Embed each identity's photos and add them; -> number of identities added."""
    added = 0
    for name, folder in folders:
        r = emb.embed([folder])
        _report(r)
        if not len(r.embeddings):
            print(f"skipped: identity {name!r} ({folder}): no photo with a face", file=sys.stderr)
            continue
        rows = r.embeddings
        if not per_image:
            mean = rows.mean(axis=0)
            rows = (mean / max(float(np.linalg.norm(mean)), 1e-12))[None]
        gallery.add(name, rows)
        added += 1
    return added


def _model_of(args, gallery):
    m = gallery.info.get("model") or {}
    path = args.model or m.get("path")
    if not path:
        raise DataError(f"{args.index}: no model recorded; pass --model")
    if not args.model:
        args.config = args.config or m.get("config")
        args.override = args.override or m.get("overrides") or []
    emb = _embedder(args, faces=getattr(args, "faces", "largest"), model=path)
    gallery.check_model(emb.model.fingerprint(), path)
    return emb


def _build(args):
    from plsc.deploy.gallery import INDEX_KINDS, Gallery

    _check_out_dir(args.out)
    if args.index not in INDEX_KINDS:
        raise DataError(f"--index {args.index!r}: expected one of {', '.join(INDEX_KINDS)}")
    folders = _identity_folders([args.gallery])
    emb = _embedder(args)
    staging = Gallery.create(emb.model.fingerprint(), "flat")
    added = _enrol(staging, emb, folders, args.per_image)
    if not added:
        raise DataError(f"{args.gallery}: no identity could be enrolled")
    model = {"path": os.path.abspath(args.model), "config": args.config and os.path.abspath(args.config),
             "overrides": args.override}
    if args.index == "flat":
        gallery = staging
        gallery.info["model"] = model
    else:  # approximate kinds: built (and trained) on the embedded vectors
        ids = np.asarray(sorted(int(k) for k in staging.info["ids"]), np.int64)
        vectors = np.stack([staging.index.reconstruct(int(i)) for i in ids])
        gallery = Gallery.create(emb.model.fingerprint(), args.index, train=vectors, model=model)
        gallery.index.add_with_ids(vectors, ids)
        gallery.info["ids"], gallery.info["next_id"] = staging.info["ids"], staging.info["next_id"]
    gallery.info["per_image"] = bool(args.per_image)
    gallery.set_search_param(args.search_param)
    gallery.save(args.out)
    print(f"{added} identities ({gallery.index.ntotal} vectors, {args.index}) -> {args.out}")


def _add(args):
    from plsc.deploy.gallery import Gallery

    gallery = Gallery.load(args.index)
    emb = _model_of(args, gallery)
    added = _enrol(gallery, emb, _identity_folders(args.folders), gallery.info.get("per_image", False))
    if not added:
        raise DataError("no identity could be added")
    gallery.save(args.index)
    print(f"added {added} identities -> {args.index} ({len(gallery.identities)} in all)")


def _remove(args):
    from plsc.deploy.gallery import Gallery

    gallery = Gallery.load(args.index)
    removed = []
    for name in args.names:
        try:
            gallery.remove(name)
            removed.append(name)
        except DataError as e:
            print(f"skipped: {e}", file=sys.stderr)
    if not removed:
        raise DataError(f"{args.index}: none of {', '.join(args.names)} is in the gallery")
    gallery.save(args.index)
    print(f"removed {len(removed)} identities -> {args.index} ({len(gallery.identities)} left)")


def _query(args):
    from plsc.deploy.gallery import Gallery

    gallery = Gallery.load(args.index)
    if args.search_param is not None:
        gallery.set_search_param(args.search_param)
    emb = _model_of(args, gallery)
    thr, source = _threshold(args, emb.model, [args.index + ".calibration.json"])
    if thr is None:
        print("warning: no open-set threshold (pass --threshold or run plsc-calibrate --index): "
              "'accepted' is null", file=sys.stderr)
    r = emb.embed(args.images)
    _report(r)
    if not len(r.embeddings):
        raise DataError(f"no face found in {len(r.inputs)} query input(s)")
    hits = gallery.search(r.embeddings, args.top_k)
    for row, found in enumerate(hits):
        i = int(r.row_input[row])
        best = found[0] if found else (None, None)
        print(json.dumps({"input": r.inputs[i], "face": int(r.face_index[row]), "identity": best[0],
                          "score": None if best[1] is None else round(best[1], 6),
                          "accepted": None if thr is None or best[1] is None else bool(best[1] > thr),
                          "threshold": thr, "matches": [{"identity": n, "score": round(s, 6)} for n, s in found]}))
    print(f"threshold from {source}" if source else "", file=sys.stderr, end="\n" if source else "")


def search_parser(p):
    sub = p.add_subparsers(dest="command", required=True, metavar="{build,add,query,remove}", help="what to do")
    b = sub.add_parser("build", help="embed a gallery folder and write the index")
    _model_args(b)
    b.add_argument("gallery", help="folder of identity folders")
    b.add_argument("--out", required=True, help="index file to write (its .json sidecar goes beside it)")
    b.add_argument("--index", default="flat", help="flat (exact, default), hnsw or ivf (approximate)")
    b.add_argument("--per-image", action="store_true", help="enrol every photo instead of one mean template")
    b.add_argument("--search-param", type=int, help="hnsw: efSearch (default 256); ivf: nprobe (default nlist/4)")
    b.set_defaults(command_run=_build)
    for name, fn, what in (("add", _add, "identity folders to add"), ("query", _query, "photos to identify")):
        s = sub.add_parser(name, help=what)
        s.add_argument("index", help="index written by plsc-search build")
        s.add_argument("folders" if name == "add" else "images", nargs="+", help=what)
        s.add_argument("--model", help="model to embed with (default: the one recorded in the index)")
        _model_args(s, positional=False)
        if name == "query":
            s.add_argument("--top-k", type=int, default=5, help="matches listed per face (default 5)")
            s.add_argument("--threshold", type=float, help="open-set cosine threshold (default: calibration)")
            s.add_argument("--faces", default="largest", choices=("largest", "all"),
                           help="identify the largest face of each photo (default) or all of them")
            s.add_argument("--search-param", type=int, help="override the index's efSearch (hnsw) / nprobe (ivf)")
        s.set_defaults(command_run=fn)
    r = sub.add_parser("remove", help="remove identities by name")
    r.add_argument("index", help="index written by plsc-search build")
    r.add_argument("names", nargs="+", help="identities to remove")
    r.set_defaults(command_run=_remove)
    return p


def search_main(argv=None):
    return _main("plsc-search", search_parser, argv, "A face gallery index: build, add, remove, query.")
