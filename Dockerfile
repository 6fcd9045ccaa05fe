# syntax=docker/dockerfile:1
# inkstream, built from this repository (docker-compose.yml builds it).
#
# Stage 1 compiles a release binary with the toolchain image (which has the C
# toolchain, libssl-dev and pkg-config librdkafka's build needs); stage 2 is debian:bookworm-slim with
# the binary only, run as an unprivileged user. The healthcheck is the binary
# itself (`inkstream healthcheck` asks /healthz), so no curl in the image.

# The toolchain the test suite runs on (edition 2024 needs 1.85 or later).
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build artifacts between image builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p inkstream \
    && install -m 0755 target/release/inkstream /usr/local/bin/inkstream

FROM debian:bookworm-slim AS runtime
# ca-certificates: the system roots that rustls (the binary's one TLS stack)
# trusts for rediss:// (managed Redis), https to the email/SMS providers and
# webhooks, and SMTP STARTTLS/implicit TLS, unless a `*.tls.ca_file` names
# another CA. libssl3: librdkafka's TLS for Kafka (ssl / sasl_ssl, see
# docs/OPERATIONS.md "Kafka security"), which trusts the same system roots
# unless kafka.tls.ca_file is set. zlib (librdkafka) is in the base.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 inkstream \
    && useradd --system --uid 10001 --gid inkstream --home-dir /var/lib/inkstream \
       --create-home --shell /usr/sbin/nologin inkstream
COPY --from=build /usr/local/bin/inkstream /usr/local/bin/inkstream
USER inkstream:inkstream
WORKDIR /var/lib/inkstream
# A container listens on every interface, so `serve` refuses to start without
# a credential (INKSTREAM_JWT_SECRET, INKSTREAM_SESSION_SECRET or API keys in
# the config file); see docs/API.md, "Security model".
ENV PORT=8080 \
    INKSTREAM_BIND=0.0.0.0 \
    RUST_LOG=info
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["inkstream", "healthcheck"]
ENTRYPOINT ["inkstream"]
CMD ["serve"]
