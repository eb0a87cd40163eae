"""PromptedViT's pretrained weights from a local file, and its input checks (L2P's backbone)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_cl.models import PromptedViT

pytestmark = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed")

ARCH: dict[str, Any] = dict(img_size=8, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2)
POOL: dict[str, Any] = dict(pool_size=4, prompt_length=2, top_n=2)


def _source_vit(**changes: Any) -> torch.nn.Module:
    """A small timm ViT with its own 10-class head, as a pretraining run would leave it."""
    import timm

    torch.manual_seed(3)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **{**ARCH, **changes})
    with torch.no_grad():  # weights unlike any fresh initialisation
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _prompted(path: Path | str, **changes: Any) -> PromptedViT:
    return PromptedViT("vit_tiny_patch16_224", pretrained_file=path, vit_kwargs={**ARCH, **changes}, **POOL)


def test_weights_load_from_a_file_and_the_query_is_the_source_models_feature(tmp_path: Path) -> None:
    source = _source_vit()
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    vit = _prompted(path).eval()
    loaded = vit.backbone.state_dict()
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    assert sorted(loaded) == sorted(expected)  # the file's classifier is dropped, nothing else
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert not any(p.requires_grad for p in vit.backbone.parameters())  # still frozen
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        feature = source.forward_head(source.forward_features(x), pre_logits=True)
    assert torch.allclose(vit.query(x), feature, atol=1e-6)
    # Another random initialisation would differ: the file, not timm's seed, made the weights.
    fresh = PromptedViT("vit_tiny_patch16_224", pretrained=False, vit_kwargs=ARCH, **POOL)
    assert not torch.allclose(fresh.query(x), feature, atol=1e-3)


def test_a_checkpoint_holding_a_state_dict_and_another_img_size_load(tmp_path: Path) -> None:
    source = _source_vit()
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)
    # timm's filter resamples the 2x2 grid of position embeddings to the 3x3 of a 12x12 input.
    vit = _prompted(path, img_size=12)
    assert tuple(vit.backbone.pos_embed.shape) == (1, 1 + 9, 32)
    assert torch.equal(vit.backbone.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    assert vit(torch.rand(2, 1, 12, 12)).shape == (2, 2)


def test_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "vit.pth"
    with pytest.raises(FileNotFoundError, match=r"pretrained_file '.*nowhere/vit\.pth' is not a file"):
        _prompted(missing)


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("not weights")
    with pytest.raises(ValueError, match=r"notes\.pth' could not be read as a state dict"):
        _prompted(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(embed_dim=16), r"size mismatch for cls_token: .*\[1, 1, 32\].*\[1, 1, 16\]"),
        (dict(depth=3), r"Missing key\(s\) in state_dict: \"blocks\.2\."),
    ],
)
def test_weights_of_another_architecture_are_refused_naming_the_weights(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    path = tmp_path / "vit.pth"
    torch.save(_source_vit().state_dict(), path)
    with pytest.raises(
        ValueError, match=r"pretrained_file '.*vit\.pth' does not fit 'vit_tiny_patch16_224'"
    ) as err:
        _prompted(path, **changes)
    # The message goes on to name the weight that does not fit, or the one missing.
    assert re.search(message, str(err.value)), str(err.value)


def test_images_of_another_size_or_channel_count_are_refused_naming_both() -> None:
    vit = PromptedViT("vit_tiny_patch16_224", pretrained=False, vit_kwargs=ARCH, **POOL)
    with pytest.raises(
        ValueError, match=r"takes 8x8 images \(img_size=8\), got 28x28: build it with img_size=28"
    ):
        vit(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"takes 1-channel images \(in_chans=1\), got 3 channels"):
        vit(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"takes images \(B, C, H, W\), got a tensor of shape \(2, 64\)"):
        vit(torch.rand(2, 64))
    assert vit(torch.rand(2, 1, 8, 8)).shape == (2, 2)  # the right size passes
