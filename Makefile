# pbkit: the README's two commands are `make bench` and `make test`; both create .venv/ first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pbkit-installed
LOCK := requirements/dev.lock

# The registry's CUDA build of torch (it runs on CPU too), installed with hashes from the lock;
# ignore machine-level pip settings that would offer other wheels (keep its CA bundle, if any).
PIP_CA := $(or $(PIP_CERT),$(wildcard /etc/ssl/certs/ca-certificates.crt))
PIP_ENV := env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL PIP_CONFIG_FILE=/dev/null \
	$(if $(PIP_CA),PIP_CERT=$(PIP_CA))

JOBS ?= auto
MODEL ?= resnet18_cifar
OWNER ?= pbkit
IMAGE ?= ghcr.io/$(OWNER)/pbkit
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
BENCH_DIR := configs/bench$(if $(filter gpu,$(TARGET)),/gpu)
BENCH_CONFIG := $(or $(wildcard $(BENCH_DIR)/$(subst :,_,$(MODEL)).yaml),configs/bench/default.yaml)
BENCH_SETS := $(if $(filter configs/bench/default.yaml,$(BENCH_CONFIG)),--set model.name=$(MODEL)) \
	$(if $(METHOD),--set prune.method=$(METHOD)) \
	$(if $(SPEEDUP),--set prune.speedup=$(SPEEDUP)) \
	$(if $(SCOPE),--set prune.scope=$(SCOPE)) \
	$(if $(BACKEND),--set bench.backends=[$(BACKEND)]) \
	$(if $(BATCH),--set bench.batches=[$(BATCH)]) \
	$(if $(ROUND_TO),--set prune.round_to=$(ROUND_TO))

.PHONY: help setup browser bench test test-slow test-all report-html study-perf reference-study reference-fairness reference-latency zoo lint lock report perf fidelity reference clean docker-build docker-test docker-bench docker-pin lock-tensorrt

help:
	@echo "make setup                      create $(VENV)/ from the pinned lock ($(LOCK), hashes checked)"
	@echo "make bench [MODEL=m METHOD=k SPEEDUP=x SCOPE=s BACKEND=b BATCH=n ROUND_TO=n TARGET=gpu FORCE=1]"
	@echo "                                prune, export, check parity, measure, record, print the table"
	@echo "                                (again: reports the same run; FORCE=1 starts it again)"
	@echo "make test [JOBS=n] [SLOW=1]     the test suite without the slow end-to-end cases (pytest-xdist, n workers);"
	@echo "                                SLOW=1: with them, in one session (what CI runs)"
	@echo "make test-slow / make test-all  the slow end-to-end cases / everything"
	@echo "make lint                       ruff, import-linter (the layering), hadolint, mypy, mkdocs --strict (the manual)"
	@echo "make docker-build [OWNER=o]     build the pbkit-cpu and pbkit (CUDA) images with Docker, else podman (installed"
	@echo "                                with apt-get where it can be); says which were built, and why not"
	@echo "make docker-test                build both (stand-in bases where the pinned ones cannot be pulled) and run them"
	@echo "                                as a user would: --network none, --user, quick runs, no network attempt"
	@echo "make docker-bench MODEL=m       make bench inside the GPU image, records into ./results"
	@echo "make docker-pin                 refresh the base-image digests (needs a registry)"
	@echo "make docs                       the manual (docs/) as a static site in build/site/ (make lint builds it too)"
	@echo "make report                     leaderboard of results/runs"
	@echo "make report-html                the HTML report of the reference results and its screenshots"
	@echo "make perf                       per-step time of every method (results/perf/)"
	@echo "make fidelity                   spread and agreement of the measurement itself (results/perf/)"
	@echo "make study-perf                 a study on Ray with 1 vs 2 workers: scaling and overhead (results/perf/)"
	@echo "make reference-study            the offline digits study (results/reference/digits-study-<tag>/)"
	@echo "make reference-fairness         the fairness evidence on digits: seeds, 2 LRs, KD, scratch (~35 min)"
	@echo "make reference-latency          latency- vs MACs-targeted pruning on digits, same measured speed-up (~20 min)"
	@echo "make zoo                        every torchvision classifier and a timm sample: prune 1.5x + export, or why not"
	@echo "make canary                     the YOLO and zoo smoke tests against the newest ultralytics and torch-pruning"
	@echo "make lock                       re-resolve requirements/*.in into the lock files (needs uv)"
	@echo "make lock-tensorrt              pin TensorRT's libraries by hash in requirements/tensorrt.lock (needs pypi.nvidia.com)"

