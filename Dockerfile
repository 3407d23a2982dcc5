# syntax=docker/dockerfile:1
# The rankserve gateway image (the Helm chart's gateway container and `helm test` pod).
#
#   docker build -t REGISTRY/rankserve:0.1.0 .                     # CPU ONNX Runtime fallback
#   docker build --build-arg ORT=gpu -t REGISTRY/rankserve:0.1.0-gpu .   # CUDA 13
#
# It holds the installed package and a copy of model_repository/ (the model cards the
# gateway's feature encoder reads, and the ONNX files its embedded fallback scores with).
# docs/deploy.md, "Building the gateway image", says when to use which variant.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
# cpu: onnxruntime; gpu: onnxruntime-gpu, a CUDA 13 build, with the CUDA 13 user-space
# libraries (cudart, cuBLAS, cuRAND, cuFFT, NVRTC) and cuDNN 9 as pip packages from the
# `gpu` extra; the gateway preloads them (onnxruntime.preload_dlls()). Only the driver comes
# from the node (CUDA 13 needs driver >= 580). EXTRA_PIP adds packages to either.
ARG ORT=cpu
ARG EXTRA_PIP=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY serving ./serving
RUN python -m venv /opt/rankserve \
    && /opt/rankserve/bin/pip install --upgrade pip \
    && /opt/rankserve/bin/pip install ".[${ORT}]" ${EXTRA_PIP}

FROM python:${PYTHON_VERSION}-slim
# uid/gid 1000 on purpose: the chart runs every container of a pod as uid 1000, because in
# its sidecar topology the gateway and Triton must share a user to open each other's 0600
# shared-memory regions in /dev/shm.
RUN groupadd --gid 1000 rankserve \
    && useradd --uid 1000 --gid 1000 --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin rankserve
COPY --from=build /opt/rankserve /opt/rankserve
WORKDIR /app
# Read-only for the service user: the chart also runs the container with a read-only root.
COPY model_repository ./model_repository
# No RANKSERVE_* variables here: environment beats the config file, so an image default
# would silently override the chart's ConfigMap.
ENV PATH=/opt/rankserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 1000:1000
EXPOSE 8000
ENTRYPOINT ["rankserve"]
# Default settings otherwise (port 8000, ./model_repository, embedded backend);
# the chart runs `rankserve serve` with RANKSERVE_CONFIG instead.
CMD ["serve", "--host", "0.0.0.0"]
