# Placeholder until the operations issue: a multi-stage build is planned (build in
# rust:bookworm, run as a non-root user in a minimal image with a HEALTHCHECK).
# This minimal version builds and runs the binary; it has not been built on the
# development machines, which have no container engine.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 credrotd
COPY --from=build /src/target/release/credrotd /usr/local/bin/credrotd
USER credrotd
ENTRYPOINT ["/usr/local/bin/credrotd"]
CMD ["run"]
