"""The peer benchmark's results as a markdown table, written into a document between two marker lines.

``render(results)`` turns the results JSON of ``benchmarks/vs_fuxictr.py`` into markdown: one line per dataset
(rows of each split, the Bayes AUC where the data is planted), then one table data x system x model -> test AUC,
logloss, epochs, seconds. ``write_section(doc, text)`` replaces what lies between ``BEGIN`` and ``END`` in
``doc`` (appending both markers when the document has none), so the prose around the table is kept.

Example:
    >>> print(render({"machine": "m", "date": "d", "datasets": {}, "results": []}).splitlines()[0])
    Measured on m, d.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["BEGIN", "END", "SYSTEM_ORDER", "render", "write_section"]

BEGIN = "<!-- bench-peer:begin (written by benchmarks/vs_fuxictr.py) -->"
END = "<!-- bench-peer:end -->"
SYSTEM_ORDER = ("sklearn", "fuxictr", "ctr")


def _number(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _dataset_line(name: str, info: dict[str, Any]) -> str:
    rows = info["rows"]
    line = f"- **{name}**: {rows['train']:,} / {rows['valid']:,} / {rows['test']:,} rows (train / valid / test)"
    if info.get("bayes_auc") is not None:
        line += f"; Bayes AUC {info['bayes_auc']:.4f} (the truth file's, all rows)"
    return line + "."


def _sort_key(row: dict[str, Any], datasets: list[str], models: Sequence[str]) -> tuple[int, int, int, str]:
    data = datasets.index(row["data"]) if row["data"] in datasets else len(datasets)
    base = row["model"].split("@")[0]  # FuxiCTR's variants (``deepfm@512``) follow their model
    model = models.index(base) if base in models else len(models)
    return data, SYSTEM_ORDER.index(row["system"]), model, row["model"]


def render(results: dict[str, Any], models: Sequence[str] = ()) -> str:
    """Markdown for ``results`` (the JSON ``benchmarks/vs_fuxictr.py`` writes), rows in ``models``' order."""
    datasets = list(results["datasets"])
    lines = [f"Measured on {results['machine']}, {results['date']}.", ""]
    lines += [_dataset_line(name, info) for name, info in results["datasets"].items()]
    lines += [
        "",
        "| data | system | model | test AUC | test logloss | epochs | seconds |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    failures: list[str] = []
    for row in sorted(results["results"], key=lambda r: _sort_key(r, datasets, models)):
        epochs = "—" if row.get("epochs") is None else str(row["epochs"])
        model = row["model"]
        if row.get("error"):
            failures.append(f"Note {len(failures) + 1}: {row['data']}, {row['system']} {model}: {row['error']}")
            model += f" (failed, note {len(failures)})"
        lines.append(
            f"| {row['data']} | {row['system']} | {model} | {_number(row['test_auc'], 4)} "
            f"| {_number(row['test_logloss'], 4)} | {epochs} | {_number(row['seconds'], 1)} |"
        )
    return "\n".join(lines + (["", *failures] if failures else []))


def write_section(doc: Path, text: str) -> None:
    """Put ``text`` between the markers in ``doc`` (created, or the markers appended, when missing)."""
    body = doc.read_text() if doc.exists() else ""
    section = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in body and END in body:
        head, rest = body.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        body = head + section + tail
    else:
        body = (body.rstrip("\n") + "\n\n" if body else "") + section + "\n"
    doc.write_text(body)
