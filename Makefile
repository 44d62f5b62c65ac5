# Two commands do all setup: `make demo` and `make test` (each creates .venv on first use).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
# Every install goes through constraints.txt so no dependency moves torch/torchvision.
PIP := $(PY) -m pip install --disable-pip-version-check -c constraints.txt
PYTEST_ARGS ?=

.PHONY: demo test bench gpu-check clean install screenshots

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -q --upgrade pip
	$(PIP) -q torch==2.14.1 torchvision==0.29.1
	$(PIP) -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xraytodrr demo -o demo-output

# pytest exits 5 when it collects nothing: that fails the target like any other failure.
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The benchmarks' own extra (plastimatch, for the render comparison); `make test` does not need it.
$(BENCH_STAMP): $(STAMP)
	$(PIP) -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

# CT_DIR: the registration bench's other CTs (bench/clinician.py says where each comes from), rendered too.
bench: $(BENCH_STAMP)
	$(PY) bench/prepare.py
	$(PY) bench/render.py $(if $(CT_DIR),--ct-dir $(CT_DIR))

# The README's pictures of the panels' results (Resources/Screenshots/), drawn by slicer-core's MRML code.
screenshots: $(STAMP)
	$(PY) Resources/screenshots.py

# On a CUDA machine: the CPU-vs-CUDA backend tests, then the render benchmark with the GPU rows.
gpu-check: $(STAMP)
	$(PY) -m pytest -v Testing/test_fused_render.py Testing/test_fast_render.py
	$(PY) bench/render.py --sizes 128 256 512 --figure bench/figures/render_gpu_512.png

clean:
	rm -rf $(VENV) demo-output .pytest_cache
