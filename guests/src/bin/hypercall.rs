//! `hypercall`: checks the hypercall ABI. `HC_VERSION` (0) must return
//! `0x0001_0000` (ABI 1.0) and an unknown number (0xdead) must return
//! `-ENOSYS` (-38). Exit 0 when both hold, 1 otherwise.
//!
//! Without a hypervisor the hypercall instruction raises #UD: the runtime
//! reports exception 6 and exits with 0x7e.

#![no_std]
#![no_main]

use guest_rt::hypercall::{ABI_VERSION, ENOSYS, HC_VERSION, hypercall, instruction};
use guest_rt::{EXIT_FAIL, EXIT_PASS, cpu, entry, exit, println};

entry!(main);

/// A hypercall number no hypervisor version defines.
const HC_UNKNOWN: u64 = 0xdead;

/// The guest's main function.
fn main(_mb_info: u32) -> ! {
    println!(
        "hypercall: CPU vendor {}, using {}",
        cpu::vendor(),
        instruction().mnemonic()
    );

    let version = hypercall(HC_VERSION, 0, 0, 0);
    if version != ABI_VERSION {
        println!("hypercall: FAIL version: expected {ABI_VERSION:#010x}, got {version:#x}");
        exit(EXIT_FAIL);
    }
    println!("hypercall: version {version:#010x}");

    let unknown = hypercall(HC_UNKNOWN, 1, 2, 3) as i64;
    if unknown != -ENOSYS {
        println!(
            "hypercall: FAIL unknown nr {HC_UNKNOWN:#x}: expected {}, got {unknown} ({:#x})",
            -ENOSYS, unknown as u64
        );
        exit(EXIT_FAIL);
    }
    println!("hypercall: unknown -> {unknown}");

    println!("hypercall: ok");
    exit(EXIT_PASS)
}
