"""Evaluation: LFW-style verification on many sets (LFWAcc, evaluate_sets) and IJB-B/C (plsc.metrics.ijb)."""
from plsc.metrics.verification import LFWAcc, verify  # noqa: F401  (registers LFWAcc in METRICS)
