"""A gate's verdict document (:func:`.gate.evaluate_gate`) as terminal text and as markdown for
a pull request comment. Both read only the document, so a verdict the coordinator computed
renders exactly as one computed here."""

from __future__ import annotations

from typing import Any

_MARKS = {"GO": "✅", "NO-GO": "❌", "INCONCLUSIVE": "⚠️"}
_ORDER = {"FAIL": 0, "INCONCLUSIVE": 1, "PASS": 2, "SKIPPED": 3}


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 1e-4 else f"{value:.4f}"
    return str(value)


def _ordered(verdict: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(verdict["checks"], key=lambda c: (c["tier"] != "blocking",
                                                    _ORDER.get(c["status"], 9)))


def _policy_line(verdict: dict[str, Any]) -> str:
    policy = verdict["policy"]
    alpha = f"alpha {policy['alpha']:g}"
    if policy.get("alpha_per_test", policy["alpha"]) != policy["alpha"]:
        alpha += (f" ({policy['alpha_per_test']:.3g} per test: Bonferroni over "
                  f"{policy['regression_tests']})")
    return (f"policy {policy['source']} (sha256 {policy['sha256'][:12]}), {alpha}, power "
            f"{policy['power']:g}")


def render_text(verdict: dict[str, Any]) -> str:
    """A few lines: the verdict, the runs, then one line per check (failures first)."""
    lines = [f"gate: {verdict['verdict']}  ({_policy_line(verdict)})",
             f"A (baseline): {verdict['baseline']}", f"B (candidate): {verdict['candidate']}"]
    for check in _ordered(verdict):
        tier = "" if check["tier"] == "blocking" else " (advisory)"
        lines.append(f"{check['status']:<12} {check['kind']:<10} {check['message']}{tier}")
    return "\n".join(lines)


def render_markdown(verdict: dict[str, Any]) -> str:
    """A pull-request comment: heading with the verdict, the reasons, a table of the checks."""
    from evalfleet.reporting.compare import _markdown

    name = verdict["verdict"]
    out = [f"## Release gate: {_MARKS.get(name, '')} {name}".replace("  ", " "), "",
           f"Baseline `{verdict['baseline']}`, candidate `{verdict['candidate']}`; "
           f"{_policy_line(verdict)}.", ""]
    out += [f"- {reason}" for reason in verdict["reasons"]]
    headers = ["Status", "Check", "Task", "Metric", "Baseline", "Candidate", "B-A", "p",
               "Test", "Power", "Docs needed", "Detail"]
    rows = []
    for check in _ordered(verdict):
        metric = "" if check["metric"] is None else f"{check['metric']},{check['filter']}"
        status = check["status"] + ("" if check["tier"] == "blocking" else " (advisory)")
        detail = check["message"].split(": ", 1)[-1].replace("|", "\\|")
        rows.append([status, check["kind"], check["task"], metric, _fmt(check["baseline"]),
                     _fmt(check["candidate"]),
                     "" if check["diff"] is None else f"{check['diff']:+.4f}",
                     _fmt(check["p_value"]), check["test"] or "", _fmt(check["power"]),
                     _fmt(check["documents_needed"]), detail])
    out += ["", _markdown(headers, rows).rstrip(), ""]
    return "\n".join(out)
