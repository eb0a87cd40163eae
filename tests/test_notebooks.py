"""The tutorial notebooks run top to bottom and show what their text claims.

Each notebook prints one line ``RESULTS key=value ...`` with the numbers its text discusses; the
test of each notebook executes it (nbclient, in a temporary directory) and asserts those numbers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
RESULTS_LINE = re.compile(r"^RESULTS (?P<pairs>.+)$", re.MULTILINE)


def _stdout(nb: Any) -> str:
    return "".join(
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream" and output.name == "stdout"
    )


def _has_png(nb: Any) -> bool:
    return any(
        "image/png" in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def _results(stdout: str) -> dict[str, float]:
    """The ``key=value`` pairs of the ``RESULTS`` lines (numbers; ``nan`` allowed)."""
    lines = RESULTS_LINE.findall(stdout)
    assert lines, "the notebook did not print its 'RESULTS key=value ...' line"
    values: dict[str, float] = {}
    for line in lines:
        for pair in line.split():
            key, _, value = pair.partition("=")
            values[key] = float(value)
    return values


# ---------------------------------------------------------------- what each notebook must show
def _check_quickstart(r: dict[str, float], out: str, nb: Any) -> None:
    naive, replay = r["naive"], r["replay"]
    assert naive < 0.3, f"naive fine-tuning should forget the old classes, got average accuracy {naive}"
    assert replay >= naive + 0.3, f"Replay should beat naive by 0.3 or more: naive {naive}, replay {replay}"
    assert _has_png(nb), "the notebook drew no figure"


def _check_benchmarks(r: dict[str, float], out: str, nb: Any) -> None:
    assert r["experiences"] == 5 and r["own_experiences"] == 3
    # Cutting into mini-experiences of 50 loses and duplicates nothing.
    assert r["online_samples"] == r["train_samples"] == 1438
    assert r["online_experiences"] == 30, "5 experiences of 281-291 samples cut by 50 give 6 each"
    # A class-balanced 20% of every experience moves to the validation stream.
    assert r["kept_samples"] + r["valid_samples"] == r["train_samples"]
    assert abs(r["valid_samples"] / r["train_samples"] - 0.2) < 0.01
    # The classic benchmarks are built where MNIST's files are, and skipped with a message elsewhere.
    root = os.environ.get("LIGHTNING_CL_DATA")
    if root and (Path(root) / "MNIST" / "raw").is_dir():
        assert "SplitMNIST: class_incremental, 5 experiences" in out
    else:
        assert "MNIST skipped" in out


def _check_models(r: dict[str, float], out: str, nb: Any) -> None:
    # SplitDigits(seed=1) brings classes 5 and 6 first: the incremental head starts 7 wide, ends 10.
    assert (r["first_width"], r["final_width"]) == (7, 10)
    ci, ti = r["ci_single_head"], r["ti_multi_head"]
    assert ci < 0.3, f"naive class-incremental fine-tuning should forget, got average accuracy {ci}"
    assert ti > 0.85, f"the multi-head model on the task-incremental stream should remember, got {ti}"
    # The optimizer's state at the start of experiences 1 and 2: none after a reset, kept otherwise.
    assert r["reset_state_after_first"] == 0 and r["keep_state_after_first"] == 4


def _check_own_method(r: dict[str, float], out: str, nb: Any) -> None:
    naive, replay, mine = r["naive"], r["replay"], r["mine"]
    assert naive < 0.3, f"naive fine-tuning should forget, got average accuracy {naive}"
    assert replay >= naive + 0.4, f"Replay should beat naive: naive {naive}, Replay {replay}"
    # The notebook's own replay method (40 samples per experience) does as well as the built-in one.
    assert mine >= naive + 0.4 and abs(mine - replay) < 0.1, f"RandomReplay {mine} vs Replay {replay}"
    assert r["memory"] == 200 and r["state_restored"] == 1


def _check_evaluation(r: dict[str, float], out: str, nb: Any) -> None:
    assert r["rows"] == 5
    # Every derived metric recomputed by hand from its definition agrees with the library's.
    assert r["max_difference"] < 1e-9
    assert 0.4 < r["average"] < 1.0 and r["forgetting"] > 0.05, "a small memory remembers some, not all"
    # BWT compares with the accuracy right after learning, forgetting with the best earlier one.
    assert -r["forgetting"] - 1e-9 <= r["bwt"] < 0
    assert r["fwt"] <= 0.05, "training on other classes cannot raise an unseen class's accuracy"
    assert r["roundtrip"] == 1 and abs(r["error_forgetting"] - r["forgetting"]) < 1e-9
    # A torchmetrics metric of the user's (F1) gets a matrix of its own, one row per experience.
    assert r["f1_rows"] == 5 and 0.0 < r["f1_average"] < 1.0
    assert _has_png(nb), "the notebook drew no figure"


def _check_loggers(r: dict[str, float], out: str, nb: Any) -> None:
    # What the CSV logger stored is what the results hold.
    assert r["row_difference"] < 1e-6 and r["stream_difference"] < 1e-6
    # Steps count over the whole stream: increasing across the experiences' trainers, up to the total.
    assert r["steps_increase"] == 1
    assert r["total_steps"] - 5 <= r["last_step"] < r["total_steps"], "logged every 5 of all steps"
    if r["tensorboard"]:
        assert r["tb_difference"] < 1e-6 and r["tb_step"] == r["total_steps"]
    else:
        assert "TensorBoard skipped" in out


def _check_resume(r: dict[str, float], out: str, nb: Any) -> None:
    # Stopped after two experiences and resumed in a fresh process: the same matrix, entry by entry.
    assert r["rows"] == 5
    assert r["max_difference"] == 0.0, f"the resumed run's matrix differs by up to {r['max_difference']}"
    assert r["resumed"] == r["uninterrupted"] > 0.4
    assert "resuming from" in out and "at experience 2" in out


def _check_ddp(r: dict[str, float], out: str, nb: Any) -> None:
    # Two processes ran the whole stream: the same matrix, memory and weights on both ranks.
    assert r["same_matrix"] == r["same_memory"] == r["same_weights"] == 1
    assert r["ddp_rows"] == 5 and r["memory"] == 100
    assert "GLOBAL_RANK: 1" in out, "the script did not start a second process"
    # The command line's DDP config ran too and wrote a results.json with a row per experience.
    assert r["cli_rows"] == 5


def _check_online(r: dict[str, float], out: str, nb: Any) -> None:
    assert r["mini_experiences"] == 15 and r["tested_rows"] == 5
    naive, replay = r["naive"], r["replay"]
    assert naive < 0.3 and r["naive_forgetting"] > 0.8, f"one pass, no memory: forgets ({naive})"
    assert replay >= naive + 0.3, f"online replay should beat naive online: naive {naive}, replay {replay}"
    assert r["replay_forgetting"] < r["naive_forgetting"] - 0.3
    assert _has_png(nb), "the notebook drew no figure"


def _check_study(r: dict[str, float], out: str, nb: Any) -> None:
    assert r["runs"] == 6, "3 methods x 2 seeds, each saved and read back"
    naive, replay, der = r["naive"], r["replay"], r["der"]
    assert naive < 0.3, f"naive fine-tuning should forget, got mean average accuracy {naive}"
    assert min(replay, der) >= naive + 0.4, f"memories beat naive: naive {naive}, Replay {replay}, DER {der}"
    assert r["repeat_difference"] == 0.0, "the same seed must give the same accuracy matrix"
    assert "| Replay(200) |" in out, "the notebook printed no results table"
    assert _has_png(nb), "the notebook drew no figure"


CHECKS: dict[str, Callable[[dict[str, float], str, Any], None]] = {
    "01_quickstart": _check_quickstart,
    "02_benchmarks_and_scenarios": _check_benchmarks,
    "03_models": _check_models,
    "04_training_and_your_own_method": _check_own_method,
    "05_evaluation": _check_evaluation,
    "06_loggers": _check_loggers,
    "07_checkpoints_and_resume": _check_resume,
    "08_multi_gpu_and_multi_node": _check_ddp,
    "09_online_continual_learning": _check_online,
    "10_a_small_study": _check_study,
}


def test_every_notebook_is_tested_and_listed_in_the_readme() -> None:
    names = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == sorted(CHECKS), f"notebooks without a test or tests without a notebook: {names}"
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in names if f"notebooks/{name}.ipynb" not in readme]
    assert not missing, f"the README's notebooks section does not list {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_notebook(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat, nbclient, _, _ = (
        pytest.importorskip(module, reason=f"running the notebooks needs {module}: pip install -e '.[test]'")
        for module in ("nbformat", "nbclient", "ipykernel", "matplotlib")
    )

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code_cells, "the notebook has no code cells"
    assert all(not cell.outputs and cell.execution_count is None for cell in code_cells), (
        "store the notebook without outputs"
    )

    # One torch thread in the kernel (and in the processes it starts): the notebooks' small models
    # run fastest on one, and several threads per process on a shared CPU cost several times more.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # Run in a temporary directory: Lightning writes logs and checkpoints to the working directory.
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    out = _stdout(nb)
    CHECKS[name](_results(out), out, nb)
