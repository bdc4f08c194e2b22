//! Builds the pod network shim (shim/pod_network.c) as a shared object; the kubelet embeds it
//! and writes it to its state directory, so it needs no compiler at run time.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "shim/pod_network.c";
    println!("cargo:rerun-if-changed={source}");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("libpgop_pod_network.so");
    let compiler = cc::Build::new().get_compiler();
    let status = Command::new(compiler.path())
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(source)
        .arg("-ldl")
        .status()
        .expect("running the C compiler for the pod network shim");
    assert!(status.success(), "compiling {source} failed");
}
