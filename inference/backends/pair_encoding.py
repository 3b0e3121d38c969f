"""lm-eval's ``TemplateLM`` split of a (context, continuation) pair into token ids.

Shared by every tokenizer wrapper (the hf backend's, the remote backends'), so that the split
lm-eval's loglikelihood requests depend on is written once.
"""

from __future__ import annotations


class TemplateLMEncoding:
    """``encode_pair``/``encode_request`` as lm-eval 0.4.13's ``TemplateLM`` defines them.

    Subclasses provide ``encode(text, add_special_tokens=...)`` (with the default lm-eval's
    model class uses) and ``prefix_token_id``.
    """

    prefix_token_id: int

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        raise NotImplementedError

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """``TemplateLM._encode_pair``: trailing context whitespace moves to the continuation."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]

    def encode_request(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """``TemplateLM.loglikelihood``'s split, including its empty-context rule (the prefix
        token as context, unless the continuation already starts with it)."""
        if context == "":
            cont = self.encode(continuation, add_special_tokens=False)
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont
        return self.encode_pair(context, continuation)
