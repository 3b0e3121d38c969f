"""The "did you mean" of an unknown task name: a few aliases users bring from guides and other
tools, then names close to it (difflib), then names starting with or containing its words."""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection

#: Names users type that lm-eval does not define, and the lm-eval names they likely mean.
ALIASES: dict[str, tuple[str, ...]] = {
    "math": ("hendrycks_math", "minerva_math"),
    "competition_math": ("hendrycks_math", "minerva_math"),
    "math500": ("minerva_math500",),
    "math_500": ("minerva_math500",),
    "humaneval_plus": ("humaneval_plus", "humaneval"),
    "human_eval": ("humaneval",),
    "gsm8k_cot": ("gsm8k_cot", "gsm8k_cot_zeroshot"),
    "mmlu_pro": ("mmlu_pro",),
    "mmlupro": ("mmlu_pro",),
    "gpqa": ("gpqa_main_zeroshot", "gpqa_diamond_zeroshot", "leaderboard_gpqa"),
    "bigbench_hard": ("bbh",),
    "big_bench_hard": ("bbh",),
    "hellaswag_gen": ("hellaswag",),
    "arc": ("arc_easy", "arc_challenge", "ai2_arc"),
    "mbpp_plus": ("mbpp_plus",),
    "truthfulqa": ("truthfulqa", "truthfulqa_mc1", "truthfulqa_mc2"),
}
SHOWN = 5


def suggestions(name: str, known: Collection[str], shown: int = SHOWN) -> list[str]:
    """Up to ``shown`` known names ``name`` likely means, the likeliest first."""
    key = name.strip().lower()
    out = [n for n in ALIASES.get(key, ()) if n in known]
    out += difflib.get_close_matches(name, list(known), n=shown, cutoff=0.6)
    if len(dict.fromkeys(out)) < shown and key:
        words = [w for w in re.split(r"[^a-z0-9]+", key) if len(w) >= 3] or [key]
        pattern = re.compile("|".join(rf"(?:^|_){re.escape(w)}(?:_|$)" for w in words))
        matches = sorted((n for n in known if pattern.search(n.lower())),
                         key=lambda n: (not n.lower().startswith(key), len(n), n))
        out += matches
    return list(dict.fromkeys(out))[:shown]
