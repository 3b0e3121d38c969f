"""Task formats as lm-eval 0.5.0.dev1 defines them (``lm_eval/config/formats/``): the same
names, prompt text, generation settings and scorer, and the prompt they compile to.

A format lays a multiple-choice document out as::

    {instruction}{question_prefix}{question}
    {label}. {choice}            (one per choice, joined by choice_delimiter)
    {answer_instruction}{answer_prompt}

(``section_separator`` before the choices and before the answer), the model continuing from
``gen_prefix``. ``instruction`` and ``answer_prompt`` may name ``_num_choices``,
``_choice_labels``, ``_choice_list_and`` and ``_choice_list_or`` as 0.5 does.
"""

from __future__ import annotations

from dataclasses import dataclass

from evalfleet.tasks.templating import render

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class FormatSpec:
    """One format: the fields of 0.5's ``FormatConfig`` this engine uses."""

    name: str
    instruction: str | None
    question_prefix: str | None
    choice_labels: str | None  # "letters", or None: no choices shown, the answer is a text
    answer_prompt: str
    gen_prefix: str | None
    answer_instruction: str | None = None
    choice_delimiter: str = "\n"
    section_separator: str = "\n"
    target_delimiter: str = "\n"
    fewshot_delimiter: str = "\n\n"
    scorer: str = "first_token"  # 0.5's scorer: strip, then exact_match (case, punctuation)

    def labels(self, choices: list[str]) -> list[str]:
        """The answer the model should give for each choice: a letter, or the choice's text."""
        if self.choice_labels == "letters":
            return list(LETTERS[: len(choices)])
        return [str(c) for c in choices]

    def prompt(self, question: str, choices: list[str]) -> str:
        """The document's prompt text, as 0.5's ``to_jinja_config`` template renders it."""
        labels = self.labels(choices)
        names = {
            "_num_choices": len(choices),
            "_choice_labels": labels,
            "_choice_list_and": ", ".join(labels[:-1]) + " and " + str(labels[-1]),
            "_choice_list_or": ", ".join(labels[:-1]) + " or " + str(labels[-1]),
        }
        text = render(self.instruction, names) if self.instruction else ""
        text += (self.question_prefix or "") + question
        if self.choice_labels:
            text += self.section_separator + self.choice_delimiter.join(
                f"{label}. {choice}" for label, choice in zip(labels, choices, strict=True))
        text += self.section_separator + (self.answer_instruction or "")
        return text + render(self.answer_prompt, names)


#: lm-eval 0.5.0.dev1's ``GenerateFormat`` (the Llama-3 instruct ARC prompt).
GENERATE = FormatSpec(
    name="generate",
    instruction="Given the following question and {{ _num_choices }} candidate answers "
                "({{ _choice_list_and }}), choose the best answer.\n",
    question_prefix="Question: ",
    choice_labels="letters",
    answer_prompt='Your response should end with "The best answer is [answer_letter]" where '
                  "the [answer_letter] is one of {{ _choice_list_or }}.",
    gen_prefix="The best answer is",
)

#: lm-eval 0.5.0.dev1's ``COTGenFormat`` text. 0.5 shows no choices with it (it is made for
#: free-answer problems, its answer a choice's text); a multiple-choice question needs its
#: choices, so here they are lettered as in ``generate``, and the answer is a letter or the
#: choice's text.
COT = FormatSpec(
    name="cot",
    instruction="Given the following problem, reason step by step to find the final answer.\n",
    question_prefix="Problem: ",
    choice_labels="letters",
    answer_prompt='Your response should end with "The final answer is [answer]" where [answer] '
                  "is the response to the problem.",
    gen_prefix=None,
)

FORMATS: dict[str, FormatSpec] = {f.name: f for f in (GENERATE, COT)}
