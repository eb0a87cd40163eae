"""Evaluation: a matrix per scalar metric, the continual-learning metrics derived from it, figures."""

from lightning_cl.evaluation.accuracy_matrix import AccuracyMatrix
from lightning_cl.evaluation.cl_metrics import (
    amca,
    average,
    average_accuracy,
    backward_transfer,
    forgetting,
    forgetting_per_experience,
    forward_transfer,
    mean_class_accuracy,
    seen_average,
)
from lightning_cl.evaluation.metric_matrix import MetricMatrices, MetricMatrix
from lightning_cl.evaluation.plots import (
    plot_confusion_matrix,
    plot_curves,
    plot_matrix,
    save_figures,
)
from lightning_cl.evaluation.results import ContinualResults, MetricResults

__all__ = [
    "AccuracyMatrix",
    "ContinualResults",
    "MetricMatrices",
    "MetricMatrix",
    "MetricResults",
    "amca",
    "average",
    "average_accuracy",
    "backward_transfer",
    "forgetting",
    "forgetting_per_experience",
    "forward_transfer",
    "mean_class_accuracy",
    "plot_confusion_matrix",
    "plot_curves",
    "plot_matrix",
    "save_figures",
    "seen_average",
]
