# automl in a container, for batch jobs:
#   docker build -t automl .                          # all extras (CUDA torch for the generators: large)
#   docker build --build-arg EXTRAS= -t automl-core . # embeddings + search only, no torch
#   docker run --rm -v $PWD/data:/data -v automl-store:/store automl fit /data --trials 50
# The store (embeddings, Optuna studies, runs) and the Keras / Hugging Face caches live in the /store
# volume, so weights are downloaded once and a re-run reuses everything finished.
FROM python:3.11-slim

ARG EXTRAS=all
WORKDIR /opt/automl
COPY pyproject.toml README.md cli.py ./
COPY automl ./automl
COPY recipes ./recipes
RUN pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}"

ENV AUTOML_STORE=/store KERAS_HOME=/store/keras HF_HOME=/store/huggingface
VOLUME ["/store"]
WORKDIR /work
ENTRYPOINT ["automl"]
CMD ["--help"]
