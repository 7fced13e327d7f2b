# Builds the control plane binary and the wasm module. Used by docker-compose.yml and
# deploy/kustomize (image `codexmesh`: `serve` runs as a non-root user; the gateway's init
# container copies /opt/codexmesh/codexmesh_filter.wasm out of it).
# No Docker engine runs on the development machines: the tests check the commands and paths
# this file uses against the build (tests/e2e/tests/deploy.rs), but the image is not built there.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler && rm -rf /var/lib/apt/lists/*
RUN rustup target add wasm32-wasip1
WORKDIR /src
COPY . .
# The same commands as scripts/build.sh with PROFILE=release (no test-only switches).
RUN cargo build --locked --release -p codexmesh \
 && cargo build --locked --release -p codexmesh-filter --target wasm32-wasip1

FROM debian:bookworm-slim AS control-plane
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 codexmesh \
 && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/codexmesh --no-create-home codexmesh \
 && install -d -o 65532 -g 65532 -m 0700 /var/lib/codexmesh
COPY --from=build /src/target/release/codexmesh /usr/local/bin/codexmesh
COPY --from=build /src/target/wasm32-wasip1/release/codexmesh_filter.wasm /opt/codexmesh/codexmesh_filter.wasm
USER 65532:65532
WORKDIR /var/lib/codexmesh
ENV CODEXMESH_DATA_DIR=/var/lib/codexmesh
EXPOSE 18090 18091
ENTRYPOINT ["codexmesh"]
CMD ["serve"]
