"""Evaluation: the accuracy matrix and the stream metrics derived from it."""

from lightning_cl.evaluation.accuracy_matrix import (
    AccuracyMatrix,
    ContinualResults,
    average_accuracy,
    backward_transfer,
    forgetting,
)

__all__ = ["AccuracyMatrix", "ContinualResults", "average_accuracy", "backward_transfer", "forgetting"]
