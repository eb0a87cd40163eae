"""Continual-learning methods, each a Lightning ``Callback``; combine them in one callbacks list.

Naive fine-tuning is a :class:`~lightning_cl.models.ContinualModule` with no CL callback.
"""

from lightning_cl.methods.agem import AGEM, project_gradient
from lightning_cl.methods.ar1 import AR1
from lightning_cl.methods.base import (
    ContinualCallback,
    experience_generator,
    step_generator,
    stream_seed,
)
from lightning_cl.methods.bic import BiC, bias_correct
from lightning_cl.methods.buffers import BUFFER_POLICIES, ReplayBuffer
from lightning_cl.methods.cope import CoPE, ppp_loss, update_prototypes
from lightning_cl.methods.cwr import CWRStar, output_linear
from lightning_cl.methods.der import DER
from lightning_cl.methods.distributed import all_reduce_tensors, rank_shard
from lightning_cl.methods.episodic import EpisodicMemoryMethod
from lightning_cl.methods.er_ace import ERACE, masked_cross_entropy
from lightning_cl.methods.er_aml import ERAML, asymmetric_metric_loss
from lightning_cl.methods.ewc import EWC, fisher_information
from lightning_cl.methods.expert_gate import ExpertGate, expert_gate_network_of
from lightning_cl.methods.features import capture_features, resolve_layer
from lightning_cl.methods.from_scratch import FROM_SCRATCH_INITS, FromScratch
from lightning_cl.methods.gdumb import GDumb, greedy_class_balanced
from lightning_cl.methods.gem import GEM, gem_projection
from lightning_cl.methods.generative_replay import REPLAY_RATIOS, GenerativeReplay
from lightning_cl.methods.gss import GSSGreedy, gss_greedy_replace, gss_scores
from lightning_cl.methods.icarl import ICARL_REDUCTIONS, ICaRL, icarl_loss, nearest_mean_scores
from lightning_cl.methods.l2p import L2P, prompt_pool_of
from lightning_cl.methods.lamaml import LaMAML, lamaml_meta_gradients
from lightning_cl.methods.lfl import LFL
from lightning_cl.methods.lwf import LWF_TASK_LOSS_WEIGHTS, LwF, distillation_loss
from lightning_cl.methods.mas import MAS, output_sensitivity
from lightning_cl.methods.mer import MER, reptile_batches
from lightning_cl.methods.mir import MIR, interference_scores
from lightning_cl.methods.packnet import PackNet
from lightning_cl.methods.penalties import quadratic_penalty
from lightning_cl.methods.per_sample import per_sample_gradient_sums
from lightning_cl.methods.pnn import PNN, progressive_network_of
from lightning_cl.methods.rar import RAR, feature_attack, mixup_batch, nearest_other_class, virtual_parameters
from lightning_cl.methods.replay import Replay
from lightning_cl.methods.rwalk import RWalk
from lightning_cl.methods.scr import SCR, supervised_contrastive_loss
from lightning_cl.methods.selection import (
    ClosestToCenterSelection,
    FeatureSelection,
    HerdingSelection,
    RandomSelection,
    SelectionStrategy,
)
from lightning_cl.methods.si import SI
from lightning_cl.methods.slda import SLDA_COVARIANCE_UPDATES, StreamingLDA, lda_scores

__all__ = [
    "AGEM",
    "AR1",
    "BUFFER_POLICIES",
    "DER",
    "ERACE",
    "ERAML",
    "EWC",
    "FROM_SCRATCH_INITS",
    "GEM",
    "ICARL_REDUCTIONS",
    "L2P",
    "LFL",
    "LWF_TASK_LOSS_WEIGHTS",
    "MAS",
    "MER",
    "MIR",
    "PNN",
    "RAR",
    "REPLAY_RATIOS",
    "SCR",
    "SI",
    "SLDA_COVARIANCE_UPDATES",
    "BiC",
    "CWRStar",
    "ClosestToCenterSelection",
    "CoPE",
    "ContinualCallback",
    "EpisodicMemoryMethod",
    "ExpertGate",
    "FeatureSelection",
    "FromScratch",
    "GDumb",
    "GSSGreedy",
    "GenerativeReplay",
    "HerdingSelection",
    "ICaRL",
    "LaMAML",
    "LwF",
    "PackNet",
    "RWalk",
    "RandomSelection",
    "Replay",
    "ReplayBuffer",
    "SelectionStrategy",
    "StreamingLDA",
    "all_reduce_tensors",
    "asymmetric_metric_loss",
    "bias_correct",
    "capture_features",
    "distillation_loss",
    "experience_generator",
    "expert_gate_network_of",
    "feature_attack",
    "fisher_information",
    "gem_projection",
    "greedy_class_balanced",
    "gss_greedy_replace",
    "gss_scores",
    "icarl_loss",
    "interference_scores",
    "lamaml_meta_gradients",
    "lda_scores",
    "masked_cross_entropy",
    "mixup_batch",
    "nearest_mean_scores",
    "nearest_other_class",
    "output_linear",
    "output_sensitivity",
    "per_sample_gradient_sums",
    "ppp_loss",
    "progressive_network_of",
    "project_gradient",
    "prompt_pool_of",
    "quadratic_penalty",
    "rank_shard",
    "reptile_batches",
    "resolve_layer",
    "step_generator",
    "stream_seed",
    "supervised_contrastive_loss",
    "update_prototypes",
    "virtual_parameters",
]
