"""Training curves of a distillation or fine-tuning run, from ``RUN_DIR/metrics.jsonl``.

One JSON object per line; every column is optional, so that older, newer or partial logs plot:

    step            int, the optimiser step (default: the line's position)
    loss            float, the total loss
    heads           {head: KL divergence (or L2 loss) of that head; fine-tuning: cross-entropy}
    agreement       {head: top-1 agreement with the teacher on held-out clips; fine-tuning:
                    {"test": accuracy on the test clips}}, logged now and then
    samples_per_s   float, training throughput

Lines that are not JSON objects (a line cut short by an interruption) are skipped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soundnet_cli.errors import UsageProblem
from soundnet_cli.training.rundir import CONFIG, METRICS, metrics_rows
from soundnet_cli.visualize.figures._base import _pyplot, no_data, save_png

# What the panels show, by the kind of run (told apart by the run folder's config.json).
PANEL_TITLES = {
    "distillation": (
        "loss per head (KL to the teacher)",
        "top-1 agreement with the teacher (held-out)",
    ),
    "fine-tuning": ("loss (cross-entropy)", "accuracy on the test clips"),
}


@dataclass
class Curves:
    kind: str = "distillation"
    steps: list[int] = field(default_factory=list)
    loss: list[tuple[int, float]] = field(default_factory=list)
    heads: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    agreement: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    throughput: list[tuple[int, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def last(series: Sequence[tuple[int, float]]) -> dict[str, float] | None:
            return {"step": series[-1][0], "value": series[-1][1]} if series else None

        return {
            "kind": self.kind,
            "rows": len(self.steps),
            "first_step": self.steps[0] if self.steps else None,
            "last_step": self.steps[-1] if self.steps else None,
            "loss": {
                "first": last(self.loss[:1]),
                "last": last(self.loss),
                "min": min((v for _, v in self.loss), default=None),
            },
            "heads": {name: last(series) for name, series in sorted(self.heads.items())},
            "agreement": {name: last(series) for name, series in sorted(self.agreement.items())},
            "samples_per_s": {
                "last": last(self.throughput),
                "mean": (
                    sum(v for _, v in self.throughput) / len(self.throughput)
                    if self.throughput
                    else None
                ),
            },
        }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _per_head(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, raw in value.items() if (v := _number(raw)) is not None}


def metrics_file(run: Path) -> Path:
    """``run`` itself when it is a file, else ``run/metrics.jsonl``."""
    path = run if run.is_file() else run / METRICS
    if not path.is_file():
        raise UsageProblem(f"{run}: no {METRICS} here (is it a `soundnet distill` run folder?)")
    return path


def run_kind(metrics: Path) -> str:
    """The kind of run that wrote ``metrics``: ``fine-tuning`` when the run folder's config names
    a task (``soundnet finetune``), else ``distillation``."""
    import json

    try:
        config = json.loads((metrics.parent / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "distillation"
    return "fine-tuning" if isinstance(config, dict) and "task" in config else "distillation"


def read_curves(run: Path) -> Curves:
    """The curves of a run folder (or a metrics file); later rows for a step replace earlier
    ones, as after a resumed run."""
    rows: dict[int, dict[str, Any]] = {}
    path = metrics_file(run)
    for position, row in enumerate(metrics_rows(path)):
        step = _number(row.get("step"))
        rows[int(step) if step is not None else position] = row
    curves = Curves(kind=run_kind(path))
    for step in sorted(rows):
        row = rows[step]
        curves.steps.append(step)
        if (loss := _number(row.get("loss"))) is not None:
            curves.loss.append((step, loss))
        for name, value in _per_head(row.get("heads")).items():
            curves.heads.setdefault(name, []).append((step, value))
        for name, value in _per_head(row.get("agreement")).items():
            curves.agreement.setdefault(name, []).append((step, value))
        speed = _number(row.get("samples_per_s", row.get("throughput")))
        if speed is not None:
            curves.throughput.append((step, speed))
    return curves


def _plot(ax: Any, series: Sequence[tuple[int, float]], label: str | None, **style: Any) -> None:
    xs, ys = zip(*series, strict=True)
    ax.plot(xs, ys, label=label, **style)


def curves_png(curves: Curves, path: str | os.PathLike[str], title: str) -> Path:
    """Four panels: loss, loss per head, agreement per head, throughput (all over steps)."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), dpi=100)
    loss_ax, heads_ax, agree_ax, speed_ax = axes.flat
    if curves.loss:
        _plot(loss_ax, curves.loss, None, color="black", linewidth=1.2)
    else:
        no_data(loss_ax)
    loss_ax.set_title("loss")
    for name, series in sorted(curves.heads.items()):
        _plot(heads_ax, series, name, linewidth=1.2)
    if curves.heads:
        heads_ax.legend(fontsize=8)
    else:
        no_data(heads_ax)
    heads_title, agreement_title = PANEL_TITLES[curves.kind]
    heads_ax.set_title(heads_title)
    for name, series in sorted(curves.agreement.items()):
        _plot(agree_ax, series, name, marker="o", markersize=3, linewidth=1.2)
    if curves.agreement:
        agree_ax.set_ylim(-0.03, 1.03)  # a margin, so that 0 and 1 stay visible
        agree_ax.legend(fontsize=8)
    else:
        no_data(agree_ax, "no agreement logged")
    agree_ax.set_title(agreement_title)
    if curves.throughput:
        _plot(speed_ax, curves.throughput, None, color="tab:green", linewidth=1.0)
        speed_ax.set_ylim(bottom=0.0)
    else:
        no_data(speed_ax)
    speed_ax.set_title("throughput (samples/s)")
    from matplotlib.ticker import MaxNLocator

    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, path)
