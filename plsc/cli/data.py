"""Dataset and checkpoint file tools: plsc-pack-rec, plsc-unpack-rec, plsc-inspect-rec, plsc-bin-convert,
plsc-fc-shards (the work is done in plsc.tools.*; docs/data.md describes the formats)."""
# The library is imported inside the run functions: --help and a bad command line answer without loading it.
import os

from plsc.cli.wrapper import Parser, describe, run_command

# ------------------------------------------------------------------ plsc-pack-rec
PACK_REC = """Pack images into an insightface-layout RecordIO (train.rec, train.idx, train.lst).

    plsc-pack-rec INPUT OUTPUT_DIR [--image-root DIR] [--encode keep|jpg|png] [--quality 95] [--workers N] [--force]

INPUT is a folder with one subfolder per identity (labels 0.. in sorted subfolder order) or a PLSC
label.txt (`relpath<TAB>label`, paths relative to --image-root, default the label file's folder).
Record 0 holds the identity key range, keys 1..N the images (sorted by label), then one record per
identity with its [start, end) image keys; train.lst lists `key<TAB>label<TAB>relpath`.
--encode keep stores the file bytes unchanged (after checking they decode); jpg/png re-encode."""


def _pack_rec(args):
    from plsc.tools.pack_rec import pack_input

    n, c = pack_input(args.input, args.output_dir, args.image_root, args.encode, args.quality, args.workers,
                      args.name, args.force)
    print(f"packed {n} images of {c} identities into {os.path.join(args.output_dir, args.name)}.rec")


