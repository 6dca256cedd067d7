# The two commands a user needs: `make demo` and `make test`. Both set up everything on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
AUTOMQ := $(VENV)/bin/automq
FMNIST_DIR := /usr/share/datasets/fashion-mnist
SPACE ?= spaces/mbv2_fmnist.yaml
RUN ?= runs/demo
# the slowest tests are listed at the end: CI must stay under 20 minutes on 2 cores, and this shows where it goes
PYTEST_ARGS ?= --durations=15

.PHONY: demo test setup data chromium clean

setup: $(VENV)/.installed

# Reinstall when the package metadata changes; editable, so source edits need no reinstall.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

# Fashion-MNIST ships as Debian's dataset-fashion-mnist; install it when missing.
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "Installing Debian package dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is missing from $(FMNIST_DIR)."; \
		echo "Install it with: sudo apt-get install -y dataset-fashion-mnist"; \
		echo "or put the four *-ubyte.gz files in a folder and pass --data FOLDER (or dataset.root in the space file)."; \
	fi

# Debian's chromium renders report.html in the report test; without it that test fails and says how to install it.
chromium:
	@if command -v chromium >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "Installing Debian package chromium (report rendering test)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
			|| echo "chromium could not be installed; the report rendering test will fail until it is"; \
	else echo "chromium is not installed (apt-get install chromium as root); the report rendering test will fail"; fi

demo: setup data
	$(AUTOMQ) demo $(SPACE) --out $(RUN)

test: setup data chromium
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache
