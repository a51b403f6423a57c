//! Build steps: the gRPC code and descriptor set from proto/ (protox: no protoc binary needed),
//! and the link set-up for tch: a RUNPATH to the venv's libtorch so binaries and tests run
//! without LD_LIBRARY_PATH, and libtorch_cuda in DT_NEEDED with the `cuda` feature (the linker
//! would otherwise drop it as unused, and libtorch would find no CUDA backend). libtorch itself
//! comes from PyPI's torch wheel, installed by scripts/setup.sh (README, "Two commands").
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=proto");
    let files = ["ewtune/v1/datasets.proto", "ewtune/v1/jobs.proto", "ewtune/v1/budget.proto", "ewtune/v1/audits.proto"];
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ewtune_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;

    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    Ok(())
}
