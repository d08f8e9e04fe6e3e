# Two commands do all the set-up: `make run PROMPT="..."` and `make test`.
# Both create the virtualenv in .venv on first use and reuse it afterwards.
VENV ?= .venv
PY := $(VENV)/bin/python
PROMPT ?= a yellow triangle on a purple background
ARGS ?=

.PHONY: run test lint bench clean-venv weights-hashes

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/pixgen run "$(PROMPT)" $(ARGS)

# ruff, then the import contracts in .importlinter (layers flow one way, nothing imports a model pack)
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check pixgen tests benchmarks
	$(VENV)/bin/lint-imports --no-cache

# pytest exits 5 when it collected no tests: that is a failure here.
test: $(VENV)/.installed lint
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest ran no tests"; exit 1; fi; exit $$rc

bench: $(VENV)/.installed
	$(PY) benchmarks/default_run.py
	$(PY) benchmarks/step_time.py

clean-venv:
	rm -rf $(VENV)

# After retraining a bundled model: write the weights' sha256 into checkpoints.yaml.
weights-hashes: $(VENV)/.installed
	$(PY) -m pixgen.packs.shapes.register_hashes
