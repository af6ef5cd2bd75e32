# One image with every binary of the monitor: allocator, ingest, evaluate, notify, devkit.
#
#   docker build -t kakarot-monitor:dev .
#
# Stage 1 turns the workspace's manifests into a recipe (cargo-chef), stage 2 builds only the
# dependencies from that recipe, so that this layer stays cached until Cargo.toml or Cargo.lock
# change, then builds the binaries. The runtime image is Debian slim with the binaries, the
# recorded demo data, CA certificates (wss:// feeds) and curl (health checks), run as a
# non-root user.

ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS chef
# make builds jemalloc, ingest's allocator; the slim image has gcc but not make.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /build

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bins \
    && mkdir -p /out \
    && cp target/release/allocator target/release/ingest target/release/evaluate \
          target/release/notify target/release/devkit /out/

FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /app --no-create-home monitor
COPY --from=builder /out/ /usr/local/bin/
WORKDIR /app
COPY data/ data/
USER monitor
# /metrics and /healthz when METRICS_ADDR=0.0.0.0:9090 (compose.yaml sets it).
EXPOSE 9090
CMD ["allocator", "--help"]
