//! Links hv-app with `linker.ld` (or `linker-linux.ld` when `AXHV_LINK=linux`)
//! when it is built for bare metal (`target_os = "none"`); host builds need
//! nothing.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=linker-linux.ld");
    println!("cargo:rerun-if-env-changed=AXHV_LINK");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    // A fixed-address image: not position independent, 4 KiB segment
    // alignment so that the file is a linear copy of memory from 1 MiB.
    // AXHV_LINK=linux links the Type-1.5 variant at the reserved region
    // (linker-linux.ld); anything else, or nothing, the Multiboot image.
    let script = match env::var("AXHV_LINK").as_deref() {
        Ok("linux") => "linker-linux.ld",
        _ => "linker.ld",
    };
    for arg in [
        format!("-T{dir}/{script}"),
        "--no-pie".to_string(),
        "-zmax-page-size=4096".to_string(),
    ] {
        println!("cargo:rustc-link-arg-bin=hv-app={arg}");
    }
}
