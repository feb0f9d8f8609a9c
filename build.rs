//! Compiles `proto/ivy.proto` with the vendored protoc, so no system protoc is
//! needed, and writes its file descriptor set for gRPC server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/ivy.proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("ivy_descriptor.bin"))
        .compile_protos(&["proto/ivy.proto"], &["proto"])?;
    Ok(())
}
