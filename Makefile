# evalfleet: set-up, tests and the demo job. `make install` then `make test`; `make demo`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
MODELS ?= models
DATA_DIR ?= $(abspath ../shared/data)
PROTOS := $(wildcard proto/evalfleet/v1/*.proto)

.PHONY: install proto test test-all lint demo bench clean

install: $(VENV)/.installed $(MODELS)/smollm2-135m/model.safetensors

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[test]'
	touch $@

$(MODELS)/smollm2-135m/model.safetensors: $(VENV)/.installed
	$(PY) -m evalfleet.inference.prepare_model $(MODELS)

proto:
	$(PY) -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto \
		--grpc_python_out=proto $(PROTOS)

lint:
	$(VENV)/bin/ruff check .

test:
	EVALFLEET_DATA_DIR=$(DATA_DIR) $(VENV)/bin/pytest -q

demo:
	EVALFLEET_DATA_DIR=$(DATA_DIR) $(VENV)/bin/evalfleet eval --model hf \
		--model_args pretrained=$(MODELS)/smollm2-135m --tasks arc_easy --limit 200 \
		--num_fewshot 0 --batch_size 8 --output_path out/demo

bench:
	EVALFLEET_DATA_DIR=$(DATA_DIR) $(PY) bench/bench_scoring.py
	EVALFLEET_DATA_DIR=$(DATA_DIR) $(PY) bench/bench_inference.py

clean:
	rm -rf $(VENV) build *.egg-info out
