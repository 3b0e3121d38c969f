"""One self-contained HTML file to browse a run: the results table and, per task, every logged
document with its prompt, choices or target, the model's answers and scores, filterable to the
ones it got wrong. No external assets: styles and the filtering script are inline.

It replaces the Zeno upload of the user's guide (Zeno's hosted service has shut down): the file
can be opened locally or uploaded as a CI artifact.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalfleet.common.request_kind import OutputType
from evalfleet.reporting.runs import Run

#: Per-document metrics that say right (1) or wrong (0), in order of preference.
BINARY_METRICS = ("acc", "exact_match", "acc_norm", "pass@1", "pass_at_1", "em", "acc_bytes")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _arguments(record: dict[str, Any]) -> list[list[Any]]:
    """A record's request arguments as lists (lm-eval writes ``gen_args_i: {arg_j: ...}``)."""
    args = record.get("arguments", [])
    if isinstance(args, dict):
        return [list(v.values()) if isinstance(v, dict) else [v] for v in args.values()]
    return [list(a) if isinstance(a, list | tuple) else [a] for a in args]


def verdict(record: dict[str, Any]) -> tuple[str | None, bool | None]:
    """The metric that says whether the model was right on this document, and whether it was."""
    names = record.get("metrics") or [k for k in BINARY_METRICS if k in record]
    for name in [*(m for m in BINARY_METRICS if m in names), *names]:
        value = record.get(name)
        if isinstance(value, bool):
            return name, value
        number = _number(value)
        if number in (0.0, 1.0) and not isinstance(value, str):
            return name, number == 1.0
    return None, None


def _gold_index(target: str, choices: Sequence[str]) -> int | None:
    if target.isdigit() and int(target) < len(choices):
        return int(target)
    stripped = [c.strip() for c in choices]
    return stripped.index(target.strip()) if target.strip() in stripped else None


def _answer_html(record: dict[str, Any], output_type: str) -> tuple[str, str]:
    """(prompt and choices/target HTML, model answer HTML) for one record."""
    args = _arguments(record)
    prompt = str(args[0][0]) if args and args[0] else ""
    target = str(record.get("target", ""))
    filtered = record.get("filtered_resps", [])
    prompt_html = f'<pre class="prompt">{_e(prompt)}</pre>'
    if output_type == OutputType.MULTIPLE_CHOICE:
        choices = [str(a[1]) if len(a) > 1 else "" for a in args]
        lls = []
        for resp in filtered:
            first = resp[0] if isinstance(resp, list | tuple) and resp else resp
            lls.append(_number(first))
        known = [x for x in lls if x is not None]
        pred = lls.index(max(known)) if known else None
        gold = _gold_index(target, choices)
        items = []
        for i, choice in enumerate(choices):
            marks = []
            if i == gold:
                marks.append('<span class="gold" title="target">target</span>')
            if i == pred:
                marks.append('<span class="pred" title="highest log-likelihood">model</span>')
            ll = lls[i] if i < len(lls) else None
            ll_text = "" if ll is None else f'<span class="ll">{ll:.4f}</span>'
            items.append(f"<li>{_e(choice)} {ll_text} {' '.join(marks)}</li>")
        return (prompt_html + f'<ol class="choices" start="0">{"".join(items)}</ol>',
                f'<div class="answer">choice {_e(pred)}</div>')
    if output_type == OutputType.GENERATE_UNTIL:
        raw = record.get("resps", [])
        raw_text = raw[0][0] if raw and isinstance(raw[0], list) and raw[0] else raw
        answer = filtered[0] if isinstance(filtered, list) and filtered else filtered
        return (prompt_html + f'<div class="target">target: <code>{_e(target)}</code></div>',
                f'<div class="answer"><code>{_e(answer)}</code></div>'
                f'<details><summary>raw</summary><pre>{_e(raw_text)}</pre></details>')
    if output_type == OutputType.LOGLIKELIHOOD:
        cont = str(args[0][1]) if args and len(args[0]) > 1 else target
        first = filtered[0] if isinstance(filtered, list) and filtered else filtered
        return (prompt_html + f'<div class="target">continuation: <code>{_e(cont)}</code></div>',
                f'<div class="answer">{_e(first)}</div>')
    return prompt_html, f'<div class="answer">{_e(filtered)}</div>'


