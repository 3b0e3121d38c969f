"""A transformers model behind the test servers: prompt logprobs and greedy generation.

One forward at a time (a lock); callers may wait (``--delay``) outside it, so a server under
concurrent requests behaves like a remote one whose latency is not its own compute.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


@dataclass
class Position:
    """One scored position: the token there, its logprob and the top alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob), best first


class Engine:
    """A causal LM in float32 on CPU."""

    def __init__(self, model_dir: str, threads: int = 1) -> None:
        # One thread: a test server shares its cores with the client under test, and torch's
        # spinning worker threads slow everyone down when the cores are oversubscribed.
        torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model.eval()
        self.lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        """The server-side tokenization of a text prompt (special tokens as the tokenizer
        adds them by default, as vLLM's server tokenizes)."""
        return list(self.tokenizer(text).input_ids)

    def piece(self, token_id: int) -> str:
        """A token's text as servers report it (decoded on its own)."""
        return self.tokenizer.decode([token_id])

    @torch.inference_mode()
    def prompt_logprobs(self, ids: list[int], k: int, shifted: bool = False
                        ) -> tuple[list[Position], Position]:
        """Each prompt token after the first scored from the tokens before it, and the greedy
        next token. ``shifted``: score each token from the distribution after it instead (the
        defect of llama-cpp-python's server), for tests of the logprob probe."""
        with self.lock:
            logits = self.model(torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        positions = []
        for j in range(1, len(ids)):
            row = logp[j] if shifted else logp[j - 1]
            positions.append(Position(ids[j], float(row[ids[j]]), _top(row, k)))
        last = logp[len(ids) - 1]
        nxt = int(torch.argmax(last))
        return positions, Position(nxt, float(last[nxt]), _top(last, k))

    @torch.inference_mode()
    def generate(self, ids: list[int], max_tokens: int, stop: list[str]
                 ) -> tuple[str, list[int], str, str | None]:
        """Greedy continuation: (text cut before the first stop, token ids, finish_reason,
        the stop string that ended it)."""
        eos = self.tokenizer.eos_token_id
        out: list[int] = []
        past = None
        inputs = torch.tensor([ids])
        with self.lock:
            for _ in range(max_tokens):
                result = self.model(inputs, past_key_values=past, use_cache=True)
                past = result.past_key_values
                nxt = int(torch.argmax(result.logits[0, -1]))
                if nxt == eos:
                    return self.tokenizer.decode(out), out, "stop", None
                out.append(nxt)
                text = self.tokenizer.decode(out)
                hits = [(text.find(s), s) for s in stop if s and s in text]
                if hits:
                    at, which = min(hits)
                    return text[:at], out, "stop", which
                inputs = torch.tensor([[nxt]])
        return self.tokenizer.decode(out), out, "length", None

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """The model's chat template applied with a generation prompt, as chat servers do."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)


def _top(row: torch.Tensor, k: int) -> list[tuple[int, float]]:
    values, idx = torch.topk(row, max(1, k))
    return [(int(i), float(v)) for i, v in zip(idx, values, strict=True)]
