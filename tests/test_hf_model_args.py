"""The hf backend's model_args as lm-eval users write them: bitsandbytes quantization
(``load_in_8bit``...), unknown keys refused before the weights load, the keys lm-eval passes to
``from_pretrained`` still taken, and what ``--batch_size auto`` chose said once."""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
import time

import pytest
from conftest import DATA_DIR, REPO_ROOT

from evalfleet.common.args import parse_kv_args
from evalfleet.inference.backends.base import BackendArgumentError
from evalfleet.inference.backends.hf_args import parse_hf_args
from evalfleet.inference.backends.hf_model_kwargs import FROM_PRETRAINED_KWARGS
from evalfleet.inference.backends.hf_quant import BNB_FIELDS, bnb_config, pop_quant_args

ENV = {**os.environ, "EVALFLEET_DATA_DIR": str(DATA_DIR), "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1"}
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


def _lm_eval_bnb_config(model_args: str) -> dict:
    """The BitsAndBytesConfig lm-eval 0.4.13 got built (with transformers 4, the last that took
    these keywords): lm-eval parses the string, makes bnb_4bit_compute_dtype a torch dtype
    (``HFLM._create_model``) and passes every key to from_pretrained, which built the config
    from the keys BitsAndBytesConfig's signature names (transformers 4.x ``from_pretrained``)."""
    from lm_eval.models.utils_hf import get_dtype
    from lm_eval.utils import simple_parse_args_string
    from transformers import BitsAndBytesConfig

    kwargs = simple_parse_args_string(model_args)
    kwargs.pop("pretrained")
    if kwargs.get("load_in_4bit") and (dtype := kwargs.get("bnb_4bit_compute_dtype")):
        kwargs["bnb_4bit_compute_dtype"] = get_dtype(dtype)
    load_in_8bit = kwargs.pop("load_in_8bit", False)
    load_in_4bit = kwargs.pop("load_in_4bit", False)
    params = inspect.signature(BitsAndBytesConfig).parameters
    config_dict = {k: v for k, v in kwargs.items() if k in params}
    config_dict = {**config_dict, "load_in_4bit": load_in_4bit, "load_in_8bit": load_in_8bit}
    config, _ = BitsAndBytesConfig.from_dict(config_dict=config_dict, return_unused_kwargs=True,
                                             **kwargs)
    return config.to_dict()


@pytest.mark.parametrize("model_args", [
    "pretrained=m,load_in_8bit=True",
    "pretrained=m,load_in_8bit=True,device_map=auto,llm_int8_threshold=4.5,"
    "llm_int8_has_fp16_weight=True,llm_int8_enable_fp32_cpu_offload=True",
    "pretrained=m,load_in_4bit=True",
    "pretrained=m,load_in_4bit=True,bnb_4bit_compute_dtype=bfloat16,bnb_4bit_quant_type=nf4,"
    "bnb_4bit_use_double_quant=True",
])
def test_quantization_config_is_the_one_lm_eval_built(model_args):
    args = parse_hf_args(parse_kv_args(model_args, field="--model_args"))
    ours = bnb_config(args.quant).to_dict()
    theirs = _lm_eval_bnb_config(model_args)
    assert sorted(ours) == sorted(theirs)
    for name, value in theirs.items():
        assert ours[name] == value, name
    assert "load_in_8bit" not in args.extra and not set(BNB_FIELDS) & set(args.extra)
    assert ("device_map" in args.extra) == ("device_map" in model_args)


def test_quant_storage_is_a_dtype():
    """transformers 4 set ``bnb_4bit_quant_storage`` from lm-eval's kwargs as the string itself
    (``from_dict`` setattr), which its loading then failed on: here it is the dtype."""
    import torch

    quant = pop_quant_args({"load_in_4bit": True, "bnb_4bit_quant_storage": "bfloat16"})
    assert bnb_config(quant).bnb_4bit_quant_storage is torch.bfloat16


@pytest.mark.parametrize(("args", "field", "needle"), [
    ({"load_in_8bit": True, "load_in_4bit": True}, "load_in_4bit", "both"),
    ({"bnb_4bit_quant_type": "nf4"}, "bnb_4bit_quant_type", "load_in_4bit=True"),
    ({"load_in_4bit": True, "bnb_4bit_quant_type": "nf5"}, "bnb_4bit_quant_type", "nf4"),
    ({"load_in_4bit": True, "bnb_4bit_compute_dtype": "floaty"}, "bnb_4bit_compute_dtype",
     "bfloat16"),
    ({"load_in_8bit": "sure"}, "load_in_8bit", "true or false"),
])
def test_bad_quantization_args_name_the_field(args, field, needle):
    with pytest.raises(BackendArgumentError) as err:
        pop_quant_args(dict(args))
    assert err.value.field == field and needle in err.value.message


def test_from_pretrained_kwargs_are_transformers_own():
    """Each key passed on to from_pretrained is one it takes (a rename there would otherwise
    turn into 'not an argument' here)."""
    from transformers import PreTrainedModel
    from transformers.models.auto import auto_factory

    source = inspect.getsource(PreTrainedModel.from_pretrained) + inspect.getsource(
        auto_factory)
    missing = [k for k in FROM_PRETRAINED_KWARGS if f'"{k}"' not in source
               and f" {k}:" not in source]
    assert missing == []


