"""Metrics per task for several runs, as grouped bars with stderr error bars (matplotlib).

The user's guide compares models with pandas and ``DataFrame.plot(kind='bar')``; this is that
chart built in: one panel per metric, tasks along the x axis, one bar per run, each bar
labelled with its value and drawn with ± 1 standard error as lm-eval reports it. The legend
gives each run's documents, limit and shots; a task a run lacks is a hatched slot marked
"missing", never an absent bar. SVG output keeps its text as text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from evalfleet.common.errors import InvalidArgumentError
from evalfleet.reporting.compare import metric_values
from evalfleet.reporting.report import human
from evalfleet.reporting.runs import Run

#: The figure's caption: what the bars and their error bars are.
CAPTION = ("Bars: each run's value (labelled). Error bars: ± 1 standard error as lm-eval "
           "reports it (<metric>_stderr); none where a run reported N/A. Hatched: task missing "
           "from that run.")


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


def _span(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def run_caption(run: Run) -> str:
    """A run's documents, limit and shots, as its legend entry says them."""
    results = run.results
    tasks = run.leaf_tasks()
    counts = [int(v["effective"]) for t, v in results.get("n-samples", {}).items()
              if t in tasks and isinstance(v, dict) and "effective" in v]
    shots = [int(v) for t, v in results.get("n-shot", {}).items()
             if t in tasks and isinstance(v, int | float) and not isinstance(v, bool)]
    parts = [f"n={_span(counts)}" if counts else "n=?"]
    limit = results.get("config", {}).get("limit")
    parts.append(f"limit {human(limit)}" if limit is not None else "no limit")
    parts.append(f"{_span(shots)}-shot" if shots else "shots ?")
    return ", ".join(parts)


def build_figure(runs: Sequence[Run], *, metrics: Sequence[str] | None = None,
                 title: str = "Model Performance Comparison"):  # -> matplotlib Figure
    """The comparison chart of ``runs`` (one panel per metric) as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    data = plot_data(runs, metrics)
    panels = list(data.items())
    width_tasks = max(len(tasks) for _, tasks in panels)
    colors = [f"C{r % 10}" for r in range(len(runs))]
    handles = [Patch(color=colors[r], label=f"{run.label} ({run_caption(run)})")
               for r, run in enumerate(runs)]
    if any(None in values for _, tasks in panels for values in tasks.values()):
        handles.append(Patch(fill=False, hatch="//", edgecolor="0.6",
                             label="missing from that run"))
    below = 0.25 * len(handles) + 0.5  # inches for the legend and the caption
    height = 3.6 * len(panels) + below
    fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                             figsize=(max(7.0, 1.2 + width_tasks * (0.6 + 0.45 * len(runs))),
                                      height))
    bar = 0.7 / len(runs)
    for ax, (label, tasks) in zip(axes[:, 0], panels, strict=True):
        names = list(tasks)
        points = [p for values in tasks.values() for p in values if p is not None]
        top = max([p[0] + (p[1] or 0.0) for p in points] + [0.0]) or 1.0
        for r in range(len(runs)):
            for t, name in enumerate(names):
                x = t - 0.35 + bar * (r + 0.5)
                point = tasks[name][r]
                if point is None:
                    ax.bar([x], [top], bar, fill=False, hatch="//", edgecolor="0.6",
                           linewidth=0.8)
                    ax.text(x, top / 2, "missing", rotation=90, ha="center", va="center",
                            fontsize=7, color="0.35")
                    continue
                value, stderr = point
                ax.bar([x], [value], bar, yerr=None if stderr is None else [stderr],
                       capsize=3, color=colors[r], ecolor="0.2")
                ax.annotate(f"{value:.3f}", (x, value + (stderr or 0.0)), xytext=(0, 2),
                            textcoords="offset points", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right")
        ax.set_ylabel(label)
        ax.set_ylim(0, top * 1.15)
        ax.grid(axis="y", alpha=0.3)
        ax.set_xlim(-0.6, len(names) - 0.4)
    axes[0, 0].set_title(title)
    fig.tight_layout(rect=(0, below / height, 1, 1))
    fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.01, 0.35 / height),
               fontsize="small", frameon=False)
    fig.text(0.01, 0.005, CAPTION, fontsize=7, ha="left", va="bottom", wrap=True)
    return fig


def plot_runs(runs: Sequence[Run], out: str | Path, *, metrics: Sequence[str] | None = None,
              title: str = "Model Performance Comparison") -> Path:
    """Write the comparison chart of ``runs`` to ``out`` (format from its suffix, e.g. .png)."""
    import matplotlib
    import matplotlib.pyplot as plt

    fig = build_figure(runs, metrics=metrics, title=title)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # SVG text stays searchable text
        fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
