# Everything bootstraps itself: the first target that needs Python builds .venv from scratch.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The venv's exact torch (the CPU wheel here); pyproject.toml holds only the supported ranges.
CONSTRAINTS := constraints/local.txt
PIP_INSTALL := $(PY) -m pip install -q -c $(CONSTRAINTS)
PROFILE ?= local
RUN ?=
SEEDS ?= 1
O ?=
OVERRIDES := $(foreach o,$(O),-O $(o))

.PHONY: help venv demo test dry-run submit status resume plan bench clean-cache slurm-up slurm-down slurm-status test-slurm gpu-check gpu-wheels

help:
	@echo "make demo                     run preprocess -> teacher -> evaluate on data/sample via submitit's local executor"
	@echo "make test                     install everything and run the tests"
	@echo "make dry-run PROFILE=set_01   the profile's chain locally, on a slice"
	@echo "make submit PROFILE=set_01    submit the chain to SLURM (afterok dependencies)"
	@echo "  SEEDS=3 or PROFILE=a,b        a sweep: one job array per stage"
	@echo "make status RUN=runs/...      table of stages: state, job id, elapsed, peak memory"
	@echo "make resume RUN=runs/...      resubmit only stages that are not done"
	@echo "make plan PROFILE=set_01      memory budget and batch plan for the profile's target device"
	@echo "make bench                    benchmark table in bench/results/"
	@echo "make gpu-check OUT=dir        the memory planner checked on this node's GPU (no venv needed)"
	@echo "make gpu-wheels               wheels for gpu-check on a GPU node without internet, into .wheels/"
	@echo "make slurm-up / slurm-down    start/stop the local single-node SLURM cluster (root; installs it if missing)"
	@echo "make test-slurm               only the tests that need the local SLURM cluster"
	@echo "make slurm2-up / slurm2-down  start/stop the local two-node SLURM cluster (n1, n2; root; SLURM_CONF in slurm2-status)"
	@echo "make report RUN=runs/...      report.html of a run (or a sweep): stage table, curves, ROC/PR, ..."
	@echo "make track RUN=runs/...       import a run (or a sweep) into MLflow (runs/mlflow.db or tracking.uri)"
	@echo "make compare RUNS=\"a b\"       headline metrics of runs (or a sweep folder) side by side"
	@echo "make ui                       mlflow ui on runs/mlflow.db, on localhost"

venv: $(STAMP)

# pip takes the constrained torch first, and every install reads the constraints, so that nothing
# later resolves a newer (CUDA) build.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) torch
	$(PIP_INSTALL) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m jobs dry-run --profile local $(OVERRIDES)

# The SLURM tests run against real local clusters (one node; two nodes); starting them is idempotent.
test: $(STAMP) slurm-up slurm2-up
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slurm: $(STAMP) slurm-up slurm2-up
	$(PY) -m pytest -q -m "slurm or slurm2" $(PYTEST_ARGS)

slurm-up:
	bash scripts/local-slurm.sh start

slurm-down:
	bash scripts/local-slurm.sh stop

slurm-status:
	bash scripts/local-slurm.sh status

# A second, separate cluster of two nodes on this machine (after slurm-up, which installs SLURM).
.PHONY: slurm2-up slurm2-down slurm2-status
slurm2-up: slurm-up
	bash scripts/local-slurm-2node.sh start

slurm2-down:
	bash scripts/local-slurm-2node.sh stop

slurm2-status:
	bash scripts/local-slurm-2node.sh status && bash scripts/local-slurm-2node.sh env

dry-run: $(STAMP)
	$(PY) -m jobs dry-run --profile $(PROFILE) $(OVERRIDES)

submit: $(STAMP)
	$(PY) -m jobs submit --profile $(PROFILE) --seeds $(SEEDS) $(OVERRIDES)

status: $(STAMP)
	@test -n "$(RUN)" || { echo "usage: make status RUN=runs/<profile>/<run_id>"; exit 2; }
	$(PY) -m jobs status --run $(RUN)

resume: $(STAMP)
	@test -n "$(RUN)" || { echo "usage: make resume RUN=runs/<profile>/<run_id>"; exit 2; }
	$(PY) -m jobs resume --run $(RUN) $(OVERRIDES)

plan: $(STAMP)
	$(PY) -m jobs plan --profile $(PROFILE) $(OVERRIDES)

bench: $(STAMP)
	$(PY) -m bench.run

clean-cache:
	find data/cache -mindepth 1 ! -name .gitkeep -exec rm -rf {} +

# Reports and tracking (docs/tracking.md): RUN is a run or a sweep folder; O=tracking.uri=... for a site server.
.PHONY: report track compare ui
RUNS ?=
report: $(STAMP)
	@test -n "$(RUN)" || { echo "usage: make report RUN=runs/<profile>/<run_id> (or runs/_sweeps/<id>)"; exit 2; }
	$(PY) -m jobs report --run $(RUN)

track: $(STAMP)
	@test -n "$(RUN)" || { echo "usage: make track RUN=runs/<profile>/<run_id> [O=tracking.uri=http://host:5000]"; exit 2; }
	$(PY) -m jobs track --run $(RUN) $(OVERRIDES)

compare: $(STAMP)
	@test -n "$(RUNS)" || { echo 'usage: make compare RUNS="runs/<profile>/<a> runs/<profile>/<b>" (or a sweep folder)'; exit 2; }
	$(PY) -m jobs compare --runs $(RUNS)

ui: $(STAMP)
	$(PY) -m jobs ui $(if $(STORE),--store $(STORE)) $(if $(PORT),--port $(PORT))

# The planner checked on a GPU (docs/memory.md). gpu-check needs no venv: on a GPU node the python
# that has torch runs it from this checkout, with what it lacks installed from .wheels/ for the run.
OUT ?= bench/results/gpu-check
GPU_CHECK_ARGS ?=
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
WHEELS := .wheels
WHEEL_PYTHONS ?= 3.10 3.11 3.12
WHEEL_PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64

gpu-check:
	@PYTHON=$(GPU_PYTHON) bash scripts/gpu-check.sh $(OUT) $(GPU_CHECK_ARGS)

gpu-wheels:
	rm -rf $(WHEELS).part && mkdir -p $(WHEELS).part
	for v in $(WHEEL_PYTHONS); do \
	  $(PYTHON) -m pip download -q --only-binary=:all: --implementation cp --python-version $$v $(WHEEL_PLATFORMS) \
	    -r constraints/gpu-wheels.txt -c constraints/gpu-wheels.txt -d $(WHEELS).part || exit 1; \
	done
	rm -rf $(WHEELS) && mv $(WHEELS).part $(WHEELS)
	@echo "$$(ls $(WHEELS) | wc -l) wheels, $$(du -sh $(WHEELS) | cut -f1) in $(WHEELS)/: copy it into the checkout on the GPU node"
