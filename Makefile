# Two commands: `make run` trains the baseline, `make test` runs the test suite.
# Each creates .venv and installs the project (torch pinned to the CPU build) when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= dev,ray,slurm,docs,mlflow,tensorboard

.PHONY: run test install clean bench soak docs serve-docs

run: $(STAMP)
	$(BIN)/vaebench run experiments/baseline.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal  # two workers, each taking tests as it frees up (pytest-xdist)

# The kill suite with more points: 80 seeded SIGKILLs and reruns, compared with an uninterrupted study.
soak: $(STAMP)
	$(BIN)/python tests/faults/killsuite.py 80 12

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt "torch==2.13.0"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) build *.egg-info

# The documentation site: generated pages (config reference, CLI, benchmarks) brought up to date,
# then `mkdocs build --strict` into site/ (a broken link or reference is an error).
docs: $(STAMP)
	$(BIN)/python scripts/gen_docs.py
	$(BIN)/mkdocs build --strict --quiet

serve-docs: docs
	$(BIN)/mkdocs serve
