//! `codexmesh`: the control plane's command line (all logic lives in the library).

fn main() -> std::process::ExitCode {
    codexmesh::cli::main()
}
