"""Evaluation cost: verification protocol, .bin pipeline, IJB pooling / scores / ROC (prints a table).

    python tools/bench_eval.py [--pairs 6000] [--ijb-images 100000] [--dim 512]

A thin entry to plsc.metrics.benchmark, kept here with the other benchmark scripts.
"""
import sys

from plsc.env import setup_threads, tune_allocator

if __name__ == "__main__":
    setup_threads()
    tune_allocator()  # as plsc-eval sets up a CPU run
    from plsc.metrics.benchmark import main

    sys.exit(main())