def human(value: Any) -> str:
    """A config value as a person writes it: ``30`` not ``30.0``, ``k=v, ...`` not a dict repr,
    ``none`` not ``None``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):
        return ", ".join(f"{k}={human(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(human(v) for v in value)
    return str(value)


def _limit_text(limit: Any) -> str:
    number = _number(limit)
    if number is None:
        return "none (all documents)"
    if number < 1.0:
        return f"{human(number)} (fraction of each task's documents)"
    return f"{human(number)} documents per task"


def _fewshot_text(run: Run) -> str:
    given = run.results.get("config", {}).get("num_fewshot")
    if given is not None:
        return human(given)
    shots = {human(run.results.get("n-shot", {}).get(t)) for t in run.leaf_tasks()
             if t in run.results.get("n-shot", {})}
    if len(shots) == 1:
        return f"{shots.pop()} (task default)"
    return "task defaults (see n-shot)"


def _metric_cells(record: dict[str, Any]) -> str:
    parts = []
    for name in record.get("metrics", []):
        value = record.get(name)
        number = _number(value) if not isinstance(value, list | tuple) else None
        shown = f"{number:.4g}" if number is not None else json.dumps(value)[:60]
        parts.append(f"<div><b>{_e(name)}</b> {_e(shown)}</div>")
    return "".join(parts)


#: What lm-eval's filter names mean, for the results table.
_FILTER_NOTE = ("how lm-eval post-processed the answers before scoring them (e.g. strict-match "
                "extracts the final number); none means the raw answers, scored as they are")


def _results_table(run: Run) -> str:
    results = run.results
    rows = []
    hib = results.get("higher_is_better", {})
    for task, entry in results.get("results", {}).items():
        for key, value in entry.items():
            metric, sep, filter_name = key.partition(",")
            if not sep or metric.endswith("_stderr"):
                continue
            stderr = entry.get(f"{metric}_stderr,{filter_name}", "")
            number = _number(value)
            se = _number(stderr)
            arrow = {True: "↑", False: "↓"}.get(hib.get(task, {}).get(metric), "")
            rows.append(
                f"<tr><td>{_e(entry.get('alias', task))}</td>"
                f"<td>{_e(results.get('versions', {}).get(task, ''))}</td>"
                f"<td>{_e(filter_name)}</td>"
                f"<td>{_e(human(results.get('n-shot', {}).get(task, '')))}"
                f"</td><td>{_e(metric)}</td><td>{arrow}</td>"
                f"<td class=num>{_e(f'{number:.4f}' if number is not None else value)}</td>"
                f"<td class=num>{_e(f'± {se:.4f}' if se is not None else stderr)}</td></tr>")
    return ('<table id="results-table"><thead><tr><th>Task</th><th>Version</th>'
            f'<th title="{_FILTER_NOTE}">Filter</th>'
            '<th>n-shot</th><th>Metric</th><th></th><th>Value</th><th>Stderr</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>'
            f'<p class="meta" id="filter-note">Filter: {_FILTER_NOTE}.</p>')



def _filter_mark(record: dict[str, Any], filters: Sequence[str]) -> str:
    """The record's filter under its doc id, only where the task has several (lm-eval's
    ``none`` filter alone is the raw answer and needs no mark)."""
    if len(filters) < 2:
        return ""
    name = record.get("filter", "none")
    return (f'<br><small class="filter" title="the filter (answer post-processing) this row '
            f'scores">filter {_e(name)}</small>')


def _task_section(run: Run, task: str, records: list[dict[str, Any]]) -> str:
    config = run.results.get("configs", {}).get(task, {})
    output_type = str(config.get("output_type", ""))
    rows = []
    counts = {"right": 0, "wrong": 0}
    filters = list(dict.fromkeys(str(r.get("filter", "none")) for r in records))
    for record in records:
        metric, right = verdict(record)
        status = "na" if right is None else ("right" if right else "wrong")
        if right is not None:
            counts[status] += 1
        question, answer = _answer_html(record, output_type)
        badge = "" if right is None else (
            f'<span class="badge {status}">{"✓" if right else "✗"} {_e(metric)}</span>')
        rows.append(
            f'<tr class="doc" data-task="{_e(task)}" data-status="{status}" '
            f'data-filter="{_e(record.get("filter", "none"))}">'
            f'<td class="docid">{_e(record.get("doc_id"))}{_filter_mark(record, filters)}</td>'
            f"<td>{question}</td><td>{answer}{badge}</td>"
            f"<td class=metrics>{_metric_cells(record)}</td></tr>")
    summary = (f'{len(records)} documents, {counts["wrong"]} wrong' if counts["wrong"] or
               counts["right"] else f"{len(records)} documents")
    if len(filters) > 1:
        summary += f" (one row per document and filter: {', '.join(filters)})"
    elif filters and filters[0] != "none":
        summary += f", answers through filter {filters[0]}"
    return (f'<section class="task" data-task="{_e(task)}"><h2 id="task-{_e(task)}">{_e(task)}'
            f' <small>{_e(output_type)} · {_e(summary)}</small></h2>'
            '<table class="docs"><thead><tr><th>doc</th><th>prompt and choices / target</th>'
            '<th>model</th><th>scores</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></section>')


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em} h2 small{color:#666;font-weight:400}
table{border-collapse:collapse;width:100%;margin:.5em 0}
th,td{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left;font-size:.9em}
th{background:#f3f3f3;position:sticky;top:0} td.num{text-align:right;font-family:monospace}
pre{white-space:pre-wrap;margin:0;max-height:16em;overflow:auto;font-size:.85em}
.prompt{background:#fafafa;padding:4px;border-left:3px solid #ccc}
ol.choices{margin:.3em 0 0 0;padding-left:2em} .ll{color:#666;font-family:monospace;font-size:.85em}
.gold{background:#d4f4d4;border-radius:3px;padding:0 4px;font-size:.8em}
.pred{background:#dde6ff;border-radius:3px;padding:0 4px;font-size:.8em}
.badge{display:inline-block;margin-top:.3em;border-radius:3px;padding:0 5px;font-size:.85em}
.badge.right{background:#d4f4d4} .badge.wrong{background:#ffd6d6}
tr.doc[data-status=wrong] td.docid{border-left:4px solid #e55}
#controls{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ddd;
  z-index:2}
#controls label{margin-right:1.2em} .meta{color:#555;font-size:.9em} .hidden{display:none}
"""

