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
from lightning_cl.evaluation.class_statistics import LabelRepartition, NewOldScores
from lightning_cl.evaluation.metric_matrix import MetricMatrices, MetricMatrix
from lightning_cl.evaluation.plots import (
    figures,
    log_figures,
    plot_confusion_matrix,
    plot_curves,
    plot_matrix,
    save_figures,
)
from lightning_cl.evaluation.results import ContinualResults, MetricResults
from lightning_cl.evaluation.stream_metrics import (
    DEFAULT_METRICS,
    METRIC_SCOPES,
    Measurement,
    StreamMetrics,
    default_metrics,
    metric_dict,
    record_measurements,
)
from lightning_cl.evaluation.usage import ExperienceUsage

__all__ = [
    "DEFAULT_METRICS",
    "METRIC_SCOPES",
    "AccuracyMatrix",
    "ContinualResults",
    "ExperienceUsage",
    "LabelRepartition",
    "Measurement",
    "MetricMatrices",
    "MetricMatrix",
    "MetricResults",
    "NewOldScores",
    "StreamMetrics",
    "amca",
    "average",
    "average_accuracy",
    "backward_transfer",
    "default_metrics",
    "figures",
    "forgetting",
    "forgetting_per_experience",
    "forward_transfer",
    "log_figures",
    "mean_class_accuracy",
    "metric_dict",
    "plot_confusion_matrix",
    "plot_curves",
    "plot_matrix",
    "record_measurements",
    "save_figures",
    "seen_average",
]
