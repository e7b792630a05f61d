# ltx2-diffusers developer commands. `make test` and `make demo` do their own set-up.
PYTHON ?= python3
VENV ?= .venv
# torch build to install. TORCH_SPEC: the requirement (default: the version the project is tested with).
# TORCH_INDEX_URL: where pip looks for it; CPU-only machines should take PyTorch's CPU wheels instead of the
# multi-GB CUDA build:  make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# (empty: pip's usual index and find-links, e.g. a local wheel).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
TORCH_PIP_FLAGS := $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo style quality clean

install: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the large downloads show pip's progress bars
	$(PY) -m pip install --progress-bar on $(TORCH_PIP_FLAGS) "$(TORCH_SPEC)"
	$(PY) -m pip install --progress-bar on -e ".[test,dev]"
	# Test-only: ltx-core needs torchaudio's pure-torch code; its compiled extension does not load beside
	# every torch build, and torchaudio falls back to pure Python when the extension files are absent.
	rm -f $(VENV)/lib/python*/site-packages/torchaudio/lib/*.so
	touch $@

test: install
	$(PY) -m pytest -n 2 tests

# Tiny random-weight LTX-2.3 checkpoint -> converted folder -> audio-to-video CLI -> demo.mp4, and ltx2-av ->
# demo-text-to-audio-video.mp4 (CPU, minutes).
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
