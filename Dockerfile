# Builds the control plane binary and the wasm module. Used by docker-compose.yml.
# (No Docker engine runs on the development machines, so this file is not exercised by the tests.)
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler && rm -rf /var/lib/apt/lists/*
RUN rustup target add wasm32-wasip1
WORKDIR /src
COPY . .
RUN cargo build --locked --release -p codexmesh-control-plane \
 && cargo build --locked --release -p codexmesh-filter --target wasm32-wasip1

FROM debian:bookworm-slim AS control-plane
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/codexmesh /usr/local/bin/codexmesh
COPY --from=build /src/target/wasm32-wasip1/release/codexmesh_filter.wasm /opt/codexmesh/codexmesh_filter.wasm
WORKDIR /var/lib/codexmesh
ENTRYPOINT ["codexmesh"]
CMD ["serve"]
