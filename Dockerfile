# credrotd container image: build, then a minimal runtime as a non-root user.
#   docker build -t credrotd .
#   docker run -v ./inventory.yaml:/etc/credrotd/inventory.yaml:ro credrotd
# (Not built on the development machines, which have no container engine; the
# sidecar mode itself is tested by running the binary directly.)

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so that code changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir daemon && echo 'fn main() {}' > daemon/main.rs && echo '' > daemon/lib.rs \
    && cargo fetch --locked
COPY daemon ./daemon
RUN cargo build --release --locked && strip target/release/credrotd

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/credrotd --create-home credrotd \
    && install -d -o credrotd -g credrotd -m 0750 /run/credrotd
COPY --from=build /src/target/release/credrotd /usr/local/bin/credrotd
USER 10001:10001
ENV CREDROTD_CONFIG=/etc/credrotd/inventory.yaml
# Alive means the admin socket answers (`admin:` must be set in the inventory).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/credrotd", "ctl", "health"]
ENTRYPOINT ["/usr/local/bin/credrotd", "--log-format", "json"]
CMD ["run"]
