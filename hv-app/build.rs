//! Links hv-app with `linker.ld` when it is built for bare metal
//! (`target_os = "none"`); host builds need nothing.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=build.rs");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    // A fixed-address image: not position independent, 4 KiB segment
    // alignment so that the file is a linear copy of memory from 1 MiB.
    for arg in [
        format!("-T{dir}/linker.ld"),
        "--no-pie".to_string(),
        "-zmax-page-size=4096".to_string(),
    ] {
        println!("cargo:rustc-link-arg-bin=hv-app={arg}");
    }
}
