# Builds the four Privacy Ledger services into one runtime image (for machines with Docker; the
# project's own CI runs without Docker). The proto files compile in pure Rust: no protoc needed.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p privacy-consent -p privacy-subject-requests -p privacy-retention -p privacy-disclosure-log \
 && mkdir -p /out \
 && cp target/release/privacy-consent target/release/privacy-subject-requests \
       target/release/privacy-retention target/release/privacy-disclosure-log /out/

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home /var/lib/privacy privacy \
 && mkdir -p /var/lib/privacy /etc/privacy/tenants \
 && chown -R privacy /var/lib/privacy
COPY --from=build /out/ /usr/local/bin/
COPY examples/tenants/ /etc/privacy/tenants/
USER privacy
ENV PRIVACY_DATA_DIR=/var/lib/privacy \
    PRIVACY_TENANTS_DIR=/etc/privacy/tenants \
    RUST_LOG=info
VOLUME /var/lib/privacy
# The command names the service: privacy-consent, privacy-subject-requests, ...
CMD ["privacy-consent"]
