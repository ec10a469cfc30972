# zopilotgpu developer entry points. `make help` lists them.
#
# The two that set up a fresh machine:
#   make run   installs if needed, then serves the embedded default model on 127.0.0.1:50051
#   make test  installs if needed, then runs every test

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := tests/node/node_modules/.installed
INSTALL_INPUTS := constraints.txt requirements.txt requirements-dev.txt \
	client/pyproject.toml server/pyproject.toml scripts/install_dev.sh scripts/dev_constraints.py
HOST ?= 127.0.0.1
PORT ?= 50051
PYTEST_ARGS ?=

.PHONY: help install run test test-unit proto proto-baseline lint format check docs clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' \
	  -v host='$(HOST)' -v port='$(PORT)' -v image='$(IMAGE)' \
	  '{gsub(/\$$\(HOST\)/, host, $$2); gsub(/\$$\(PORT\)/, port, $$2); \
	    gsub(/\$$\(IMAGE\)/, image, $$2); printf "  %-14s %s\n", $$1, $$2}'

install: $(STAMP) $(NODE_STAMP) ## build .venv and the Node test client (idempotent: does nothing when no input changed)

$(STAMP): $(INSTALL_INPUTS)
	bash scripts/install_dev.sh $(VENV)
	touch $@

# The Node client of tests/integration/client/test_node_client.py (the API contract
# outside Python): the exact versions of tests/node/package-lock.json from the npm registry. --ignore-scripts:
# nothing needs an install script (protobufjs' only prints a version note).
$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	@command -v npm >/dev/null || { echo "install: the Node client test needs Node >= 18 and npm" >&2; exit 1; }
	cd tests/node && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

run: install ## serve the embedded default model on $(HOST):$(PORT)
	$(PY) -m zopilot_server --host $(HOST) --port $(PORT)

test: install ## run all tests (then the quantization suite in its own venv: test-quant)
	$(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-quant

# The fast loop: tests/unit/ starts no server and runs no external tool (fakes, tiny
# models in process); tests/README.md says what goes where.
test-unit: install ## run the unit tests only (no server processes; the fast loop)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# The generated stubs are committed so the client installs without grpcio-tools;
# tests/integration/tooling/test_proto_stubs.py fails when they are stale
# (scripts/gen_proto.py says how).
proto: install ## regenerate client/zopilot_client/pb and server/zopilot_server/protocols/pb from protos/
	$(PY) scripts/gen_proto.py client server

# `buf breaking` (tests/integration/tooling/test_buf.py, in `make test`) compares protos/
# with this committed image of the published contract, so a clean (even shallow) clone has it. Refresh it on
# purpose once a change is meant to ship; it refuses a breaking change unless ALLOW_BREAKING=1.
PROTO_BASELINE := protos/baseline/zopilot_v1.json
proto-baseline: install ## record protos/ as the contract that buf breaking checks against
	$(VENV)/bin/buf breaking --against $(PROTO_BASELINE) || [ "$(ALLOW_BREAKING)" = 1 ] \
	  || { echo "proto-baseline: that change breaks clients (ALLOW_BREAKING=1 to record it anyway)" >&2; exit 1; }
	set -o pipefail; $(VENV)/bin/buf build --exclude-source-info -o '-#format=json' \
	  | $(PY) -m json.tool --indent 1 > $(PROTO_BASELINE).tmp
	mv $(PROTO_BASELINE).tmp $(PROTO_BASELINE)

lint: install ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## ruff fix + format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

check: lint test ## everything a reviewer runs

# The docs site (mkdocs.yml, docs/). `make test` runs the same strict build in
# tests/integration/client/test_docs.py: a broken link or anchor, or a page missing from
# nav, fails.
docs: install ## build the docs site into site/ (mkdocs --strict)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# --- The CUDA image (docs/docker.md). CI has no Docker: `make test` runs the image
# checks (tests/integration/tooling/test_image_*.py) and verify-env; docker-build needs
# a Docker engine.
IMAGE ?= zopilotgpu:latest
DOCKER_BUILD_ARGS ?=
.PHONY: docker-build docker-verify verify-env image-check

docker-build: ## build the verified CUDA image $(IMAGE); DOCKER_BUILD_ARGS adds --build-arg ...
	DOCKER_BUILDKIT=1 docker build -t $(IMAGE) $(DOCKER_BUILD_ARGS) .

docker-verify: ## re-check $(IMAGE) at run time, on the GPU (docker run --gpus all)
	docker run --rm --gpus all --entrypoint python $(IMAGE) /opt/zopilot/verify_env.py --require-gpu --require-ocr

# The dev profile checks the constraints this venv was installed with: the output of the
# one script that swaps the CUDA torch stack for the CPU torch (pipefail: its failure counts).
verify-env: install ## check .venv against constraints.txt (dev profile: CPU torch, no torchvision)
	set -o pipefail; $(PY) scripts/dev_constraints.py constraints.txt \
		| $(PY) docker/verify_env.py --profile dev --constraints - --require-ocr

image-check: install ## the image checks CI runs without Docker (static + pip dry-run)
	$(PY) scripts/image_checks.py

# --- Quantization (docs/concepts/quantization.md). The image's bitsandbytes 0.45 quantizes
# on CUDA only; a second venv with transformers 4.57.6 and bitsandbytes 0.50.2 (pins in
# constraints-quant.txt, same CPU torch) runs 8-bit / 4-bit for real on CPU. About a
# minute to install, once; `make test` runs this suite after the main one.
QVENV ?= .venv-quant
QSTAMP := $(QVENV)/.installed
QUANT_PYTEST_ARGS ?=
.PHONY: install-quant test-quant

install-quant: $(QSTAMP) ## build .venv-quant (idempotent, like install)

$(QSTAMP): $(INSTALL_INPUTS) constraints-quant.txt requirements-quant.txt
	bash scripts/install_dev.sh $(QVENV) quant
	touch $@

test-quant: install-quant ## bitsandbytes 8-bit/4-bit served for real on CPU (tests_quant/)
	$(QVENV)/bin/python -m pytest tests_quant $(QUANT_PYTEST_ARGS)

# --- Behind a gateway (docs/gateway.md): smg (pinned in requirements-dev.txt) in front of
# REPLICAS servers, OpenAI HTTP on 127.0.0.1:GATEWAY_PORT; POLICY=round_robin to compare.
.PHONY: gateway
gateway: install ## REPLICAS (2) servers + smg (POLICY cache_aware) with OpenAI HTTP on 127.0.0.1:8080
	bash scripts/gateway.sh $(VENV)

.PHONY: bench-documents

bench-stream: install ## GenerateStream tokens/s + TTFT: gRPC vs in-process generate (JSON)
	$(PY) bench/stream.py

bench-documents: install ## DocumentParse docs/s: gRPC workers vs docstrange in-process (JSON)
	$(PY) bench/documents.py

clean: ## remove the venv and caches
	rm -rf $(VENV) $(QVENV) .cache .pytest_cache .ruff_cache site
