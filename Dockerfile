# syntax=docker/dockerfile:1
# Dockerfile for Privacy Ledger: one builder stage compiles the four services, one small runtime
# image holds all four binaries; the command picks the service (privacy-consent, ...).
# For machines with Docker (BuildKit, for the cache mounts); the project's CI runs without Docker.
# The .proto files compile in pure Rust, so no protoc is needed.

FROM rust:1.95-slim-bookworm AS build
# make: the services' allocator (jemalloc) is built from its C sources; the slim image has gcc.
RUN apt-get update && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p privacy-consent -p privacy-subject-requests -p privacy-retention -p privacy-disclosure-log \
 && mkdir -p /out \
 && cp target/release/privacy-consent target/release/privacy-subject-requests \
       target/release/privacy-retention target/release/privacy-disclosure-log /out/

FROM debian:bookworm-slim
# ca-certificates: TLS to NATS or an OTLP endpoint uses the system roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --user-group --uid 10001 --home-dir /var/lib/privacy \
      --shell /usr/sbin/nologin privacy \
 && mkdir -p /var/lib/privacy /etc/privacy/tenants \
 && chown privacy:privacy /var/lib/privacy
COPY --from=build /out/ /usr/local/bin/
# Example tenants as a default; docker-compose.yml mounts ./examples/tenants over them read-only.
COPY examples/tenants/ /etc/privacy/tenants/
ENV PRIVACY_DATA_DIR=/var/lib/privacy \
    PRIVACY_TENANTS_DIR=/etc/privacy/tenants \
    RUST_LOG=info
# Each service also needs PRIVACY_GRPC_ADDR=0.0.0.0:<port> (the default listens on 127.0.0.1),
# PRIVACY_NATS_URL and PRIVACY_TOKENS; disclosure-log needs PRIVACY_CONSENT_URL and
# PRIVACY_PEER_TOKEN to check consent. Health check: `privacy-<service> healthcheck`.
EXPOSE 50051 50052 50053 50054
VOLUME /var/lib/privacy
USER privacy
CMD ["privacy-consent"]
