# syntax=docker/dockerfile:1
#
# The dispatcher image; the Helm chart (helm/dispatcher) deploys it.
#
#   docker build -t REGISTRY/webhook-dispatcher:0.1.0 .
#
# Two stages: a Rust builder with the C toolchain librdkafka needs (rdkafka
# builds it from source with its own configure + make), and a minimal Debian
# runtime with only the shared libraries the binary links (OpenSSL, zlib) and
# the CA certificates the HTTP client trusts. The process runs as an
# unprivileged user (uid/gid 10001) and needs no writable filesystem.

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
# Unpinned on purpose: the release's current (security-patched) packages.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      g++ make pkg-config python3 zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace (every member's manifest is needed to resolve it);
# .dockerignore keeps build output, VCS data, tools and docs out.
COPY . .
# Cache the registry and the target directory between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p dispatcher --bin dispatcher \
 && install -D -m 0755 target/release/dispatcher /out/dispatcher

FROM debian:${DEBIAN_RELEASE}-slim
# ca-certificates: https endpoints (without them every https delivery fails);
# libssl3 and zlib1g: linked by librdkafka. Unpinned, as above.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 dispatcher \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin dispatcher
COPY --from=builder /out/dispatcher /usr/local/bin/dispatcher
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# The admin port: /metrics, /healthz, /readyz (admin.listen: 0.0.0.0:9464).
EXPOSE 9464
# SIGTERM starts the graceful drain (pipeline.shutdown_grace).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/dispatcher"]
CMD ["--log-format", "json", "run", "--config", "/etc/dispatcher/dispatcher.yaml"]

LABEL org.opencontainers.image.title="webhook-dispatcher" \
      org.opencontainers.image.description="Kafka to webhook fan-out dispatcher" \
      org.opencontainers.image.licenses="Apache-2.0"