def _cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "evalfleet.client.cli", *args],
                          capture_output=True, text=True, env=ENV, cwd=REPO_ROOT, timeout=300)
    return done, time.monotonic() - started


def _error_line(done: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), done.stderr
    return lines[-1]


@pytest.mark.skipif(HAS_BNB, reason="bitsandbytes is installed: the refusal is the GPU's")
def test_the_guides_8bit_command_is_refused_at_once_naming_what_is_missing():
    done, seconds = _cli(
        "eval", "--model", "hf", "--model_args",
        "pretrained=models/tiny-smollm2,load_in_8bit=True,device_map=auto",
        "--tasks", "arc_easy", "--limit", "5", "--store", ":memory:", "--no_progress")
    line = _error_line(done)
    assert done.returncode == 2, done.stderr
    assert line.startswith("error: model_args.load_in_8bit: needs the bitsandbytes package")
    assert "pip install 'evalfleet[quant]'" in line and "CUDA GPU" in line
    assert seconds < 5, seconds


def test_a_misspelt_key_is_refused_with_the_close_match_before_weights_load(tiny_model_dir):
    done, seconds = _cli(
        "eval", "--model", "hf", "--model_args", f"pretrained={tiny_model_dir},dtyp=float32",
        "--tasks", "arc_easy", "--limit", "1", "--store", ":memory:", "--no_progress")
    line = _error_line(done)
    assert done.returncode == 2, done.stderr
    assert line.startswith("error: model_args.dtyp: not an argument of the hf backend; did you "
                           "mean dtype?"), line
    assert "from_pretrained's arguments and the model config's attributes" in line
    assert seconds < 60, seconds


def test_unknown_key_never_reaches_from_pretrained(tiny_model_dir, monkeypatch):
    import transformers

    from evalfleet.inference.backends.hf import HFBackend

    def no_load(*args, **kwargs):
        raise AssertionError("the weights started loading")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    with pytest.raises(BackendArgumentError) as err:
        HFBackend.from_model_args({"pretrained": str(tiny_model_dir), "max_lenght": 64})
    assert err.value.field == "max_lenght" and "did you mean max_length?" in err.value.message


def test_keys_lm_eval_passes_to_from_pretrained_are_still_taken(tiny_model_dir):
    """A config attribute (set on the model's config, as from_pretrained sets it) and
    from_pretrained's own arguments load; a quantized load on this CPU machine does not."""
    from evalfleet.inference.backends.hf import HFBackend

    be = HFBackend.from_model_args({
        "pretrained": str(tiny_model_dir), "device": "cpu", "use_cache": False,
        "attn_implementation": "eager", "low_cpu_mem_usage": True, "device_map": "cpu"})
    assert be.model.config.use_cache is False
    assert be.model.config._attn_implementation == "eager"
    assert be.load_notes() == []


def test_quantized_load_without_its_prerequisites_is_refused_before_loading(tiny_model_dir,
                                                                            monkeypatch):
    import torch

    from evalfleet.inference.backends import hf_quant
    from evalfleet.inference.backends.hf import HFBackend

    monkeypatch.setattr(hf_quant, "missing_package", lambda quant: None)  # "installed"
    args = {"pretrained": str(tiny_model_dir), "load_in_4bit": True}
    if not torch.cuda.is_available():
        with pytest.raises(BackendArgumentError, match="needs a CUDA GPU") as err:
            HFBackend.from_model_args(args)
        assert err.value.field == "load_in_4bit"
    with pytest.raises(BackendArgumentError, match="device=cpu") as err:
        hf_quant.check_prerequisites(pop_quant_args(dict(args)), device="cpu", cuda=True)
    assert err.value.field == "device"


@pytest.mark.parametrize(("spec", "have", "needle"), [
    (None, None, "which is not installed: pip install 'evalfleet[quant]'"),
    (object(), "0.43.0", "needs bitsandbytes >= 0.46.1 (transformers' minimum), found 0.43.0"),
    (object(), "0.49.0", None),
])
def test_the_bitsandbytes_package_is_checked_without_importing_it(monkeypatch, spec, have,
                                                                  needle):
    from evalfleet.inference.backends import hf_quant

    monkeypatch.setattr(hf_quant.importlib.util, "find_spec", lambda name: spec)
    monkeypatch.setattr(hf_quant.importlib.metadata, "version", lambda name: have)
    problem = hf_quant.missing_package(pop_quant_args({"load_in_8bit": "true"}))
    if needle is None:
        assert problem is None
    else:
        assert problem is not None and problem.field == "load_in_8bit"
        assert needle in problem.message


def test_batch_size_auto_says_what_it_chose_once(tiny_model_dir):
    """The embedded worker reports its choice when it serves; the command prints it once."""
    done, _ = _cli(
        "eval", "--model", "hf", "--model_args", f"pretrained={tiny_model_dir}",
        "--batch_size", "auto", "--max_batch_size", "16", "--device", "cpu",
        "--tasks", "arc_easy", "--limit", "1", "--store", ":memory:", "--no_progress")
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if "batch size auto" in line]
    assert notes == ["note: batch size auto: chose 4 rows per forward at max_length 2048 on cpu "
                     "(at most 8192 positions per forward: shorter rows get more, up to "
                     "max_batch_size 16)"]
