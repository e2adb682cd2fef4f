# Two entry points on a fresh machine (Python 3.11 with pip and venv):
#   make run    set everything up, then run the main job
#   make test   set everything up, then run the tests and check the benchmarks
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench setup clean xen-capture

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/iommu-bench sweep

# pytest runs every test, slow ones included; then asv checks that every
# benchmark imports and runs once (a broken benchmark fails here).
test: $(STAMP)
	$(BIN)/python -m pytest
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/asv machine --yes >/dev/null
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/asv check --python=same
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/asv run --python=same --quick --dry-run --show-stderr

# Full benchmark run recorded for this commit (see README).
bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/asv machine --yes >/dev/null
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/asv run --python=same --set-commit-hash $$(git rev-parse HEAD)

# Live capture of a real Xen's P2M under QEMU (see capture/README.md): writes
# results/xen-capture/<timestamp>/ (CAPTURE_OUT=DIR to choose). Standard
# library only, so no venv needed; apt-get (root) on the first run.
xen-capture:
	$(PYTHON) capture/xen_capture.py

clean:
	rm -rf $(VENV) .asv build *.egg-info
