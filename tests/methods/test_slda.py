"""Streaming LDA: a batch LDA of the same frozen features, the paper's update, the LDA at evaluation."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import SplitDigits
from lightning_cl.methods import CWRStar, PackNet, StreamingLDA, lda_scores
from tests.conftest import digits_module, quiet_trainer_kwargs


def _batch_lda(z: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, ...]:
    """Class means and the pooled within-class covariance of all of ``z`` at once."""
    z = z.double()
    means = torch.stack(
        [z[y == c].mean(0) if (y == c).any() else torch.zeros(z.shape[1]) for c in range(n_classes)]
    )
    centred = z - means[y]
    counts = torch.bincount(y, minlength=n_classes)
    return means.double(), counts, centred.T @ centred / len(y)


def _features(module, dataset) -> torch.Tensor:  # type: ignore[no-untyped-def]
    x, _, _ = dataset.__getitems__(list(range(len(dataset))))
    module.eval()
    with torch.no_grad():
        return module.model.features(x)


def test_streaming_lda_equals_the_batch_lda_of_the_same_features() -> None:
    L.seed_everything(0)
    bench, module = SplitDigits(n_experiences=5, seed=1), digits_module()
    slda = StreamingLDA(covariance="exact")
    body = module.model.features[1].weight.detach().clone()
    head = module.model.head.weight.detach().clone()
    for experience in bench.train_stream[:2]:
        trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[slda])
        trainer.fit(module, datamodule=experience)
    assert torch.equal(module.model.features[1].weight, body)  # the extractor is frozen
    assert not torch.equal(module.model.head.weight, head)  # what follows it trains
    train = [bench.train_stream[i].dataset for i in range(2)]
    z = torch.cat([_features(module, d) for d in train])
    y = torch.cat([d.targets for d in train])
    means, counts, sigma = _batch_lda(z, y, 10)
    assert slda.n_seen == len(y)  # one pass: the second epoch learns nothing more
    assert torch.equal(slda.counts, counts[: len(slda.counts)])
    torch.testing.assert_close(slda.means, means[: len(slda.means)], rtol=0, atol=1e-5)
    torch.testing.assert_close(slda.covariance_matrix, sigma, rtol=0, atol=1e-5)
    test = bench.test_stream[0].dataset
    x, _, t = test.__getitems__(list(range(len(test))))
    expected = lda_scores(
        _features(module, test), means[: len(slda.means)], counts[: len(slda.means)], sigma, 1e-4
    )
    with torch.no_grad():
        scores = slda.eval_logits(module, x, t)
    seen = counts[: scores.shape[1]] > 0
    torch.testing.assert_close(scores[:, seen].double(), expected[:, seen], rtol=1e-5, atol=1e-5)
    # Evaluation goes through the LDA: the first experience's classes are still recognised.
    result = L.Trainer(**quiet_trainer_kwargs(), callbacks=[slda]).test(
        module, datamodule=bench.test_stream[:2], verbose=False
    )[0]
    assert min(result["test/acc/exp0"], result["test/acc/exp1"]) > 0.8


def test_the_papers_update_one_sample_at_a_time() -> None:
    torch.manual_seed(0)
    z, y = torch.randn(40, 3, dtype=torch.float64), torch.randint(0, 3, (40,))
    slda = StreamingLDA()
    slda.update(z[:25], y[:25])
    slda.update(z[25:], y[25:])
    # Hayes and Kanan's Eq. 1-2, written out: t counts every sample so far, not the class's.
    mu, c, sigma = torch.zeros(3, 3, dtype=torch.float64), [0, 0, 0], torch.zeros(3, 3, dtype=torch.float64)
    for t, (zi, yi) in enumerate(zip(z, y.tolist())):
        d = zi - mu[yi]
        sigma = (t * sigma + t * torch.outer(d, d) / (t + 1)) / (t + 1)
        mu[yi] = (c[yi] * mu[yi] + zi) / (c[yi] + 1)
        c[yi] += 1
    torch.testing.assert_close(slda.covariance_matrix, sigma)
    torch.testing.assert_close(slda.means, mu)
    exact = StreamingLDA(covariance="exact")
    exact.update(z, y)
    _, _, pooled = _batch_lda(z, y, 3)
    torch.testing.assert_close(exact.covariance_matrix, pooled)
    assert not torch.allclose(slda.covariance_matrix, pooled)  # the paper's is an approximation


def test_unseen_classes_are_never_predicted_and_bad_arguments() -> None:
    means = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 3.0]], dtype=torch.float64)
    scores = lda_scores(
        torch.zeros(1, 2), means, torch.tensor([0, 4, 4]), torch.eye(2, dtype=torch.float64), 0.5
    )
    assert scores[0, 0] == -1000.0 and scores.argmax(1).tolist() == [1]
    with pytest.raises(ValueError, match=r"shrinkage must be a number in \[0, 1\]"):
        StreamingLDA(shrinkage=2.0)
    with pytest.raises(ValueError, match="covariance must be one of"):
        StreamingLDA(covariance="oas")
    bench = SplitDigits(n_experiences=5, seed=1)
    with pytest.raises(ValueError, match="the model has no layer 'backbone'"):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[StreamingLDA(feature_layer="backbone")]).fit(
            digits_module(), datamodule=bench.train_stream[0]
        )


def test_a_feature_layer_that_leaves_nothing_to_train_is_refused() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module = digits_module()
    with pytest.raises(ValueError, match=r"feature_layer='head' .* leaves no trainable parameter"):
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[StreamingLDA(feature_layer="head")]).fit(
            module, datamodule=bench.train_stream[0]
        )
    assert all(p.requires_grad for p in module.parameters())  # refused before freezing anything


@pytest.mark.parametrize("other", [PackNet, CWRStar])
def test_methods_whose_classifier_it_replaces_are_refused(other: type) -> None:
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=other is PackNet)
    with pytest.raises(
        MisconfigurationException, match=f"StreamingLDA cannot be combined with {other.__name__}.*replaces"
    ):
        L.Trainer(**quiet_trainer_kwargs(max_epochs=2), callbacks=[StreamingLDA(), other()]).fit(
            digits_module(), datamodule=bench.train_stream[0]
        )
