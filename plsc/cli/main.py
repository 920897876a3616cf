"""plsc: the version, the list of commands, and `plsc <command> ...` (the same as `plsc-<command> ...`)."""
import sys

import plsc
from plsc.cli import data, demo, deploy, ijb, interop, search, train
from plsc.cli.wrapper import Parser, run_command

# command -> (entry function of its console script plsc-<command>, one line)
COMMANDS = {
    "train": (train.train_main, "train a model from a YAML config (-c) and overrides (-o)"),
    "eval": (train.eval_main, "evaluate a model on the configured verification sets"),
    "export": (train.export_main, "export the backbone to a Paddle inference model or ONNX (parity checked)"),
    "ijb": (ijb.ijb_main, "IJB-B / IJB-C 1:1 verification and 1:N identification of a model"),
    "import": (interop.import_main, "convert a released checkpoint (PLSC, insightface, AdaFace) for plsc"),
    "pack-rec": (data.pack_rec_main, "pack images into an insightface-layout RecordIO"),
    "unpack-rec": (data.unpack_rec_main, "extract a RecordIO dataset to images + a label.txt"),
    "inspect-rec": (data.inspect_rec_main, "summarize a RecordIO dataset and find its first bad record"),
    "bin-convert": (data.bin_convert_main, "verification .bin <-> image pairs + a pairs label.txt"),
    "fc-shards": (data.fc_shards_main, "merge a checkpoint's FC shards, or split them for another world size"),
    "embed": (deploy.embed_main, "embeddings of photos (detect + align), to an .npz"),
    "verify": (deploy.verify_main, "are two photos the same person? (cosine similarity and threshold)"),
    "calibrate": (deploy.calibrate_main, "the cosine threshold of a model at a target false-accept rate"),
    "search": (search.search_main, "a face gallery index: build, add, remove, query"),
    "demo": (demo.demo_main, "a small real dataset, trained, evaluated and exported in minutes"),
}


def main_parser():
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {line}" for name, (_, line) in COMMANDS.items())
    p = Parser(prog="plsc", description=plsc.__doc__.splitlines()[0],
               epilog=f"commands (each also runs as plsc-<command>; `plsc <command> --help` for its options):\n"
                      f"{listing}")
    p.add_argument("--version", action="version", version=f"plsc {plsc.__version__}",
                   help="print the version and exit")
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands below")
    p.add_argument("args", nargs="...", metavar="...", help="the command's own arguments")
    p.set_defaults(run=lambda args: COMMANDS[args.command][0](args.args))
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:  # the command's own wrapper reports as plsc-<command>
        return COMMANDS[argv[0]][0](argv[1:])
    return run_command(main_parser(), argv)
