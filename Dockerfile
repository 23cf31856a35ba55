# credrotd container image: the binary, run as uid 10001 in a Debian bookworm base.
#
# With a registry (Docker Hub), the default target compiles in rust:1-bookworm:
#   docker build -t credrotd .
# From a binary built on the host (what scripts/container does, and .ci/run with it):
#   cargo build --release --locked
#   podman build --format docker --target prebuilt -t credrotd .
# --build-arg RUNTIME_BASE=IMAGE replaces debian:bookworm-slim; scripts/container
# passes a bookworm made by debootstrap (with ca-certificates) and imported into
# podman, since no registry can be reached there, and BINARY=a stripped copy.
# `--format docker` keeps the HEALTHCHECK (the OCI image format has none).
#
# Run it with a read-only root; the writable places are the admin socket's
# directory, the ledger's and the store's:
#   docker run --read-only --tmpfs /run/credrotd:uid=10001,gid=10001,mode=0750 \
#     -v credrotd-state:/var/lib/credrotd -v credentials:/shared \
#     -v ./inventory.yaml:/etc/credrotd/inventory.yaml:ro credrotd
# (scripts/container runs config/examples/sidecar.yaml's arrangement this way,
# with an application container reading the credential under its own uid.)

ARG RUNTIME_BASE=debian:bookworm-slim

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so that code changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir daemon && echo 'fn main() {}' > daemon/main.rs && echo '' > daemon/lib.rs \
    && cargo fetch --locked
COPY daemon ./daemon
RUN cargo build --release --locked && strip target/release/credrotd

# What both targets share: the user, the directories, and how the image runs.
FROM ${RUNTIME_BASE} AS runtime
# debian:bookworm-slim lacks ca-certificates (the roots TLS to databases and
# stores checks against); the debootstrap base of scripts/container has them, so
# this stage needs no network there.
RUN set -eu; \
    if [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --system --gid 10001 credrotd; \
    useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/credrotd \
        --no-create-home --shell /usr/sbin/nologin credrotd; \
    install -d -o credrotd -g credrotd -m 0700 /var/lib/credrotd; \
    install -d -o credrotd -g credrotd -m 0750 /run/credrotd; \
    install -d -m 0755 /etc/credrotd
USER 10001:10001
ENV CREDROTD_CONFIG=/etc/credrotd/inventory.yaml
# Alive means the admin socket answers (`admin:` must be set in the inventory).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/credrotd", "ctl", "health"]
ENTRYPOINT ["/usr/local/bin/credrotd", "--log-format", "json"]
CMD ["run"]

# --target prebuilt: the binary built on the host (BINARY, relative to the context).
FROM runtime AS prebuilt
ARG BINARY=target/release/credrotd
COPY ${BINARY} /usr/local/bin/credrotd

# Default target: the binary from the build stage.
FROM runtime
COPY --from=build /src/target/release/credrotd /usr/local/bin/credrotd
