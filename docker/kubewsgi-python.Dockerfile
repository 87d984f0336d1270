# The `kubewsgi-python` image: CPython 3.11 and kubewsgi built with the embedded-Python worker
# server. Apps build FROM it: install dependencies into /opt/venv, copy the code into /app.
#   docker build -f docker/kubewsgi-python.Dockerfile -t kubewsgi/kubewsgi-python:0.1.0 .
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3.11-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    PYO3_PYTHON=/usr/bin/python3.11 cargo build --release --locked \
    && cp target/release/kubewsgi /kubewsgi

# The same Debian release as the build stage, so the binary finds the libpython3.11 it linked.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv libpython3.11 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && groupadd --gid 65532 nonroot && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /app nonroot
COPY --from=build /kubewsgi /usr/local/bin/kubewsgi
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
USER 65532:65532
ENTRYPOINT ["kubewsgi"]
