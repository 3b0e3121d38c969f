# evalfleet: set-up, tests and the demo job. `make install` then `make test`; `make demo`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
MODELS ?= models
DATA_DIR ?= $(abspath ../shared/data)
PROTOS := $(wildcard proto/evalfleet/v1/*.proto)
# llama-cpp-python's server is a test reference (a real server whose prompt logprobs are wrong).
# PyPI has only its sdist: pip compiles llama.cpp. CPU only, without its tools, examples, tests
# and multimodal library, on every core; pip caches the built wheel, so later installs are quick.
LLAMA_CPP_PYTHON := llama-cpp-python[server]==0.3.36
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=OFF

.PHONY: install lmeval05 system-deps chromium prometheus sandbox-tools build-tools bytecode kernels proto test test-acceptance test-all lint demo bench clean

install: system-deps chromium prometheus sandbox-tools lmeval05 $(VENV)/.installed $(MODELS)/smollm2-135m/model.safetensors bytecode kernels

# The package's bytecode, as pip writes it for a regular install: where PYTHONDONTWRITEBYTECODE is
# set, every process would otherwise compile each evalfleet module it imports (about 0.3 s of a
# command's start). Only what changed is compiled again; `make test` refreshes it.
PACKAGE_DIRS := common client server inference scoring tasks reporting execution proto/evalfleet
bytecode:
	$(PY) -m compileall -q -j 0 $(PACKAGE_DIRS)

# lm-eval 0.5.0.dev1 (a pre-release, in a venv of its own: it cannot share one with lm-eval
# 0.4.13) is the reference of the task formats' tests (NAME@generate); a no-op when present. Its
# hf model generates the reference's own responses: torch (the CPU wheel in /opt/wheels, never a
# CUDA one), transformers and accelerate, the versions of the main venv (0.5's `hf` extra less
# peft, which it imports only for an adapter); the marker's name makes a venv from before them
# get them.
LMEVAL05_VENV ?= .venv-lmeval05
lmeval05: $(LMEVAL05_VENV)/.installed-hf
$(LMEVAL05_VENV)/.installed-hf:
	$(PYTHON) -m venv $(LMEVAL05_VENV)
	$(LMEVAL05_VENV)/bin/python -m pip install --quiet 'lm_eval==0.5.0.dev1' 'torch==2.13.0' \
		'transformers==5.25.0' 'accelerate==1.16.0'
	touch $@

# Compile the Numba kernels into the user's kernel cache ($EVALFLEET_CACHE_DIR/numba) now, so
# that no evaluation pays for it (a no-op, loading only, when they are already there).
kernels: $(VENV)/.installed
	$(VENV)/bin/evalfleet warmup

# PostgreSQL's server binaries (Debian's postgresql package) for the store tests, which start a
# throw-away server of their own: a no-op when /usr/lib/postgresql/*/bin/initdb exists. No
# system-wide cluster is created or started.
system-deps:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
		echo "warning: no apt-get; install PostgreSQL's server binaries (initdb, pg_ctl) for" \
		     "the PostgreSQL store tests, which are skipped without them"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO mkdir -p /etc/postgresql-common/createcluster.d && \
	echo "create_main_cluster = false" | \
		$$SUDO tee /etc/postgresql-common/createcluster.d/evalfleet.conf >/dev/null && \
	$$SUDO apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends postgresql

# Debian's Chromium renders `evalfleet results report` pages in the tests (driven by
# Playwright's Python package, which never downloads a browser of its own): a no-op when present.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

# Debian's Prometheus server scrapes a coordinator and workers in the metrics test (started there
# directly, on loopback; the system service is never started): a no-op when present.
prometheus:
	@test -x /usr/bin/prometheus || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
			prometheus; }

# bubblewrap isolates generated code (humaneval, mbpp): only the interpreter's folders, read-only,
# no network. Installed
# from Debian when missing and we are root with apt-get; otherwise the sandbox uses what it finds.
sandbox-tools:
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& { apt-get install -y -qq bubblewrap >/dev/null 2>&1 \
		     || { apt-get update -qq >/dev/null && apt-get install -y -qq bubblewrap >/dev/null; }; } \
		|| echo "note: bubblewrap not installed; code tasks are refused unless --allow_weak_sandbox (README)"; }

# A C/C++ toolchain and cmake for llama-cpp-python's build: a no-op when present.
build-tools:
	@command -v cmake >/dev/null 2>&1 && command -v g++ >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install \
			-y -qq --no-install-recommends build-essential cmake; }

$(VENV)/.installed: pyproject.toml | build-tools
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[test]'
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PIP) install --quiet '$(LLAMA_CPP_PYTHON)'
	touch $@

$(MODELS)/smollm2-135m/model.safetensors: $(VENV)/.installed
	$(PY) -m evalfleet.inference.prepare_model $(MODELS)

proto:
	$(PY) -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto \
		--grpc_python_out=proto $(PROTOS)

lint:
	$(VENV)/bin/ruff check .

test: bytecode
	EVALFLEET_DATA_DIR=$(DATA_DIR) $(VENV)/bin/pytest -q --durations=30

# The reference tests at the issues' full sizes (tens of minutes; not part of CI's suite).
test-acceptance:
	EVALFLEET_ACCEPTANCE=1 EVALFLEET_DATA_DIR=$(DATA_DIR) $(VENV)/bin/pytest -q \
		-m "reference or acceptance"

demo:
	EVALFLEET_DATA_DIR=$(DATA_DIR) $(VENV)/bin/evalfleet eval --model hf \
		--model_args pretrained=$(MODELS)/smollm2-135m --tasks arc_easy --limit 200 \
		--num_fewshot 0 --batch_size 8 --output_path out/demo

bench:
	EVALFLEET_DATA_DIR=$(DATA_DIR) $(PY) bench/bench_scoring.py
	EVALFLEET_DATA_DIR=$(DATA_DIR) $(PY) bench/bench_inference.py
	$(PY) bench/bench_store.py
	EVALFLEET_DATA_DIR=$(DATA_DIR) $(PY) bench/bench_fleet.py

clean:
	rm -rf $(VENV) build *.egg-info out
