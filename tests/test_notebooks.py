"""The tutorial notebooks run top to bottom and show what their text claims."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
RESULTS_LINE = re.compile(r"^RESULTS naive=(?P<naive>[0-9.]+) replay=(?P<replay>[0-9.]+)$", re.MULTILINE)


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


@pytest.mark.slow
def test_quickstart_notebook(tmp_path: Path) -> None:
    nbformat, nbclient, _, _ = (
        pytest.importorskip(name, reason=f"running the notebooks needs {name}: pip install -e '.[test]'")
        for name in ("nbformat", "nbclient", "ipykernel", "matplotlib")
    )

    nb = nbformat.read(NOTEBOOKS / "01_quickstart.ipynb", as_version=4)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code_cells, "the notebook has no code cells"
    assert all(not cell.outputs and cell.execution_count is None for cell in code_cells), (
        "store the notebook without outputs"
    )

    # Run in a temporary directory: Lightning writes checkpoints to the working directory.
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    match = RESULTS_LINE.search(_stdout(nb))
    assert match, "the notebook did not print its 'RESULTS naive=... replay=...' line"
    naive, replay = float(match["naive"]), float(match["replay"])
    assert naive < 0.3, f"naive fine-tuning should forget the old classes, got average accuracy {naive}"
    assert replay >= naive + 0.3, f"Replay should beat naive by 0.3 or more: naive {naive}, replay {replay}"
    assert _has_png(nb), "the notebook drew no figure"
