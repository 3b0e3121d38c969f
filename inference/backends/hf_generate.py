"""Batched generation as lm-eval's ``HFLM.generate_until`` does it, with per-row stopping.

lm-eval stops a batch only when every row has produced a stop string; here each row stops on
its own (the text is truncated at the first stop string afterwards in both cases, so greedy
outputs are the same and finished rows cost nothing extra once all are done).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from evalfleet.inference.backends.reasoning import GeneratedText, cut_at_stops, local_generation


class StopOnStrings(StoppingCriteria):
    """Per row: done once the last few generated tokens decode to text holding a stop string."""

    def __init__(self, stops: Sequence[str], tokenizer, prompt_len: int, batch: int) -> None:
        self.stops = [s for s in stops if s]
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        lookback = [len(tokenizer.encode(s, add_special_tokens=False)) + 2 for s in self.stops]
        self.lookback = max(lookback, default=0)
        self.done = torch.zeros(batch, dtype=torch.bool)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        if self.stops:
            tail = input_ids[:, self.prompt_len:][:, -self.lookback:]
            texts = self.tokenizer.batch_decode(tail)
            for i, text in enumerate(texts):
                if not self.done[i] and any(s in text for s in self.stops):
                    self.done[i] = True
        return self.done.to(input_ids.device)


def generated_answer(tok, toks: list[int], *, until: Sequence[str], max_gen_toks: int,
                     think_end_token: str | int | None, pad_id: int | None,
                     prompt_tokens: int) -> GeneratedText:
    """One row's answer as lm-eval's ``HFLM.generate_until`` makes it (an integer
    ``think_end_token`` cut at its last occurrence in the tokens), with its reasoning, whether
    it ran to ``max_gen_toks`` without EOS or a stop sequence, and its token counts (the row's
    trailing padding and what follows its first EOS are not generated tokens)."""
    eot = tok.eot_token_id
    n = len(toks)
    while n and pad_id is not None and pad_id != eot and toks[n - 1] == pad_id:
        n -= 1
    if eot in toks[:n]:
        n = toks.index(eot) + 1
    made = toks[:n]
    raw = tok.decode(made, skip_special_tokens=False)
    hit = n >= max_gen_toks and eot not in made and not any(s and s in raw for s in until)
    if not isinstance(think_end_token, int):
        return local_generation(
            tok.decode(toks), until=until, think_end_token=think_end_token,
            hit_length_limit=hit, prompt_tokens=prompt_tokens, completion_tokens=n,
            count_tokens=lambda text: len(tok.encode(text, add_special_tokens=False)))
    if think_end_token not in toks:
        return GeneratedText("", reasoning=tok.decode(toks), hit_length_limit=hit,
                             unfinished_thinking=True, prompt_tokens=prompt_tokens,
                             completion_tokens=n, reasoning_tokens=n)
    last = len(toks) - toks[::-1].index(think_end_token)
    answer = cut_at_stops(tok.decode(toks[last:]).lstrip(), until)
    return GeneratedText(answer, reasoning=tok.decode(toks[:last - 1]), hit_length_limit=hit,
                         prompt_tokens=prompt_tokens, completion_tokens=n,
                         reasoning_tokens=min(last, n))


def generate_batch(model, tokenizer, ids: torch.Tensor, mask: torch.Tensor, *,
                   stops: Sequence[str], max_gen_toks: int, do_sample: bool,
                   temperature: float, top_p: float | None, top_k: int | None,
                   autocast_dtype: torch.dtype | None) -> list[list[int]]:
    """Generated token ids per row (prompt and left padding removed)."""
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    kwargs: dict = {"do_sample": do_sample}
    if do_sample:
        kwargs["temperature"] = temperature
        if top_p is not None:
            kwargs["top_p"] = top_p
        if top_k is not None:
            kwargs["top_k"] = top_k
    criteria = StoppingCriteriaList([StopOnStrings(stops, tokenizer, ids.shape[1], ids.shape[0])])
    ctx = (torch.autocast(device_type=device.type, dtype=autocast_dtype)
           if autocast_dtype is not None else contextlib.nullcontext())
    with ctx:
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_length=ids.shape[1] + max_gen_toks,
            stopping_criteria=criteria, pad_token_id=tokenizer.pad_token_id, use_cache=True,
            **kwargs,
        )
    return [row[ids.shape[1]:] for row in out.tolist()]
