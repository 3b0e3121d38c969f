"""Metrics per task for several runs, as grouped bars with stderr error bars (matplotlib).

The user's guide compares models with pandas and ``DataFrame.plot(kind='bar')``; this is that
chart built in: one panel per metric, tasks along the x axis, one bar per run, and each bar's
standard error drawn as an error bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from evalfleet.common.errors import InvalidArgumentError
from evalfleet.reporting.compare import metric_values
from evalfleet.reporting.runs import Run


def plot_data(runs: Sequence[Run], metrics: Sequence[str] | None = None
              ) -> dict[str, dict[str, list[tuple[float, float | None] | None]]]:
    """``metric label -> task -> [(value, stderr) per run]`` (None where a run lacks it)."""
    per_run = [metric_values(run.results) for run in runs]
    keys: list[tuple[str, str, str]] = []
    for values in per_run:
        keys.extend(k for k in values if k not in keys)
    wanted = set(metrics or ())
    data: dict[str, dict[str, list]] = {}
    for task, metric, filter_name in keys:
        if wanted and metric not in wanted and f"{metric},{filter_name}" not in wanted:
            continue
        label = metric if filter_name == "none" else f"{metric} ({filter_name})"
        data.setdefault(label, {})[task] = [values.get((task, metric, filter_name))
                                            for values in per_run]
    if not data:
        raise InvalidArgumentError(
            f"--metrics: none of {', '.join(sorted(wanted))} is in the runs"
            if wanted else "the runs have no numeric metrics to plot")
    return data


def plot_runs(runs: Sequence[Run], out: str | Path, *, metrics: Sequence[str] | None = None,
              title: str = "Model Performance Comparison") -> Path:
    """Write the comparison chart of ``runs`` to ``out`` (format from its suffix, e.g. .png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = plot_data(runs, metrics)
    panels = list(data.items())
    width_tasks = max(len(tasks) for _, tasks in panels)
    fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                             figsize=(max(6.0, 1.2 + width_tasks * (0.5 + 0.35 * len(runs))),
                                      3.6 * len(panels)))
    bar = 0.7 / len(runs)
    for ax, (label, tasks) in zip(axes[:, 0], panels, strict=True):
        names = list(tasks)
        for r, run in enumerate(runs):
            xs, ys, errs = [], [], []
            for t, name in enumerate(names):
                point = tasks[name][r]
                if point is None:
                    continue
                xs.append(t - 0.35 + bar * (r + 0.5))
                ys.append(point[0])
                errs.append(point[1] or 0.0)
            ax.bar(xs, ys, bar, yerr=errs, capsize=3, label=run.label)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.legend(fontsize="small", loc="best")
    axes[0, 0].set_title(title)
    fig.tight_layout()
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