def pack_rec_parser():
    description, epilog = describe(PACK_REC)
    p = Parser(prog="plsc-pack-rec", description=description, epilog=epilog)
    p.add_argument("input", help="identity folder tree or label.txt")
    p.add_argument("output_dir", help="folder to write <name>.rec / .idx / .lst into")
    p.add_argument("--image-root", default=None, help="root of the label.txt paths (default: its folder)")
    p.add_argument("--encode", default="keep", choices=["keep", "jpg", "png"],
                   help="keep the file bytes (default) or re-encode as jpg / png")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality for --encode jpg (default 95)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)),
                   help="reading / decoding threads (default: the CPU count)")
    p.add_argument("--name", default="train", help="output file stem (default train)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(run=_pack_rec)
    return p


def pack_rec_main(argv=None):
    return run_command(pack_rec_parser(), argv)


# ------------------------------------------------------------------ plsc-unpack-rec
UNPACK_REC = """Extract a RecordIO dataset to images + a PLSC label.txt.

    plsc-unpack-rec REC_DIR OUTPUT_DIR [--name train] [--force]

Writes OUTPUT_DIR/images/<key 8 digits>.<jpg|png> (the stored bytes, unchanged) and
OUTPUT_DIR/label.txt (`images/<file><TAB>label`), ready for FaceIdentificationDataset
{image_root: OUTPUT_DIR, cls_label_path: OUTPUT_DIR/label.txt}."""


def _unpack_rec(args):
    from plsc.tools.unpack_rec import unpack_rec

    n = unpack_rec(args.rec_dir, args.output_dir, args.name, args.force)
    print(f"wrote {n} images and {os.path.join(args.output_dir, 'label.txt')}")


def unpack_rec_parser():
    description, epilog = describe(UNPACK_REC)
    p = Parser(prog="plsc-unpack-rec", description=description, epilog=epilog)
    p.add_argument("rec_dir", help="folder with <name>.rec and <name>.idx")
    p.add_argument("output_dir", help="folder to write images/ and label.txt into")
    p.add_argument("--name", default="train", help="file stem of the dataset (default train)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(run=_unpack_rec)
    return p


def unpack_rec_main(argv=None):
    return run_command(unpack_rec_parser(), argv)


# ------------------------------------------------------------------ plsc-inspect-rec
INSPECT_REC = """Summarize a RecordIO dataset and find its first bad record.

    plsc-inspect-rec REC_DIR [--name train] [--limit N]

Prints the layout (insightface / im2rec), number of records, images and classes, the size of the
first image, and checks every image record (or the first --limit): framing, header, label range,
decodability. Exit code 0 when all checked records are fine, 1 at the first bad record, 2 when the
files cannot be opened at all."""


def _inspect_rec(args):
    from plsc.tools.inspect_rec import inspect

    return 0 if inspect(args.rec_dir, args.name, args.limit) else 1


def inspect_rec_parser():
    description, epilog = describe(INSPECT_REC)
    p = Parser(prog="plsc-inspect-rec", description=description, epilog=epilog)
    p.add_argument("rec_dir", help="folder with <name>.rec and <name>.idx")
    p.add_argument("--name", default="train", help="file stem of the dataset (default train)")
    p.add_argument("--limit", type=int, default=None, help="check only the first N images")
    p.set_defaults(run=_inspect_rec)
    return p


def inspect_rec_main(argv=None):
    return run_command(inspect_rec_parser(), argv)


# ------------------------------------------------------------------ plsc-bin-convert
BIN_CONVERT = """Verification .bin <-> image pairs + PLSC pairs label.txt.

    plsc-bin-convert to-pairs lfw.bin OUTPUT_DIR [--flip] [--force]
    plsc-bin-convert to-bin PAIRS_DIR OUT.bin [--label-file label.txt] [--drop-hflip] [--force]

to-pairs writes OUTPUT_DIR/images/%08d_0.<ext>, %08d_1.<ext> (the encoded bytes unchanged) and
OUTPUT_DIR/label.txt (`images/a<TAB>images/b<TAB>issame`, as PLSC's converter writes it); --flip adds
horizontally flipped PNG copies (`%08d_0_hflip.png`) as extra lines. to-bin packs every line of the
label file (--drop-hflip leaves out lines whose two images are *_hflip.*) into an insightface .bin."""


def _to_pairs(args):
    from plsc.tools.bin_convert import bin_to_pairs

    n = bin_to_pairs(args.bin_path, args.output_dir, args.flip, args.force)
    print(f"wrote {n} pairs{' (+ flipped copies)' if args.flip else ''} to {args.output_dir}")


def _to_bin(args):
    from plsc.tools.bin_convert import pairs_to_bin

    n = pairs_to_bin(args.pairs_dir, args.out_bin, args.label_file, args.drop_hflip, args.force)
    print(f"wrote {n} pairs to {args.out_bin}")


def bin_convert_parser():
    description, epilog = describe(BIN_CONVERT)
    p = Parser(prog="plsc-bin-convert", description=description, epilog=epilog)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{to-pairs,to-bin}", help="the direction")
    a = sub.add_parser("to-pairs", help=".bin -> images + label.txt", description=".bin -> images + label.txt")
    a.add_argument("bin_path", help="verification .bin (insightface layout)")
    a.add_argument("output_dir", help="folder to write images/ and label.txt into")
    a.add_argument("--flip", action="store_true", help="also write horizontally flipped copies")
    a.add_argument("--force", action="store_true", help="overwrite existing outputs")
    a.set_defaults(run=_to_pairs)
    b = sub.add_parser("to-bin", help="images + label.txt -> .bin", description="images + label.txt -> .bin")
    b.add_argument("pairs_dir", help="folder the label file's paths are relative to")
    b.add_argument("out_bin", help=".bin file to write")
    b.add_argument("--label-file", default=None, help="default: PAIRS_DIR/label.txt")
    b.add_argument("--drop-hflip", action="store_true", help="leave out *_hflip pairs")
    b.add_argument("--force", action="store_true", help="overwrite an existing OUT.bin")
    b.set_defaults(run=_to_bin)
    return p


def bin_convert_main(argv=None):
    return run_command(bin_convert_parser(), argv)


# ------------------------------------------------------------------ plsc-fc-shards
FC_SHARDS = """Merge a checkpoint's FC shards into one file, or split one for another world size.

    plsc-fc-shards merge output/IResNet50/latest --out fc_full.npz
    plsc-fc-shards split output/IResNet50/latest --world-size 4 --out output/IResNet50/latest_w4
    plsc-fc-shards split fc_full.npz --world-size 4 --out shards/

Training resumes at any world size by itself (each rank reads the rows it needs); this tool is for
moving the classifier elsewhere: one [C, D] weight (+ momentum) array, or a checkpoint whose shard
files match the world size it will run on. Splitting a checkpoint copies its other files, updates
its world size and writes a fresh manifest."""


def _merge(args):
    from plsc.tools.fc_shards import merge_checkpoint

    full = merge_checkpoint(args.checkpoint, args.out, args.force)
    print(f"wrote {args.out}: {full['weight'].shape[0]} classes x {full['weight'].shape[1]}")


def _split(args):
    from plsc.tools.fc_shards import split_source

    split_source(args.source, args.world_size, args.out, args.force)
    print(f"wrote {args.world_size} shard(s) to {args.out}")


def fc_shards_parser():
    description, epilog = describe(FC_SHARDS)
    p = Parser(prog="plsc-fc-shards", description=description, epilog=epilog)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{merge,split}", help="what to do")
    what = "all shards of a checkpoint -> one .npz (weight, momentum: [C, D])"
    m = sub.add_parser("merge", help=what, description=what)
    m.add_argument("checkpoint", help="checkpoint directory")
    m.add_argument("--out", required=True, help="merged .npz to write")
    m.add_argument("--force", action="store_true", help="replace an earlier merged .npz of this tool")
    m.set_defaults(run=_merge)
    what = "a checkpoint or merged .npz -> shards for --world-size ranks"
    s = sub.add_parser("split", help=what, description=what)
    s.add_argument("source", help="checkpoint directory or merged .npz")
    s.add_argument("--world-size", type=int, required=True, help="number of ranks to split for")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--force", action="store_true", help="replace an earlier output of this tool")
    s.set_defaults(run=_split)
    return p


def fc_shards_main(argv=None):
    return run_command(fc_shards_parser(), argv)