setup: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_ENV) $(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $(LOCK)
	$(PIP_ENV) $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@$(BIN)/pbkit --version
	@touch $@

bench: setup
	$(BIN)/pbkit run $(BENCH_CONFIG) $(BENCH_SETS) $(if $(FORCE),--force)

# The HTML report's browser tests drive the system's chromium through the system's chromedriver
# (Debian: chromium + chromium-driver), never a browser downloaded at run time. Installed here where
# apt-get can run (root or passwordless sudo); elsewhere those tests skip and pytest's summary says why.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo -n)
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && $(or $(SUDO),true) true 2>/dev/null; then \
	  echo "installing chromium + chromium-driver (apt-get) for the HTML report's browser tests"; \
	  ( $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	      --no-install-recommends chromium chromium-driver >/dev/null ) \
	  || echo "could not install chromium: the browser tests will skip (see pytest's summary)"; \
	else echo "no chromium + chromedriver and no apt-get as root: the browser tests will skip (see pytest's summary)"; fi

# SLOW=1: the slow end-to-end cases too, in the same pytest session (CI: the session-scoped fixtures
# are built once, and the work-stealing scheduler keeps both workers busy to the end)
test: setup browser ## the suite a developer runs often: every test but the slow end-to-end ones, in parallel
	$(BIN)/python -m pytest -q -n $(JOBS) --dist worksteal --durations=15 $(if $(SLOW),,-m "not slow")

test-slow: setup ## the heavy end-to-end cases (CI runs them after `make test`)
	$(BIN)/python -m pytest -q -n $(JOBS) --dist worksteal -m slow

test-all:
	$(MAKE) test SLOW=1

lint: setup
	$(BIN)/ruff format --check pbkit tests benchmarks docs/*.py
	$(BIN)/ruff check pbkit tests benchmarks docs/*.py
	$(BIN)/lint-imports
	$(BIN)/hadolint docker/Dockerfile docker/Dockerfile.cpu
	$(BIN)/mypy  # all of pbkit/ (pyproject: [tool.mypy]); TensorRT against typings/tensorrt
	d=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir "$$d"; rc=$$?; rm -rf "$$d"; exit $$rc

.PHONY: docs
docs: setup ## the manual (docs/, mkdocs.yml) as a static site in build/site/, offline
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

report: setup
	$(BIN)/pbkit report results/runs

report-html: setup browser ## the HTML report of the committed reference results, and its screenshot
	$(BIN)/pbkit report $(REF_FAIR) --format html -o $(REF_FAIR)/report.html
	$(BIN)/python benchmarks/screenshot.py $(REF_FAIR)/report.html $(REF_FAIR)/report.png
	$(BIN)/python benchmarks/screenshot.py $(REF_FAIR)/report.html $(REF_FAIR)/report-plots.png --at plots

lock:
	cd requirements && for f in base gpu dev; do \
	  uv pip compile $$f.in --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	    --index-url https://pypi.org/simple --no-emit-package tensorrt-cu13-libs --no-header -o $$f.lock; done

# TensorRT's libraries: PyPI has a stub that downloads them unchecked; this pins NVIDIA's wheel
lock-tensorrt:
	bash docker/tensorrt.sh lock

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info

perf: setup ## per-step time of every method on the ResNet-50 CIFAR shape -> results/perf/
	$(BIN)/python benchmarks/perf_methods.py

prune-overhead: setup ## the pruning loop's wall time against the pruner's own step times -> results/perf/prune-overhead-*
	$(BIN)/python benchmarks/prune_overhead.py --tag cpu-2core

fidelity: setup ## run-to-run spread of the measurement and agreement with an independent loop -> results/perf/
	$(BIN)/python benchmarks/fidelity.py

reference: setup ## regenerate results/reference/<tag>/ (records, leaderboard, plot)
	bash benchmarks/reference.sh

study-perf: setup ## the same 8-trial study on Ray with 1 and 2 workers -> results/perf/study-scaling-*
	$(BIN)/python benchmarks/study_scaling.py

REF_STUDY := results/reference/digits-study-cpu-$(shell nproc)core
REF_FAIR := results/reference/digits-fairness-cpu-$(shell nproc)core
REF_LAT := results/reference/digits-latency-cpu-$(shell nproc)core
reference-study: setup ## every method x 2 targets x 3 seeds on digits, on a local Ray, then its leaderboard
	$(BIN)/pbkit study run configs/study/digits-reference.study.yaml --out $(REF_STUDY)
	$(BIN)/pbkit report $(REF_STUDY) --format md --plot $(REF_STUDY)/speedups.png > $(REF_STUDY)/LEADERBOARD.md

reference-fairness: setup ## 6 methods x 2 finetune LRs x 3 seeds, KD on/off, scratch baseline; its leaderboard
	$(BIN)/pbkit study run configs/study/digits-fairness.study.yaml --out $(REF_FAIR)
	$(BIN)/pbkit report $(REF_FAIR) --format md --accuracy-plot $(REF_FAIR)/accuracy.png > $(REF_FAIR)/LEADERBOARD.md
	$(BIN)/pbkit report $(REF_FAIR) --format html -o $(REF_FAIR)/report.html

reference-latency: setup ## latency- vs MACs-targeted pruning on digits at the same measured speed-up, 3 seeds
	$(BIN)/python benchmarks/latency_vs_macs.py --out $(REF_LAT)
	$(BIN)/pbkit report $(REF_LAT) $(REF_LAT)/matched --format md > $(REF_LAT)/LEADERBOARD.md

zoo: setup ## every torchvision classifier and a timm sample, each in its own process -> results/perf/zoo-*
	$(BIN)/python benchmarks/zoo.py

# the YOLO and zoo smoke tests against the newest ultralytics and torch-pruning on the registry, in a
# throwaway venv under build/canary (never .venv/, never the locks): which upstream release breaks what
.PHONY: canary
canary: setup
	$(BIN)/python benchmarks/canary.py

# the engine (Docker, else podman), its runtime and limits, the bases and stand-ins: docker/images.sh
DOCKER_ENV = IMAGE=$(IMAGE) VERSION=$(VERSION) $(if $(PIP_CA),PIP_CA=$(PIP_CA)) $(if $(IMAGES),IMAGES="$(IMAGES)")
docker-build:
	$(DOCKER_ENV) bash docker/images.sh build

docker-test:
	$(DOCKER_ENV) bash docker/images.sh test

docker-bench:
	mkdir -p results
	docker run --rm --gpus all --network none --user "$$(id -u):$$(id -g)" -v "$(CURDIR)/results:/results" $(IMAGE):$(VERSION) \
		run /opt/pbkit/share/configs/bench/$(subst :,_,$(MODEL)).yaml $(BENCH_SETS)

docker-pin:
	bash docker/pin.sh
