# Two commands do all set-up on a fresh machine (see README):
#   make demo   train on MovieLens-100K, export a FAISS artifact, show recommendations
#   make test   run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; on a GPU machine use e.g. `make demo TORCH=torch` (CUDA build).
TORCH ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	rm -rf outputs/demo   # a fresh run each time (train.py resumes from a run directory's checkpoints)
	$(PY) train.py hydra.run.dir=outputs/demo
	$(PY) export.py checkpoint=outputs/demo output_dir=artifacts/demo
	$(PY) -m twotower.show_recommendations artifacts/demo --users 1 2 3

test: $(VENV)/.installed
	$(PY) -m pytest -q

.PHONY: install demo test
