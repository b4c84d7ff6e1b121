# syntax=docker/dockerfile:1.7
# One image for every component: the entrypoint is the `veilleuse` console script and the
# Kubernetes manifests pick the command (connector, worker, sink ..., notifier, api, migrate).
#
# Reproducible: the base image is an ARG that CI pins by digest (python:3.11-slim@sha256:...),
# every Python package comes at the version of constraints.txt, and no build step reads the
# network except pip. The development machines have no Docker engine: checked offline by
# tests/unit/k8s/test_dockerfile.py, and built and run with buildah and podman on a stand-in
# base by k8s/build-image-without-docker.sh (k8s/README.md).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
# The production packages only: devtools/ (stack, simulator, demo, bench) stays out.
COPY schemas ./schemas
COPY pipeline ./pipeline
COPY connectors ./connectors
COPY agents ./agents
COPY notifier ./notifier
COPY api ./api
COPY cli ./cli
RUN python -m venv /opt/veilleuse \
    && /opt/veilleuse/bin/pip install --constraint constraints.txt /src
# The migrations are package data of pipeline.migrations: the wheel carries them, nothing is
# copied by hand, and the build fails if the installed package cannot see them.
# `python -P`: without it `python -c` puts the working folder /src first on sys.path and imports
# the source tree's pipeline/, not the installed one.
# The root filesystem is read-only at run time: bytecode is compiled here, never at start.
RUN /opt/veilleuse/bin/python -P -c 'from pipeline.migrations import discover; assert discover()' \
    && /opt/veilleuse/bin/veilleuse --help >/dev/null \
    && /opt/veilleuse/bin/python -m compileall -q /opt/veilleuse/lib

FROM ${PYTHON_IMAGE}
# HOME on the writable emptyDir the pods mount at /tmp: a library that writes a cache under
# ~ then fails loudly nowhere.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    PATH=/opt/veilleuse/bin:$PATH
# A fixed numeric uid, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
# /app made here: buildah's WORKDIR does not put the folder in the image (BuildKit's does).
RUN groupadd --system --gid 10001 veilleuse \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin veilleuse \
    && mkdir -p /app
COPY --from=build /opt/veilleuse /opt/veilleuse
# Settings come from the environment only: an empty, root-owned working folder has no .env.
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["/opt/veilleuse/bin/veilleuse"]
CMD ["--help"]
