"""Models: the ``ContinualModule``, dynamic heads, reference backbones and the loss-term extension point."""

from lightning_cl.models.backbones import CNN, MLP, MLP_ACTIVATIONS, make_head
from lightning_cl.models.batch_renorm import (
    BatchRenorm1d,
    BatchRenorm2d,
    BatchRenormSettings,
    replace_batch_norm,
)
from lightning_cl.models.eval_classifier import EvalClassifier, eval_classifier_of
from lightning_cl.models.expert_gate import ExpertGateNetwork, GateAutoencoder
from lightning_cl.models.heads import (
    MASK_VALUE,
    DynamicModule,
    IncrementalClassifier,
    MultiHeadClassifier,
    copy_at_state,
    pad_to,
    slice_to,
)
from lightning_cl.models.l2p import (
    PROMPT_INITS,
    PromptedViT,
    PromptPool,
    PromptSelection,
    key_matching_loss,
)
from lightning_cl.models.loss_term import LossTerm, batch_parts, task_loss_owner
from lightning_cl.models.module import (
    ON_NONFINITE,
    OPTIMIZER_POLICIES,
    ContinualModule,
    NonFiniteLossError,
    check_new_trainer,
    merge_batch,
)
from lightning_cl.models.optimisation_step import (
    InnerLossScaling,
    OptimisationStep,
    StepResult,
    optimisation_step_owner,
)
from lightning_cl.models.pnn import PNN_ADAPTERS, ProgressiveNetwork
from lightning_cl.models.vae import MNIST_NORMALISED_RANGE, VAE, VAE_LIKELIHOODS

__all__ = [
    "CNN",
    "MASK_VALUE",
    "MLP",
    "MLP_ACTIVATIONS",
    "MNIST_NORMALISED_RANGE",
    "ON_NONFINITE",
    "OPTIMIZER_POLICIES",
    "PNN_ADAPTERS",
    "PROMPT_INITS",
    "VAE",
    "VAE_LIKELIHOODS",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenormSettings",
    "ContinualModule",
    "DynamicModule",
    "EvalClassifier",
    "ExpertGateNetwork",
    "GateAutoencoder",
    "IncrementalClassifier",
    "InnerLossScaling",
    "LossTerm",
    "MultiHeadClassifier",
    "NonFiniteLossError",
    "OptimisationStep",
    "ProgressiveNetwork",
    "PromptPool",
    "PromptSelection",
    "PromptedViT",
    "StepResult",
    "batch_parts",
    "check_new_trainer",
    "copy_at_state",
    "eval_classifier_of",
    "key_matching_loss",
    "make_head",
    "merge_batch",
    "optimisation_step_owner",
    "pad_to",
    "replace_batch_norm",
    "slice_to",
    "task_loss_owner",
]
