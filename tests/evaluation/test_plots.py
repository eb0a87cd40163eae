from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lightning_cl.evaluation import (
    MetricMatrices,
    plot_confusion_matrix,
    plot_curves,
    plot_matrix,
    save_figures,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_SIGNATURE


def _results(aligned: torch.Tensor):
    m = MetricMatrices()
    for i in range(3):
        for j in range(3):
            m.record("accuracy", i, j, aligned[i, j])
            m.record("loss", i, j, 3.0 * (1.0 - float(aligned[i, j])))
        m.record_stream("accuracy", i, aligned[i].mean())
    return m.results()


def test_heat_map_shows_the_matrix(aligned: torch.Tensor, agg, tmp_path: Path) -> None:
    results = _results(aligned)
    figure = plot_matrix(results["accuracy"], path=tmp_path / "acc.png")
    image = figure.axes[0].images[0]
    assert torch.allclose(torch.as_tensor(image.get_array().filled(math.nan)), aligned)
    assert image.get_clim() == (0.0, 1.0)
    assert sorted(t.get_text() for t in figure.axes[0].texts) == sorted(f"{v:.2f}" for v in aligned.flatten())
    assert _is_png(tmp_path / "acc.png")
    loss = plot_matrix(results["loss"]).axes[0].images[0]
    assert loss.get_clim() == pytest.approx((3.0 * 0.05, 3.0 * 1.0))  # the loss spans its own range


def test_heat_map_leaves_unmeasured_cells_blank(agg) -> None:
    image = plot_matrix([[0.5, math.nan]]).axes[0].images[0]
    assert image.get_array().mask.tolist() == [[False, True]]


def test_curves_draw_one_line_per_test_experience(aligned: torch.Tensor, agg) -> None:
    figure = plot_curves(_results(aligned)["accuracy"])
    lines = figure.axes[0].lines
    assert [line.get_label() for line in lines] == ["exp 0", "exp 1", "exp 2", "stream"]
    assert list(lines[1].get_ydata()) == pytest.approx(aligned[:, 1].tolist())
    assert list(lines[3].get_ydata()) == pytest.approx(aligned.mean(1).tolist())


def test_confusion_matrix_figure(agg, tmp_path: Path) -> None:
    cm = torch.tensor([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
    figure = plot_confusion_matrix(cm, class_names=["a", "b", "c"], path=tmp_path / "cm.png")
    array = torch.as_tensor(figure.axes[0].images[0].get_array())
    assert array.sum() == 16 and torch.equal(array.long(), cm)
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["a", "b", "c"]
    assert _is_png(tmp_path / "cm.png")
    rates = torch.as_tensor(plot_confusion_matrix(cm, normalize="true").axes[0].images[0].get_array())
    assert rates.sum(dim=1).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_confusion_matrix_refuses_bad_input(agg) -> None:
    with pytest.raises(ValueError, match="must be square \\(C, C\\), got shape \\(2, 3\\)"):
        plot_confusion_matrix(torch.zeros(2, 3))
    with pytest.raises(
        ValueError, match="normalize must be one of \\(None, 'true', 'pred', 'all'\\), got 'rows'"
    ):
        plot_confusion_matrix(torch.eye(2), normalize="rows")
    with pytest.raises(ValueError, match="needs 2 names"):
        plot_confusion_matrix(torch.eye(2), class_names=["a"])


def test_save_figures_writes_non_empty_pngs(aligned: torch.Tensor, agg, tmp_path: Path) -> None:
    written = save_figures(_results(aligned), tmp_path / "figures")
    assert set(written) == {"accuracy_matrix", "accuracy_curves", "loss_matrix", "loss_curves"}
    assert all(_is_png(path) for path in written.values())
    assert written["loss_curves"] == tmp_path / "figures" / "loss_curves.png"
    with pytest.raises(KeyError, match="no metric 'f1'"):
        save_figures(_results(aligned), tmp_path, metrics=["f1"])


def test_a_per_class_metric_is_not_drawn_as_an_empty_matrix(
    aligned: torch.Tensor, agg, tmp_path: Path
) -> None:
    from lightning_cl.evaluation import figures

    m = MetricMatrices()
    for i in range(3):
        m.record("accuracy", i, i, aligned[i, i])
        m.record_per_class("class_acc", i, [0.5, 0.25, 1.0])
    results = m.results()
    assert results["class_acc"].trained and not results["class_acc"].tested  # rows, no columns
    with pytest.raises(ValueError, match="metric 'class_acc' has no value to draw"):
        plot_matrix(results["class_acc"])
    written = save_figures(results, tmp_path)
    assert sorted(written) == ["accuracy_curves", "accuracy_matrix"]
    assert sorted(figures(results)) == ["accuracy_curves", "accuracy_matrix"]
    # One name or a list of them; an unknown name is refused as save_figures refuses it.
    assert sorted(figures(results, metrics="accuracy")) == ["accuracy_curves", "accuracy_matrix"]
    for draw in (
        lambda: figures(results, metrics=["nope"]),
        lambda: save_figures(results, tmp_path, metrics="nope"),
    ):
        with pytest.raises(KeyError, match="no metric 'nope'; recorded"):
            draw()


def test_log_figures_refuses_a_logger_name(aligned: torch.Tensor, agg) -> None:
    from lightning_cl.evaluation import log_figures

    with pytest.raises(ValueError, match=r"loggers must be Lightning Logger objects.*\['str'\]"):
        log_figures(_results(aligned), "tensorboard")
    assert log_figures(_results(aligned), None) == []
