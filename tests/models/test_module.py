from __future__ import annotations

import csv
import math
from functools import partial
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_cl.data import LoaderSettings, SplitDigits
from lightning_cl.methods import ContinualCallback
from lightning_cl.models import MLP, ContinualModule, merge_batch
from tests.conftest import quiet_trainer_kwargs


def _module(**kwargs: Any) -> ContinualModule:
    model = kwargs.pop("model", None) or MLP(num_classes=10, input_size=64, hidden_size=32, drop_rate=0.0)
    kwargs.setdefault("optimizer", partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    return ContinualModule(model, **kwargs)


def test_forward_passes_task_labels_only_to_models_that_take_them() -> None:
    plain = ContinualModule(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)))
    assert plain(torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)).shape == (2, 10)
    multi = ContinualModule(MLP(input_size=64, hidden_size=8, head="multihead"))
    assert multi._takes_task_labels and not plain._takes_task_labels


def test_merge_batch_concatenates_named_batches() -> None:
    a = (torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([0, 0]))
    b = (torch.ones(1, 3), torch.tensor([5]), torch.tensor([1]))
    x, y, t = merge_batch({"current": a, "replay": b})
    assert x.shape == (3, 3) and y.tolist() == [0, 1, 5] and t.tolist() == [0, 0, 1]
    assert merge_batch(a)[1] is a[1]


def test_unknown_optimizer_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="optimizer_policy must be one of"):
        _module(optimizer_policy="sometimes")


def test_model_must_be_a_module() -> None:
    with pytest.raises(ValueError, match=r"torch\.nn\.Module"):
        ContinualModule("mlp")  # type: ignore[arg-type]


def test_fit_needs_an_experience() -> None:
    bench = SplitDigits(n_experiences=5)
    module = _module()
    trainer = L.Trainer(**quiet_trainer_kwargs())
    with pytest.raises(MisconfigurationException, match="Experience"):
        trainer.fit(module, train_dataloaders=bench.train_stream[0].train_dataloader())


def test_too_narrow_model_is_refused_before_any_step() -> None:
    bench = SplitDigits(n_experiences=5)  # classes in order: [0, 1], [2, 3], ...
    module = _module(model=MLP(num_classes=3, input_size=64, hidden_size=8))
    L.Trainer(**quiet_trainer_kwargs()).fit(module, datamodule=bench.train_stream[0])
    before = {k: v.clone() for k, v in module.state_dict().items()}

    with pytest.raises(ValueError, match=r"outputs 3 logits .* at least 4 outputs"):
        L.Trainer(**quiet_trainer_kwargs()).fit(module, datamodule=bench.train_stream[1])

    assert module.current_experience == 0 and module.seen_classes == {0, 1}
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_incremental_head_grows_before_the_optimizer_is_built() -> None:
    bench = SplitDigits(n_experiences=5, seed=1)
    module = _module(model=MLP(input_size=64, hidden_size=32, drop_rate=0.0, head="incremental"))
    for experience in bench.train_stream[:2]:
        L.Trainer(**quiet_trainer_kwargs(max_epochs=5)).fit(module, datamodule=experience)
    seen = set(
        bench.train_stream[0].classes_in_this_experience + bench.train_stream[1].classes_in_this_experience
    )
    assert module.seen_classes == seen
    assert module.model.head.out_features == max(seen) + 1
    L.Trainer(**quiet_trainer_kwargs()).test(module, datamodule=bench.test_stream[:2], verbose=False)
    # The new units were trained: the latest experience is learned.
    assert module.results.accuracy_matrix[-1][1] > 0.8


