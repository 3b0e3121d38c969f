"""The stand-ins report usage as the real APIs do and count their own totals: the prompt cache
(a repeated prefix read in whole blocks), and the rate-limited OpenAI stand-in (no model
loaded, as bench/bench_remote.py runs it) counting tokens with the model's tokenizer, its
``/admin/stats`` totals equal to what its answers reported."""

from __future__ import annotations

import json
import sys
import urllib.request

from conftest import SERVERS_DIR, openai_test_server

sys.path.insert(0, str(SERVERS_DIR))
from prompt_cache import PromptCache  # noqa: E402


def test_the_prompt_cache_reads_whole_blocks_of_a_seen_prefix():
    cache = PromptCache(4)
    assert cache.cached(list(range(10))) == 0  # nothing seen yet
    assert cache.cached(list(range(9)) + [99]) == 8  # two blocks seen, never the whole prompt
    assert cache.cached([7, *range(1, 12)]) == 0  # a different first block
    assert cache.cached(list(range(4))) == 0  # a prompt of one block: nothing left to generate
    assert PromptCache(0).cached(list(range(10))) == 0


def _post(port: int, content: str) -> dict:
    body = {"model": "smol", "messages": [{"role": "user", "content": content}]}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["usage"]


def test_the_rate_limited_stand_in_counts_tokens_and_its_own_totals(tiny_model_dir):
    srv = openai_test_server(tiny_model_dir, "--max-concurrent", "2")
    try:
        reported = [_post(srv.port, text) for text in ("Hello there", "What is 2 + 2, exactly?")]
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/admin/stats",
                                    timeout=10) as response:
            stats = json.loads(response.read())["usage"]
    finally:
        srv.stop()
    assert reported[0]["prompt_tokens"] < reported[1]["prompt_tokens"]
    assert all(u["completion_tokens"] > 0 for u in reported)  # "The best answer is A"
    assert stats["responses"] == 2
    for key in ("prompt_tokens", "completion_tokens"):
        assert stats[key] == sum(u[key] for u in reported) == stats["generate"][key]


def test_the_cli_shows_the_usage_and_notes_a_model_missing_from_the_price_table(
        tiny_model_dir, tmp_path, data_dir):
    import subprocess

    prices = tmp_path / "prices.yaml"
    prices.write_text("currency: USD\nmodels:\n  gpt-x: {input: 1, output: 2}\n")
    srv = openai_test_server(tiny_model_dir, "--max-concurrent", "4")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "evalfleet.client.cli", "eval", "--model",
             "local-chat-completions", "--model_args",
             f"model=smol,base_url={srv.base_url}/chat/completions", "--tasks", "gsm8k",
             "--limit", "2", "--apply_chat_template", "--price_table", str(prices),
             "--use_cache", str(tmp_path / "store.db"), "--data_dir", str(data_dir)],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/admin/stats",
                                    timeout=10) as response:
            spent = json.loads(response.read())["usage"]
    finally:
        srv.stop()
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = (proc.stdout + proc.stderr).splitlines()  # progress and notes go to stderr
    progress = [line for line in lines if line.startswith("progress ")]
    assert progress[-1].endswith(f", done, {spent['prompt_tokens']:,} in / "
                                 f"{spent['completion_tokens']:,} out tokens"), progress
    assert ("note: no price for model 'smol' in the price table (prices.yaml) (it has: "
            "gpt-x): usage is reported without a cost") in lines
