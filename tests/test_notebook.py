"""examples/hpsearch_api.ipynb, executed top to bottom in a real Jupyter kernel on the CPU: any
cell error fails the test, and the cells show what the notebook says they show."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "hpsearch_api.ipynb"


def _text(cell: nbformat.NotebookNode) -> str:
    """Everything a cell showed: streams, plain text, HTML, Markdown, plotly's JSON."""
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        for kind, data in output.get("data", {}).items():
            parts.append(data if isinstance(data, str) else json.dumps(data)[:2000] + kind)
    return "\n".join(parts)


def test_committed_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count")
               for c in notebook.cells if c.cell_type == "code")


def test_the_example_notebook_runs_in_a_kernel(tmp_path: Path) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Raises CellExecutionError, with the cell and its traceback, on any cell's error.
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in notebook.cells if c.cell_type == "code"]
    shown = {c.source.splitlines()[0]: _text(c) for c in code}
    assert "config.batch_mode" in shown['frame = hpsearch.trials_dataframe(iris)']
    assert "median val_error" in shown["hpsearch.trend_table(iris)"]
    assert "application/vnd.plotly.v1+json" in shown["figures = hpsearch.figures(iris)"]
    assert "best: trial #" in shown['digits = hpsearch.run_study("quickstart", trials=4, epochs=3, storage=STORAGE)']
    final = shown['hpsearch.export_best(iris, "best.yaml", top=2)']
    assert "95% t-CI" in final and "McNemar" in final
    assert "error_ci_low" in shown["final.configs()"]
    assert (tmp_path / "notebook.db").exists() and (tmp_path / "best.yaml").exists()
