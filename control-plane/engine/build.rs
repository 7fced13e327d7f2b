//! Rebuilds the engine when a file is added to or removed from `dashboard/`: rust-embed embeds
//! the files it finds when the crate compiles (an edit to a known file is tracked already, by the
//! `include_bytes!` it generates; a new file is not).
fn main() {
    println!("cargo:rerun-if-changed=dashboard");
}
