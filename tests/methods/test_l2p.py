"""L2P: a frozen backbone, learning prompts, keys and head; masked classes; the key loss; resume."""

from __future__ import annotations

import importlib.util
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits
from lightning_cl.methods import ERACE, L2P
from lightning_cl.models import ContinualModule
from lightning_cl.training import fit_stream
from lightning_cl.training.checkpoint import checkpoint_name
from tests.conftest import digits_module, quiet_trainer_kwargs, stream_trainer_kwargs

pytestmark = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed")


def vit_module(**pool: Any) -> ContinualModule:
    """The small random ViT of tests/models/test_l2p_model.py, Adam lr 0.03 (the paper's)."""
    from tests.models.test_l2p_model import small_vit

    return ContinualModule(small_vit(**pool), optimizer=partial(torch.optim.Adam, lr=0.03))


def _fit(module: ContinualModule, experience: Any, callbacks: list[Any], **kwargs: Any) -> None:
    L.Trainer(**quiet_trainer_kwargs(**kwargs), callbacks=callbacks).fit(module, datamodule=experience)


def test_the_backbone_stays_frozen_while_prompts_keys_and_head_learn() -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1)
    module = vit_module()
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    _fit(module, bench.train_stream[0], [L2P()])
    after = module.model.state_dict()
    backbone = [k for k in before if k.startswith("backbone.")]
    assert len(backbone) > 20 and all(torch.equal(before[k], after[k]) for k in backbone)
    for name in ("pool.prompts", "pool.keys", "head.classifier.weight"):
        assert not torch.equal(before[name], after[name]), name


def test_classes_outside_the_experience_are_masked_in_training() -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1)
    module, l2p = vit_module(), L2P()
    _fit(module, bench.train_stream[0], [l2p])
    head = module.model.head.classifier
    first = head.weight.detach().clone()
    experience = bench.train_stream[1]
    new = sorted(experience.classes_in_this_experience)
    _fit(module, experience, [l2p])
    old = sorted(bench.train_stream[0].classes_in_this_experience)
    # Masked logits take no part in the cross-entropy: the rows of the earlier classes are untouched.
    assert torch.equal(head.weight[old], first[old])
    assert not torch.equal(head.weight[new], torch.zeros_like(head.weight[new]))
    # The mask itself: -inf outside the experience's classes, the logits inside.
    logits = torch.arange(12.0).view(2, 6)
    masked = l2p.mask_logits(logits, torch.tensor(new))
    assert torch.isinf(masked[:, [c for c in range(6) if c not in new]]).all()
    assert torch.equal(masked[:, new], logits[:, new])
    # Without masking, the same run lowers the earlier classes' rows.
    module2, plain = vit_module(), L2P(use_mask=False)
    L.seed_everything(0)
    _fit(module2, bench.train_stream[0], [plain])
    rows = module2.model.head.classifier.weight.detach().clone()
    _fit(module2, experience, [plain])
    assert not torch.equal(module2.model.head.classifier.weight[old], rows[old])


def test_the_penalty_is_lambda_times_one_minus_cosine_of_the_chosen_keys() -> None:
    torch.manual_seed(0)
    module, l2p = vit_module(), L2P(sim_coefficient=0.5)
    vit = module.model
    x = torch.rand(6, 1, 8, 8)
    l2p.on_fit_start(L.Trainer(**quiet_trainer_kwargs()), module)  # attaches the recorder
    l2p.on_train_batch_start(None, module)  # type: ignore[arg-type]
    vit.train()
    logits = vit(x)
    penalty = l2p.penalty(module, (x, torch.zeros(6, dtype=torch.long), torch.zeros(6)), logits)
    l2p.teardown(None, module, "fit")  # type: ignore[arg-type]
    with torch.no_grad():
        query = F.normalize(vit.backbone.forward_features(x)[:, 0], dim=1)
        keys = F.normalize(vit.pool.keys, dim=1)
        top = (query @ keys.T).topk(vit.pool.top_n, dim=1).indices
        by_hand = 0.5 * (1 - (query[:, None, :] * keys[top]).sum(-1)).sum(1).mean()
    assert penalty is not None and float(penalty.detach()) == pytest.approx(float(by_hand), rel=1e-5)


def test_models_without_a_prompt_pool_and_a_second_task_loss_are_refused() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    with pytest.raises(
        MisconfigurationException, match=r"has no PromptPool: use lightning_cl\.models\.PromptedViT"
    ):
        _fit(digits_module(), bench.train_stream[0], [L2P()])
    with pytest.raises(MisconfigurationException, match=r"ERACE, L2P each replace the task loss"):
        _fit(vit_module(), bench.train_stream[0], [ERACE(mem_size=20), L2P()])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(sim_coefficient=-1.0), "sim_coefficient must be a finite number >= 0"),
        (dict(sim_coefficient=float("nan")), "sim_coefficient must be a finite number >= 0"),
        (dict(mask_value="low"), "mask_value must be a number"),
        (dict(use_mask="no"), "use_mask must be a bool.*got 'no'"),
        (dict(diversify=1), "diversify must be a bool.*got 1"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        L2P(**kwargs)


def test_prompt_counts_and_the_diversified_choice() -> None:
    L.seed_everything(0)
    bench = SplitDigits(n_experiences=5, seed=1)
    module, l2p = vit_module(pool_size=10), L2P(diversify=True)
    first, second = bench.train_stream[0], bench.train_stream[1]
    _fit(module, first, [l2p])
    pool = module.model.pool
    assert l2p.counts is not None and int(l2p.counts.sum()) == len(first.dataset) * pool.top_n
    assert torch.allclose(pool.frequency, l2p.counts.float() / l2p.counts.sum())
    after_first = l2p.counts.clone()
    free = after_first == 0
    assert free.any(), after_first  # some prompts were not chosen in the first experience
    _fit(module, second, [l2p])
    added = l2p.counts - after_first
    assert int(added.sum()) == len(second.dataset) * pool.top_n
    # Eq. 4: a prompt never chosen before has distance x frequency 0, the best score, so every
    # training sample of the second experience takes the free prompts first.
    if int(free.sum()) >= pool.top_n:
        assert int(added[~free].sum()) == 0, added
    else:
        assert torch.all(added[free] == len(second.dataset)), added


def _run(tmp: Path, **kwargs: Any) -> tuple[Any, ContinualModule, L2P]:
    L.seed_everything(1)
    module, l2p = vit_module(), L2P(diversify=True)
    results = fit_stream(
        module,
        SplitDigits(n_experiences=5, seed=1),
        callbacks=[l2p],
        logger=False,
        trainer_kwargs=stream_trainer_kwargs(enable_checkpointing=True, max_epochs=1),
        checkpoint_dir=tmp,
        **kwargs,
    )
    return results, module, l2p


def test_resume_at_an_experience_boundary_gives_the_same_run(tmp_path: Path) -> None:
    full, module, l2p = _run(tmp_path / "full", max_experiences=3)
    _run(tmp_path / "part", max_experiences=2)
    resumed, module2, l2p2 = _run(
        tmp_path / "part", ckpt_path=tmp_path / "part" / checkpoint_name(1), max_experiences=1
    )
    assert resumed.accuracy_matrix[:3] == full.accuracy_matrix
    assert torch.equal(l2p2.counts, l2p.counts)
    for (name, a), (_, b) in zip(module.state_dict().items(), module2.state_dict().items()):
        assert torch.equal(a, b), name