class _OptimizerProbe(L.Callback):
    def __init__(self) -> None:
        self.states: list[dict[str, Any]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        names = {p: n for n, p in pl_module.named_parameters()}
        optimizer = trainer.optimizers[0]
        self.states.append(
            {
                names[p]: s["momentum_buffer"].clone()
                for p, s in optimizer.state.items()
                if "momentum_buffer" in s
            }
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.on_train_start(trainer, pl_module)


@pytest.mark.parametrize("policy", ["reset", "keep"])
def test_optimizer_policy(policy: str) -> None:
    bench = SplitDigits(n_experiences=5)
    module = _module(optimizer_policy=policy)
    probe = _OptimizerProbe()
    for experience in bench.train_stream[:2]:
        L.Trainer(**quiet_trainer_kwargs(), callbacks=[probe]).fit(module, datamodule=experience)
    start0, end0, start1, _ = probe.states
    assert start0 == {}
    if policy == "reset":
        assert start1 == {}
    else:
        assert set(start1) == set(end0) == {n for n, _ in module.named_parameters()}
        assert all(torch.equal(start1[n], end0[n]) for n in end0)


class _ConstantPenalty(ContinualCallback):
    def __init__(self) -> None:
        self.checked = 0
        self._expected: torch.Tensor | None = None

    def penalty(self, module: Any, batch: Any, logits: torch.Tensor) -> torch.Tensor:
        self._expected = module.criterion(logits, batch[1]).detach() + 7.0
        return torch.tensor(7.0)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        assert self._expected is not None
        assert torch.allclose(outputs["loss"], self._expected)
        self.checked += 1


def test_training_loss_is_task_loss_plus_penalties() -> None:
    bench = SplitDigits(n_experiences=5)
    probe = _ConstantPenalty()
    L.Trainer(**quiet_trainer_kwargs(), callbacks=[probe]).fit(_module(), datamodule=bench.train_stream[0])
    assert probe.checked == len(bench.train_stream[0].train_dataloader())


def test_cl_callback_needs_a_continual_module() -> None:
    class Plain(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(64, 10)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.layer(batch[0].flatten(1)).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    bench = SplitDigits(n_experiences=5)
    trainer = L.Trainer(**quiet_trainer_kwargs(), callbacks=[_ConstantPenalty()])
    with pytest.raises(MisconfigurationException, match="needs a ContinualModule"):
        trainer.fit(Plain(), datamodule=bench.train_stream[0])


def test_logged_steps_never_collide_across_experiences(tmp_path: Any) -> None:
    bench = SplitDigits(n_experiences=5, loader=LoaderSettings(batch_size=64))
    module = _module()
    logger = CSVLogger(tmp_path, name="run")
    steps_per_exp = []
    for experience in bench.train_stream[:3]:
        trainer = L.Trainer(**quiet_trainer_kwargs(logger=logger, log_every_n_steps=1))
        trainer.fit(module, datamodule=experience)
        trainer.test(module, datamodule=bench.test_stream, verbose=False)
        steps_per_exp.append(trainer.global_step)
    rows = list(csv.DictReader(open(logger.log_dir + "/metrics.csv")))
    train_steps = [int(r["step"]) for r in rows if r.get("train/loss_step")]
    assert train_steps == sorted(train_steps) and len(set(train_steps)) == len(train_steps) == sum(
        steps_per_exp
    )
    test_rows = [r for r in rows if r.get("test/acc/stream")]
    assert [int(r["step"]) for r in test_rows] == [sum(steps_per_exp[: i + 1]) for i in range(3)]
    assert [float(r["experience"]) for r in test_rows] == [0.0, 1.0, 2.0]
    epoch_rows = [r for r in rows if r.get("train/acc_epoch")]
    assert len({r["step"] for r in epoch_rows}) == len(epoch_rows) == 3


def test_results_fill_one_row_per_trained_experience() -> None:
    bench = SplitDigits(n_experiences=5)
    module = _module()
    for experience in bench.train_stream[:2]:
        trainer = L.Trainer(**quiet_trainer_kwargs())
        trainer.fit(module, datamodule=experience)
        trainer.test(module, datamodule=bench.test_stream, verbose=False)
    results = module.results
    assert results.trained == [0, 1] and results.tested == [0, 1, 2, 3, 4]
    assert len(results.accuracy_matrix) == 2 and all(len(row) == 5 for row in results.accuracy_matrix)
    assert all(0.0 <= v <= 1.0 for row in results.accuracy_matrix for v in row)
    # The stream accuracy is the sample-weighted mean of the experience accuracies.
    sizes = torch.tensor([len(e) for e in bench.test_stream], dtype=torch.float64)
    row = torch.tensor(results.accuracy_matrix[1], dtype=torch.float64)
    assert results.stream_accuracy[1] == pytest.approx(float((row * sizes).sum() / sizes.sum()), abs=1e-6)


def test_lr_scheduler_factory_is_used_and_rebuilt_per_experience() -> None:
    bench = SplitDigits(n_experiences=5)
    module = _module(lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
    for experience in bench.train_stream[:2]:
        trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=3))
        trainer.fit(module, datamodule=experience)
        # Stepped once per epoch from the optimizer's lr, 0.05, in every experience.
        assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**3)


def test_lr_scheduler_from_the_command_line(capsys: Any) -> None:
    from pathlib import Path

    import yaml

    from lightning_cl.training.cli import main

    config = Path(__file__).resolve().parents[2] / "configs" / "split_digits_naive.yaml"
    args = [
        "fit",
        "--config",
        str(config),
        "--model.lr_scheduler",
        "torch.optim.lr_scheduler.StepLR",
        "--model.lr_scheduler.step_size",
        "2",
        "--print_config",
    ]
    with pytest.raises(SystemExit):
        main(args)
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["lr_scheduler"]
    assert printed["class_path"] == "torch.optim.lr_scheduler.StepLR"
    assert printed["init_args"]["step_size"] == 2


def test_multi_head_task_incremental_with_global_class_ids() -> None:
    # Task 1's classes ([1, 2]) are below task 0's ([5, 6]): each head needs its own classes only.
    bench = SplitDigits(n_experiences=5, seed=1, task_labels=True)
    module = ContinualModule(MLP(num_classes=2, input_size=64, hidden_size=16, head="multihead"))
    for experience in bench.train_stream:
        L.Trainer(**quiet_trainer_kwargs()).fit(module, datamodule=experience)
    widths = {task: head.out_features for task, head in module.model.head.heads.items()}
    assert widths == {"0": 7, "1": 3, "2": 9, "3": 10, "4": 8}
    assert module.seen_classes == set(range(10))


# ---------------------------------------------------------------------- metrics a user chooses
def _pooled_predictions(module: ContinualModule, stream: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The module's predictions and the targets over every sample of ``stream``, by hand."""
    module.eval()
    preds, targets = [], []
    with torch.no_grad():
        for experience in stream:
            x, y, t = experience.dataset.__getitems__(list(range(len(experience))))
            preds.append(module(x, t).argmax(-1))
            targets.append(y)
    return torch.cat(preds), torch.cat(targets)


def _f1_macro(preds: torch.Tensor, targets: torch.Tensor) -> float:
    """Macro F1 by hand, over the classes present in predictions or targets."""
    scores = []
    for c in torch.unique(torch.cat([preds, targets])).tolist():
        tp = int(((preds == c) & (targets == c)).sum())
        fp = int(((preds == c) & (targets != c)).sum())
        fn = int(((preds != c) & (targets == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def test_user_metrics_at_stream_scope_are_computed_over_the_pooled_samples() -> None:
    from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassF1Score

    L.seed_everything(1)  # the margin below depends on the trained weights
    bench = SplitDigits(n_experiences=5, seed=1, loader=LoaderSettings(batch_size=64))
    module = _module(
        metrics={
            "f1": MulticlassF1Score(num_classes=10, average="macro"),
            "confusion": MulticlassConfusionMatrix(num_classes=10),
        }
    )
    for experience in bench.train_stream[:2]:
        trainer = L.Trainer(**quiet_trainer_kwargs())
        trainer.fit(module, datamodule=experience)
        trainer.test(module, datamodule=bench.test_stream, verbose=False)
    logged = trainer.callback_metrics
    preds, targets = _pooled_predictions(module, bench.test_stream)
    by_hand = _f1_macro(preds, targets)
    assert float(logged["test/f1/stream"]) == pytest.approx(by_hand, abs=1e-5)
    results = module.results
    assert results["f1"].stream[-1] == pytest.approx(by_hand, abs=1e-5)
    # After two of five class-incremental experiences the experiences' mean is another number.
    # (each experience's F1 is over its own 2 classes, the stream's over all 10; seed 1: 0.053 against 0.130).
    assert by_hand < 0.5 * sum(results["f1"].matrix[-1]) / 5
    # Every scalar metric has its matrix; the stream confusion matrix counts every test sample.
    assert list(results) == ["accuracy", "loss", "f1"]
    confusion = results.tensors["confusion"][1]["stream"]
    assert confusion.sum().item() == sum(len(e) for e in bench.test_stream) == len(targets)
    assert confusion.diagonal().sum().item() == int((preds == targets).sum())
    assert results.stream_accuracy[-1] == pytest.approx(float((preds == targets).double().mean()), abs=1e-6)


def test_forward_transfer_from_an_evaluation_before_the_first_experience() -> None:
    bench = SplitDigits(n_experiences=5, seed=1, loader=LoaderSettings(batch_size=64))
    test_stream = bench.test_stream[:3]  # a 3-experience stream
    module = _module()
    L.Trainer(**quiet_trainer_kwargs()).test(module, datamodule=test_stream, verbose=False)
    for experience in bench.train_stream[:3]:
        trainer = L.Trainer(**quiet_trainer_kwargs())
        trainer.fit(module, datamodule=experience)
        trainer.test(module, datamodule=test_stream, verbose=False)
    for name in ("accuracy", "loss"):
        r = module.results[name]
        sign = 1.0 if r.higher_is_better else -1.0
        R, b = r.matrix, r.initial
        assert not any(math.isnan(v) for v in b)
        by_hand = sign * ((R[0][1] - b[1]) + (R[1][2] - b[2])) / 2  # GEM's FWT over experiences 2..T
        assert r.fwt == pytest.approx(by_hand)
    assert module.results.fwt == module.results["accuracy"].fwt


def test_fit_stream_evaluate_initial_records_the_untrained_row() -> None:
    from lightning_cl.training import fit_stream

    bench = SplitDigits(n_experiences=5, seed=1, loader=LoaderSettings(batch_size=64))
    kwargs = quiet_trainer_kwargs()
    kwargs.pop("logger")
    results = fit_stream(
        _module(),
        bench,
        logger=False,
        trainer_kwargs=kwargs,
        evaluate_initial=True,
        train_stream=bench.train_stream[:3],
        test_stream=bench.test_stream[:3],
    )
    r = results["accuracy"]
    assert len(r.initial) == 3 and not any(math.isnan(v) for v in r.initial)
    assert results.trained == [0, 1, 2]
    assert r.fwt == pytest.approx(((r.matrix[0][1] - r.initial[1]) + (r.matrix[1][2] - r.initial[2])) / 2)


def test_training_scopes_log_the_users_metrics_per_step_and_epoch(tmp_path: Any) -> None:
    from torchmetrics.classification import MulticlassF1Score

    bench = SplitDigits(n_experiences=5, loader=LoaderSettings(batch_size=64))
    module = _module(
        metrics={"f1": MulticlassF1Score(num_classes=10)}, metric_scopes=("minibatch", "epoch", "stream")
    )
    logger = CSVLogger(tmp_path, name="run")
    trainer = L.Trainer(**quiet_trainer_kwargs(logger=logger, log_every_n_steps=1, max_epochs=2))
    trainer.fit(module, datamodule=bench.train_stream[0])
    trainer.test(module, datamodule=bench.test_stream, verbose=False)
    rows = list(csv.DictReader(open(logger.log_dir + "/metrics.csv")))
    keys = {k for r in rows for k, v in r.items() if v}
    assert {"train/f1_step", "train/f1_epoch", "test/f1/stream"} <= keys
    assert "test/f1/exp0" not in keys  # no "experience" scope
    assert len([r for r in rows if r.get("train/f1_epoch")]) == 2
    assert all(0.0 <= float(r["train/f1_step"]) <= 1.0 for r in rows if r.get("train/f1_step"))


def test_unknown_metric_scope_is_refused() -> None:
    with pytest.raises(ValueError, match=r"metric_scopes must be among .*got \['task'\]"):
        _module(metric_scopes=("experience", "task"))


def test_metrics_with_no_scope_are_refused_and_no_metrics_need_none() -> None:
    from torchmetrics.classification import MulticlassF1Score

    with pytest.raises(ValueError, match=r"metric_scopes=\(\) measures the metrics \['f1'\] nowhere"):
        _module(metrics={"f1": MulticlassF1Score(num_classes=10)}, metric_scopes=())
    assert _module(metric_scopes=()).metric_scopes == ()  # accuracy and loss are always measured


def test_metric_matrices_round_trip_through_checkpoints_and_old_ones_load(tmp_path: Any) -> None:
    from torchmetrics.classification import MulticlassF1Score

    bench = SplitDigits(n_experiences=5, loader=LoaderSettings(batch_size=64))
    module = _module(metrics={"f1": MulticlassF1Score(num_classes=10)})
    trainer = L.Trainer(**quiet_trainer_kwargs())
    trainer.fit(module, datamodule=bench.train_stream[0])
    trainer.test(module, datamodule=bench.test_stream, verbose=False)
    path = tmp_path / "exp0.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    restored = _module(metrics={"f1": MulticlassF1Score(num_classes=10)})
    restored.on_load_checkpoint(checkpoint)
    assert restored.results == module.results and list(restored.results) == ["accuracy", "loss", "f1"]
    # A checkpoint written before every metric had its matrix holds the accuracy's only.
    del checkpoint["lightning_cl"]["metric_matrices"], checkpoint["lightning_cl"]["metric_names"]
    old = _module()
    old.on_load_checkpoint(checkpoint)
    assert old.results.accuracy_matrix == module.results.accuracy_matrix
    assert list(old.results) == ["accuracy"]


def test_metrics_from_yaml(capsys: Any) -> None:
    from pathlib import Path

    import yaml

    from lightning_cl.training.cli import main

    config = Path(__file__).resolve().parents[2] / "configs" / "split_digits_metrics.yaml"
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)["model"]
    assert printed["metrics"]["f1"]["class_path"] == "torchmetrics.classification.MulticlassF1Score"
    assert printed["metrics"]["top3"]["init_args"]["top_k"] == 3
    assert printed["metric_scopes"] == ["epoch", "experience", "stream"]


def test_epoch_accuracy_and_loss_are_those_of_every_training_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    # The steps' predictions and losses wait and update the epoch metrics in one call (flushed
    # when many are held): with a learning rate of 0 the epoch values must be the fixed model's
    # accuracy and mean loss over the experience's training samples.
    import lightning_cl.models.module as module_file
    from tests.conftest import digits_module

    monkeypatch.setattr(module_file, "_PENDING_SAMPLES", 100)
    L.seed_everything(0, verbose=False)
    experience = SplitDigits(n_experiences=2, seed=0, loader=LoaderSettings(batch_size=32)).train_stream[0]
    module = digits_module(optimizer=partial(torch.optim.SGD, lr=0.0))
    trainer = L.Trainer(**quiet_trainer_kwargs())
    trainer.fit(module, datamodule=experience)
    x = torch.stack([experience.dataset[i][0] for i in range(len(experience.dataset))])
    y = torch.tensor([int(experience.dataset[i][1]) for i in range(len(experience.dataset))])
    with torch.no_grad():
        logits = module(x)
    expected_acc = float((logits.argmax(-1) == y).float().mean())
    expected_loss = float(torch.nn.functional.cross_entropy(logits, y))
    assert float(trainer.callback_metrics["train/acc_epoch"]) == pytest.approx(expected_acc, abs=1e-6)
    assert float(trainer.callback_metrics["train/loss_epoch"]) == pytest.approx(expected_loss, rel=1e-5)


def test_an_aggregation_metric_of_the_loss_is_lower_is_better_whatever_its_name() -> None:
    from torchmetrics import MeanMetric

    bench = SplitDigits(n_experiences=5, loader=LoaderSettings(batch_size=64))
    module = _module(metrics={"avg": MeanMetric()})
    for experience in bench.train_stream[:2]:
        trainer = L.Trainer(**quiet_trainer_kwargs())
        trainer.fit(module, datamodule=experience)
        trainer.test(module, datamodule=bench.test_stream, verbose=False)
    results = module.results
    assert results["avg"].higher_is_better is False and results["loss"].higher_is_better is False
    avg, loss = torch.tensor(results["avg"].matrix), torch.tensor(results["loss"].matrix)
    assert torch.allclose(avg, loss, rtol=1e-5)  # the same values: the mean loss
    assert results["avg"].bwt == pytest.approx(results["loss"].bwt, rel=1e-4)  # and the same sign
