//! Links every guest with `linker.ld` when it is built for bare metal
//! (`target_os = "none"`); host builds (the runtime's unit tests) need
//! nothing.
//!
//! The images are fixed-address: not position independent, with 4 KiB
//! segment alignment so that the file is a linear copy of memory from
//! 0x200000, as the multiboot address fields promise.

use std::env;

fn main() {
    println!("cargo::rerun-if-changed=linker.ld");
    println!("cargo::rerun-if-changed=build.rs");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    for arg in [
        format!("-T{dir}/linker.ld"),
        "--no-pie".to_string(),
        "-zmax-page-size=4096".to_string(),
        // The entry lives in the runtime library's archive; make the linker
        // take it even when nothing else refers to its object file.
        "--undefined=guest_start32".to_string(),
    ] {
        println!("cargo::rustc-link-arg-bins={arg}");
    }
}
