"""Training: the per-experience loop as a function and the command line."""

from lightning_cl.training.fit_stream import RESULTS_FILE, fit_stream

__all__ = ["RESULTS_FILE", "fit_stream"]
