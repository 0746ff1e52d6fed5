# automl, CPU image: embeddings (Keras on TensorFlow), the search, and the HTTP service.
#
#   docker build -t automl .                                                # the official python:3.11-slim base
#   docker build --build-arg BASE=local/bookworm-python:3.11 -t automl .    # a local base (README, Containers)
#   docker run --rm --init -v automl-store:/store -v "$PWD/data:/data:ro" automl fit /data --trials 50
#   docker run --rm --init -v automl-store:/store -p 127.0.0.1:8000:8000 -e AUTOML_TOKEN automl serve --host 0.0.0.0
#   docker run --rm --init -v automl-store:/store automl worker
#
# Layout: the project is installed in a virtual environment, /opt/venv (on PATH); the store, the Keras
# weights cache (KERAS_HOME) and the Hugging Face cache (HF_HOME) all live in one volume, /store, so
# weights are downloaded once and a re-run reuses every finished embedding, trial and run. The container
# runs as the unprivileged user automl (uid/gid 1000, build argument APP_UID). GPU: docker/Dockerfile.gpu.
#
# EXTRAS picks pyproject.toml's optional dependencies (sizes measured on the local base: docs/benchmarks.md,
# "Container images"):
#   serve,postgres    (default; 2.7 GB, TensorFlow 1.9 GB of it) embed + search + `automl serve` /
#                     `automl worker` (FastAPI, uvicorn, Huey, redis) + psycopg 3, the driver of
#                     `--storage postgresql://...` (compose.yaml's set). No torch. The augmenters
#                     (`--augment`, `compare --augment`) then stop with the pip command for automl[diffusion].
#   ""                core only: embed + search on the store's SQLite, no service.
#   all               (7.9 GB; build 6 min here instead of 2) adds torch 2.13 + torchvision 0.28, diffusers,
#                     transformers, accelerate, peft for the augmenters. PyPI's Linux torch wheel is the
#                     CUDA 13 build: 1.2 GB of torch, 0.7 GB of triton and 2.7 GB of CUDA libraries
#                     (nvidia-*/cuda-toolkit wheels) that a CPU machine never uses. To get the same versions as
#                     PyTorch's much smaller CPU build instead, pass
#                     TORCH_INDEX=https://download.pytorch.org/whl/cpu (PyTorch's own index; not tried
#                     here, where only PyPI is reachable).
# EXTRA_PACKAGES: further pip requirements installed beside them (e.g. another database driver).
#
# No `# syntax=` line and no BuildKit-only instruction: the classic builder of Debian's docker.io builds it.

ARG BASE=python:3.11-slim

# --- build: a venv with the project's dependencies -----------------------------------------------
FROM ${BASE} AS build
ARG EXTRAS=serve,postgres
ARG EXTRA_PACKAGES=
ARG TORCH_INDEX=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# A venv, not the system interpreter: Debian's Python refuses `pip install` (PEP 668).
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Machines that reach the package index only through a TLS-inspecting proxy put that CA bundle here
# (docker/smoke.sh copies the file $PIP_CERT names and deletes it after the build). It exists in this
# stage only; the final stage below copies the venv and nothing else from here.
COPY docker/certs/ /tmp/certs/

# Dependencies first, from pyproject.toml alone (the package itself is a stub here), so that editing
# the code or the README does not download and install them again.
WORKDIR /src
COPY pyproject.toml ./
RUN set -eu; \
    if [ -f /tmp/certs/pip-cert.pem ]; then export PIP_CERT=/tmp/certs/pip-cert.pem; fi; \
    mkdir -p automl && touch README.md cli.py automl/__init__.py; \
    case ",${EXTRAS}," in \
      *,all,*|*,diffusion,*) if [ -n "${TORCH_INDEX}" ]; then \
          pip install --index-url "${TORCH_INDEX}" \
            $(grep -oE '"(torch|torchvision)==[^"]+"' pyproject.toml | tr -d '"'); fi ;; \
    esac; \
    pip install ".${EXTRAS:+[${EXTRAS}]}" ${EXTRA_PACKAGES}; \
    pip uninstall -y automl; \
    rm -rf /src/*

# --- wheel: the project itself, as a wheel (seconds; editing the code rebuilds only this and the last layer) --
FROM build AS wheel
COPY pyproject.toml README.md cli.py ./
COPY automl ./automl
RUN set -eu; \
    if [ -f /tmp/certs/pip-cert.pem ]; then export PIP_CERT=/tmp/certs/pip-cert.pem; fi; \
    pip wheel --no-deps --wheel-dir /opt/automl/dist .

# --- final: the venv, the recipes, an unprivileged user; no pip configuration, no certificate ----------
FROM ${BASE}
ARG APP_UID=1000
RUN groupadd --gid ${APP_UID} automl \
 && useradd --uid ${APP_UID} --gid ${APP_UID} --create-home --home-dir /home/automl --shell /usr/sbin/nologin automl \
 && mkdir -p /store /work \
 && chown ${APP_UID}:${APP_UID} /store /work
# The dependencies (one large layer, cached while pyproject.toml and the build arguments stay the same),
# then the project's wheel, installed offline from the file alone.
COPY --from=build /opt/venv /opt/venv
COPY --from=wheel /opt/automl/dist /opt/automl/dist
RUN /opt/venv/bin/pip install --no-deps --no-index --no-cache-dir --disable-pip-version-check \
      --root-user-action=ignore /opt/automl/dist/*.whl \
 && /opt/venv/bin/pip check --disable-pip-version-check \
 && /opt/venv/bin/automl --version
COPY recipes /opt/automl/recipes
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    AUTOML_STORE=/store \
    KERAS_HOME=/store/keras \
    HF_HOME=/store/huggingface
# A fresh named volume starts as a copy of /store here, owned by automl. A bind mount keeps the host
# folder's owner: run with --user "$(id -u):$(id -g)" or chown the folder to 1000.
VOLUME ["/store"]
WORKDIR /work
USER ${APP_UID}:${APP_UID}
EXPOSE 8000
ENTRYPOINT ["automl"]
CMD ["--help"]