_SCRIPT = """
(function(){
  const show=document.getElementById('show'), task=document.getElementById('task'),
        search=document.getElementById('search'), count=document.getElementById('count');
  function apply(){
    const rows=document.querySelectorAll('tr.doc'); let shown=0;
    const q=search.value.toLowerCase();
    rows.forEach(function(r){
      const ok=(show.value==='all'||r.dataset.status===show.value)
        &&(task.value===''||r.dataset.task===task.value)
        &&(q===''||r.textContent.toLowerCase().indexOf(q)>=0);
      r.classList.toggle('hidden',!ok); if(ok){shown++;}
    });
    document.querySelectorAll('section.task').forEach(function(s){
      s.classList.toggle('hidden',task.value!==''&&s.dataset.task!==task.value);
    });
    count.textContent=shown+' of '+rows.length+' documents shown';
  }
  [show,task].forEach(function(e){e.addEventListener('change',apply);});
  search.addEventListener('input',apply); apply();
})();
"""


def render_report(run: Run, *, title: str | None = None) -> str:
    """The HTML text of the report for ``run``."""
    results = run.results
    config = results.get("config", {})
    heading = title or f"evalfleet report: {run.label}"
    tasks = [t for t in results.get("results", {}) if t in run.samples]
    options = "".join(f'<option value="{_e(t)}">{_e(t)}</option>' for t in tasks)
    sections = "".join(_task_section(run, t, run.samples[t]) for t in tasks)
    if not tasks:
        sections = ("<p>No per-document samples next to this results file: run "
                    "<code>evalfleet eval</code> with <code>--log_samples</code> to see them.</p>")
    meta = (f"model <b>{_e(human(config.get('model', '')))}</b> "
            f"({_e(human(config.get('model_args', '')))}),"
            f" limit {_e(_limit_text(config.get('limit')))},"
            f" num_fewshot {_e(_fewshot_text(run))}, file {_e(run.path.name)}")
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(heading)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_e(heading)}</h1><p class=meta>{meta}</p>"
        f"<h2>Results</h2>{_results_table(run)}"
        '<div id="controls"><label>show <select id="show"><option value="all">all documents'
        '</option><option value="wrong">wrong only</option><option value="right">right only'
        '</option></select></label>'
        f'<label>task <select id="task"><option value="">all tasks</option>{options}</select>'
        '</label><label>search <input id="search" type="search" placeholder="text in the row">'
        '</label><span id="count"></span></div>'
        f"{sections}<script>{_SCRIPT}</script></body></html>\n")


def write_report(run: Run, out: str | Path, *, title: str | None = None) -> Path:
    """Write the report of ``run`` to ``out``."""
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_report(run, title=title), encoding="utf-8")
    return target
