"""Prices of models' tokens (``evalfleet eval --price_table FILE``), and what usage costs.

The file is YAML or JSON, prices per million tokens in one currency::

    currency: USD
    models:
      gpt-4o-mini:
        input: 0.15          # prompt tokens not read from the prompt cache
        cached_input: 0.075  # prompt tokens read from it (optional: priced as input)
        output: 0.60         # completion tokens, reasoning included
        batch_discount: 0.5  # taken off every price with model_args batch_api=true (optional)

The client reads it into ``EvaluationSpec.price_table``; the coordinator checks that message
again (:func:`check_price_table`) for clients that build it themselves. A job's model is looked
up by its name (:func:`job_model_name`); a model missing from the table gets no cost, never a
guess.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from evalfleet.common.errors import InvalidArgumentError
from evalfleet.v1 import coordinator_pb2 as cpb

#: A model row's keys in the file -> the ModelPrice field each fills.
_FILE_KEYS = {"input": "input_per_million", "cached_input": "cached_input_per_million",
              "output": "output_per_million", "batch_discount": "batch_discount"}
_REQUIRED = ("input", "output")
#: Model-argument values that turn a provider batch API on.
_TRUE = ("true", "1", "yes")


def load_price_table(path: str) -> cpb.PriceTable:
    """The price table in the file at ``path``; InvalidArgumentError naming the file and the
    key for anything wrong."""
    where = f"--price_table {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgumentError(f"{where}: cannot be read ({exc.strerror or exc}); give "
                                   "a YAML or JSON file of per-model prices") from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())[:200]
        kind = "JSON" if path.endswith(".json") else "YAML"
        raise InvalidArgumentError(f"{where}: not valid {kind} ({detail})") from None
    if not isinstance(data, Mapping):
        raise InvalidArgumentError(f"{where}: expected a mapping with 'currency' and 'models', "
                                   f"got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - {"currency", "models"})
    if unknown:
        raise InvalidArgumentError(f"{where}: unknown key '{unknown[0]}' (keys: currency, "
                                   "models)")
    currency, models = data.get("currency"), data.get("models")
    if not isinstance(currency, str) or not currency.strip():
        raise InvalidArgumentError(f"{where}: 'currency' must name the prices' currency, "
                                   "e.g. currency: USD")
    if not isinstance(models, Mapping) or not models:
        raise InvalidArgumentError(f"{where}: 'models' must map model names to prices, e.g. "
                                   "models: {gpt-4o-mini: {input: 0.15, output: 0.6}}")
    table = cpb.PriceTable(currency=currency.strip(), source=Path(path).name)
    for name, row in models.items():
        table.models.append(_model_price(where, str(name), row))
    return table


def _model_price(where: str, name: str, row: Any) -> cpb.ModelPrice:
    key = f"models.{name}"
    if not isinstance(row, Mapping):
        raise InvalidArgumentError(f"{where}: '{key}' must map input, output (and optionally "
                                   "cached_input, batch_discount) to prices per million tokens")
    for field in map(str, row):
        if field not in _FILE_KEYS:
            raise InvalidArgumentError(f"{where}: unknown key '{key}.{field}' (keys: "
                                       f"{', '.join(_FILE_KEYS)})")
    for field in _REQUIRED:
        if field not in row:
            raise InvalidArgumentError(f"{where}: '{key}.{field}' is missing (the price of a "
                                       f"million {field} tokens)")
    price = cpb.ModelPrice(model=name)
    for field, value in row.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgumentError(f"{where}: '{key}.{field}' must be a number, got "
                                       f"{value!r}")
        setattr(price, _FILE_KEYS[field], float(value))
    problem = _row_problem(price)
    if problem:
        field, what = problem
        file_key = next(k for k, v in _FILE_KEYS.items() if v == field)
        raise InvalidArgumentError(f"{where}: '{key}.{file_key}' {what}")
    return price


def _row_problem(price: cpb.ModelPrice) -> tuple[str, str] | None:
    """(field, what is wrong) for a price row no cost can be computed from; None when fine."""
    for field in ("input_per_million", "cached_input_per_million", "output_per_million"):
        value = getattr(price, field)
        if not math.isfinite(value) or value < 0:
            return field, f"must be a finite price >= 0, got {value!r}"
    if not 0 <= price.batch_discount < 1 or not math.isfinite(price.batch_discount):
        return "batch_discount", (f"must be a fraction in [0, 1) (0.5: half price), got "
                                  f"{price.batch_discount!r}")
    return None


def check_price_table(table: cpb.PriceTable, field: str = "price_table") -> None:
    """INVALID_ARGUMENT naming the table's ``field`` for a table no cost can be computed from
    (what a client sends that did not read it with :func:`load_price_table`)."""
    if not table.models:
        return
    if not table.currency.strip():
        raise InvalidArgumentError(f"{field}.currency: empty; name the prices' currency, "
                                   "e.g. USD")
    seen: set[str] = set()
    for index, price in enumerate(table.models):
        where = f"{field}.models[{index}]"
        if not price.model:
            raise InvalidArgumentError(f"{where}.model: empty; name the model the prices are for")
        if price.model in seen:
            raise InvalidArgumentError(f"{where}.model: '{price.model}' has two rows; keep one")
        seen.add(price.model)
        problem = _row_problem(price)
        if problem:
            raise InvalidArgumentError(f"{where}.{problem[0]}: {problem[1]}")


def find_price(table: cpb.PriceTable, model: str) -> cpb.ModelPrice | None:
    """The row of ``model`` (None when the table has none)."""
    return next((p for p in table.models if p.model == model), None)


def job_model_name(model_args: Mapping[str, Any], worker_model_name: str) -> str:
    """The name a price table knows a job's model by: model_args ``model`` (API backends),
    else ``pretrained``, else the worker's model name."""
    return str(model_args.get("model") or model_args.get("pretrained") or worker_model_name)


def uses_batch_api(model_args: Mapping[str, Any]) -> bool:
    """Whether model_args send the job through the provider's batch API (``batch_api``)."""
    return str(model_args.get("batch_api", "")).strip().lower() in _TRUE


def cost_of(prompt_tokens: int, cached_tokens: int, completion_tokens: int,
            price: cpb.ModelPrice, batch: bool) -> float:
    """What the tokens cost at ``price`` (the batch rate when ``batch``)."""
    cached_price = price.cached_input_per_million if price.HasField(
        "cached_input_per_million") else price.input_per_million
    cached = min(cached_tokens, prompt_tokens)
    total = ((prompt_tokens - cached) * price.input_per_million + cached * cached_price
             + completion_tokens * price.output_per_million) / 1e6
    return total * (1 - price.batch_discount) if batch else total
