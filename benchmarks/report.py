"""What a benchmark section measured, and how the report shows it as a table or as JSON.

A section gathers figures, each beside its baseline and its target; the report lays them out:

    section = Section("cold_start", "Cold start: median import time")
    section.figures.append(Figure("usage_push", 93.1, "ms", baseline=101.4, ratio=0.92))
    print(render_table([section]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["Figure", "Section", "render_table"]

Status = Literal["ok", "skipped", "failed"]


@dataclass
class Figure:
    """One measured value, with its baseline of the same run and the target it is held to."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str | None = None
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Section:
    """The figures of one benchmark, or why it was skipped or failed."""

    name: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    status: Status = "ok"
    reason: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "status": self.status,
            "reason": self.reason,
            "seconds": round(self.seconds, 1),
            "figures": [figure.to_dict() for figure in self.figures],
            "notes": self.notes,
        }


def _number(value: float, unit: str) -> str:
    if unit == "records/s":
        return f"{value:,.0f}/s"
    if unit == "bytes":
        return f"{value / 1_000_000:,.2f} MB"
    if unit == "MiB":
        return f"{value:,.1f} MiB"
    return f"{value:,.1f} {unit}"


def _row(figure: Figure) -> tuple[str, ...]:
    baseline = "" if figure.baseline is None else _number(figure.baseline, figure.unit)
    ratio = "" if figure.ratio is None else f"{figure.ratio:.2f}x"
    met = "" if figure.met is None else ("yes" if figure.met else "NO")
    return (
        f"  {figure.name}",
        _number(figure.value, figure.unit),
        baseline,
        ratio,
        figure.target or "",
        met,
    )


def render_table(sections: Sequence[Section]) -> str:
    """One block per section: its figures, baseline, ratio, target and whether it is met."""
    header = ("figure", "value", "baseline", "ratio", "target", "met")
    rows: list[tuple[str, ...]] = []
    for section in sections:
        status = "" if section.status == "ok" else f"  [{section.status}: {section.reason}]"
        rows.append((f"{section.title}{status}",))
        rows.extend(_row(figure) for figure in section.figures)
        rows.extend((f"    note: {note}",) for note in section.notes)

    widths = [
        max(len(row[column]) for row in [header, *rows] if len(row) > 1 and column < len(row))
        for column in range(len(header))
    ]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True))]
    for row in rows:
        if len(row) == 1:
            lines.append(row[0])
            continue
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:4], widths[1:4], strict=True)]
        cells += [cell.ljust(width) for cell, width in zip(row[4:], widths[4:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
