# The two commands: `make run` (Chisel's main job on the bundled demo model) and `make test` (the whole suite).
VENV := .venv
PY := $(VENV)/bin/python
OUTPUT ?= output

.PHONY: setup run test bench clean

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/chisel run workflows/txt2img.json --output-dir $(OUTPUT)

test: setup
	@bash scripts/setup_browser.sh
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/engine.py --json

clean:
	rm -rf $(VENV) $(OUTPUT) .pytest_cache
