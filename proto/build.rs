fn main() -> Result<(), Box<dyn std::error::Error>> {
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    println!("cargo:rerun-if-changed=codexmesh.proto");
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .compile_protos(&["codexmesh.proto"], &["."])?;
    Ok(())
}
