"""L2P's prompt pool and prompted ViT: prompts prepended, top-N key matching, key loss, frozen backbone."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F

from lightning_cl.models import PromptedViT, PromptPool, PromptSelection, key_matching_loss

needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed")


def small_vit(**kwargs: object) -> PromptedViT:
    """A random ViT for 8x8 grey digits: patches of 4 (4 patches), width 32, 2 blocks of 2 heads."""
    options: dict[str, object] = dict(pool_size=6, prompt_length=2, top_n=3)
    options.update(kwargs)
    return PromptedViT(
        "vit_tiny_patch16_224",
        pretrained=False,
        vit_kwargs=dict(img_size=8, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2),
        **options,  # type: ignore[arg-type]
    )


def _pool_with_keys(keys: torch.Tensor, top_n: int, **kwargs: object) -> PromptPool:
    pool = PromptPool(embed_dim=keys.shape[1], pool_size=len(keys), prompt_length=1, top_n=top_n, **kwargs)
    with torch.no_grad():
        pool.keys.copy_(keys)
    return pool


def test_top_n_picks_the_keys_nearest_the_query_by_cosine() -> None:
    # Keys at 0, 30, 60, 90, 180 degrees; the lengths differ, which cosine matching ignores.
    angles = torch.tensor([0.0, 30.0, 60.0, 90.0, 180.0]).deg2rad()
    lengths = torch.tensor([1.0, 5.0, 0.1, 2.0, 9.0])
    keys = torch.stack([angles.cos(), angles.sin()], 1) * lengths[:, None]
    pool = _pool_with_keys(keys, top_n=2)
    queries = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-1.0, 0.1]])  # at 0, 90 and ~174 degrees
    chosen = [sorted(row) for row in pool(queries).indices.tolist()]
    assert chosen == [[0, 1], [2, 3], [3, 4]]


def test_batchwise_selection_gives_every_sample_the_most_chosen_prompts() -> None:
    keys = torch.eye(4)
    pool = _pool_with_keys(keys, top_n=1, batchwise=True)
    queries = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 1.0, 0.1], [0, 0, 0.9, 0.2]])
    assert pool(queries).indices.flatten().tolist() == [2, 2, 2, 2]  # prompt 2 wins the vote 3 to 1
    pool.batchwise = False
    assert pool(queries).indices.flatten().tolist() == [0, 2, 2, 2]


def test_frequency_of_earlier_prompts_diversifies_the_training_choice_only() -> None:
    keys = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    pool = _pool_with_keys(keys, top_n=1)
    query = torch.tensor([[1.0, 0.1]])  # nearest key 0, at a distance > 0
    with torch.no_grad():
        pool.frequency.copy_(torch.tensor([0.9, 0.1, 0.0]))
    # Eq. 4: distance times frequency; prompt 2 was never used, so it is chosen in training.
    assert pool.train()(query).indices.item() == 2
    assert pool.eval()(query).indices.item() == 0  # evaluation: the nearest key


def test_key_loss_is_one_minus_cosine_summed_over_the_selected_keys() -> None:
    torch.manual_seed(0)
    pool = PromptPool(embed_dim=5, pool_size=6, prompt_length=2, top_n=3)
    query = torch.randn(4, 5)
    selection = pool(query)
    expected = torch.stack(
        [
            sum(1.0 - F.cosine_similarity(query[b], pool.keys[i], dim=0) for i in selection.indices[b])
            for b in range(4)
        ]
    ).mean()
    loss = key_matching_loss(selection)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    loss.backward()
    assert pool.keys.grad is not None and pool.keys.grad.abs().sum() > 0
    unused = sorted(set(range(6)) - set(selection.indices.flatten().tolist()))
    assert torch.all(pool.keys.grad[unused] == 0)  # only the selected keys are pulled


def test_a_hand_built_selection_gives_the_hand_computed_loss() -> None:
    q = F.normalize(torch.tensor([[1.0, 1.0]]), dim=1)
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    selection = PromptSelection(torch.tensor([[0, 2]]), q, keys, q @ keys.T)
    # (1 - cos 45 deg) + (1 - cos 135 deg) = 2
    assert float(key_matching_loss(selection)) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(top_n=7), "top_n must be at most pool_size=6"),
        (dict(init="normal"), "init must be one of"),
        (dict(prompt_length=0), "prompt_length must be a positive int"),
    ],
)
def test_bad_pool_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    options: dict[str, object] = dict(embed_dim=4, pool_size=6, prompt_length=2, top_n=3)
    options.update(kwargs)
    with pytest.raises(ValueError, match=message):
        PromptPool(**options)  # type: ignore[arg-type]


@needs_timm
def test_selected_prompts_are_prepended_to_the_embedded_input() -> None:
    torch.manual_seed(0)
    vit = small_vit().eval()
    x = torch.rand(5, 1, 8, 8)
    sequence, selection = vit.embed(x)
    n_prompt = 3 * 2
    assert tuple(sequence.shape) == (5, n_prompt + 1 + 4, 32)  # prompts, [CLS], 4 patches
    expected_prompts = vit.pool.prompts[selection.indices].reshape(5, n_prompt, 32)
    assert torch.equal(sequence[:, :n_prompt], expected_prompts)
    embedded = vit.backbone._pos_embed(vit.backbone.patch_embed(x))
    assert torch.allclose(sequence[:, n_prompt:], embedded)
    # The query is the frozen model's [CLS] feature without prompts.
    cls = vit.backbone.forward_features(x)[:, 0]
    assert torch.allclose(selection.query, F.normalize(cls, dim=1), atol=1e-6)


@needs_timm
def test_only_the_prompts_keys_and_head_learn_and_the_head_grows() -> None:
    vit = small_vit()
    trainable = sorted(n for n, p in vit.named_parameters() if p.requires_grad)
    assert trainable == ["head.classifier.bias", "head.classifier.weight", "pool.keys", "pool.prompts"]
    assert sum(p.numel() for p in vit.backbone.parameters()) > 20_000
    assert vit(torch.rand(2, 1, 8, 8)).shape == (2, 2)
    vit.adaptation([4, 5])
    logits = vit(torch.rand(2, 1, 8, 8))
    assert logits.shape == (2, 6) and torch.all(logits[:, :4] == -1000.0)  # unseen classes masked


@needs_timm
def test_a_model_that_is_not_a_vision_transformer_is_refused() -> None:
    with pytest.raises(ValueError, match="must name a timm vision transformer"):
        PromptedViT("resnet18", pretrained=False)


@needs_timm
def test_an_unknown_model_name_is_named() -> None:
    with pytest.raises(ValueError, match=r"got 'vit_nonexistent_xyz', which timm does not know"):
        PromptedViT("vit_nonexistent_xyz", pretrained=False)


def test_without_timm_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now fails
    with pytest.raises(ImportError, match=r'pip install "lightning-cl\[vit\]"'):
        PromptedViT("vit_tiny_patch16_224", pretrained=False)
