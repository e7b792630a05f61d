# ltx2-diffusers developer commands. `make test` and `make demo` do their own set-up.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo style quality clean

install: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,dev]"
	# Test-only: ltx-core needs torchaudio's pure-torch code; its compiled extension does not load beside
	# every torch build, and torchaudio falls back to pure Python when the extension files are absent.
	rm -f $(VENV)/lib/python*/site-packages/torchaudio/lib/*.so
	touch $@

test: install
	$(PY) -m pytest -n 2 tests

# Tiny random-weight LTX-2.3 checkpoint -> converted folder -> audio-to-video CLI -> demo.mp4 (CPU, minutes).
demo: install
	$(PY) scripts/demo.py --output demo.mp4

style: install
	$(VENV)/bin/ruff format src tests conversion_scripts benchmarks scripts
	$(VENV)/bin/ruff check --fix src tests conversion_scripts benchmarks scripts

quality: install
	$(VENV)/bin/ruff format --check src tests conversion_scripts benchmarks scripts
	$(VENV)/bin/ruff check src tests conversion_scripts benchmarks scripts

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
