"""Every plsc console script: argument parsing and the calls into the library, one module per command family,
all run under one error wrapper (plsc.cli.wrapper: exit 2 and one line for a user error, a traceback and exit 1
for plsc's own bug, 130 when interrupted).

    train.py     plsc-train, plsc-eval, plsc-export        (a YAML config and -o overrides)
    ijb.py       plsc-ijb                                  (IJB-B / IJB-C of a model)
    data.py      plsc-pack-rec, plsc-unpack-rec, plsc-inspect-rec, plsc-bin-convert, plsc-fc-shards
    interop.py   plsc-import                               (released checkpoints -> plsc checkpoints)
    deploy.py    plsc-embed, plsc-verify, plsc-calibrate
    search.py    plsc-search
    demo.py      plsc-demo
    main.py      plsc (--version, the list of commands, `plsc <command> ...`)

A module here imports argparse and the wrapper at its top and the library inside its run functions, so that
--help and a bad command line answer without loading Paddle, and the thread settings are made before it loads.
"""
from plsc.cli.train import eval_main, export_main, train_main  # noqa: F401  (plsc.cli.train_main and co.)
