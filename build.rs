//! Compiles `proto/ivy.proto` with the vendored protoc, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/ivy.proto");
    tonic_prost_build::configure().compile_protos(&["proto/ivy.proto"], &["proto"])?;
    Ok(())
}
