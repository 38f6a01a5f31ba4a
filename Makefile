# Two commands do all the set-up on a fresh machine: `make fit` and `make test`.
# Both create .venv once (reused afterwards) and install the project from pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install install-dev fit test test-slow lint imports docs format bench bench-gpu clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed            ## the package and its runtime dependencies

install-dev: $(VENV)/.installed-dev    ## plus pytest and ruff

fit: install                           ## train the default experiment (make fit ARGS="trainer.max_epochs=3")
	$(BIN)/mmtrain fit $(ARGS)

test: install-dev                      ## the test suite without the slow tests (< 15 min on 2 cores)
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

test-slow: install-dev                 ## only the slow tests
	$(BIN)/python -m pytest -m slow $(ARGS)

lint: imports                          ## ruff lint and format check, and the import boundaries
	$(BIN)/ruff check mmtrain tests scripts
	$(BIN)/ruff format --check mmtrain tests scripts

imports: install-dev                   ## the import boundaries of pyproject.toml's [tool.importlinter]
	$(BIN)/lint-imports

docs: install-dev                      ## the documentation site (mkdocs.yml, docs/) into build/site, warnings are errors
	$(BIN)/mkdocs build --strict --site-dir build/site

bench: install-dev                     ## mmtrain vs plain PyTorch: overhead (also with an HF tower), start-up, data, feature cache; the LLM head: KV cache, checkpointing, LoRA (ARGS="--quick"); captioning: scripts/bench_caption.py
	$(BIN)/python scripts/bench.py $(ARGS)
	$(BIN)/python scripts/bench_llm.py $(filter --quick,$(ARGS))

bench-gpu: install                     ## GPU: coco_caption ViT-B/16, then coco_caption_llm's shape (1.1B Llama, LoRA), eager vs compile vs FSDP on one device: samples/s, tokens/s, MFU, memory, data wait (< 5 min each; ARGS="--smoke" on a CPU)
	$(BIN)/python scripts/bench_gpu.py $(ARGS)
	$(BIN)/python scripts/bench_gpu.py --model llm --out outputs/bench/gpu_llm.json $(ARGS)

format: install-dev
	$(BIN)/ruff check --fix mmtrain tests scripts
	$(BIN)/ruff format mmtrain tests scripts

clean:
	rm -rf $(VENV) outputs build dist .pytest_cache .ruff_cache
