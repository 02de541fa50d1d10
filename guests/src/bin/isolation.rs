//! `isolation`: the guest may use all of its own memory, and nothing else.
//!
//! (a) Writes a pattern over GPA 0x100000..0x120000 (in the guest this is
//! just its own RAM; on a Type-1 host that range of host physical memory
//! holds the hypervisor image) and reads it back.
//! (b) Reads a u64 at GPA 0x4000_0000, outside the guest's 16 MiB. The
//! guest page tables map it (identity, 4 GiB), so the page walk succeeds
//! and the access reaches the nested page table: the hypervisor must stop
//! the VM there. If the read returns, the guest prints FAIL and exits 1.

#![no_std]
#![no_main]

use core::ptr::{read_volatile, write_volatile};

use guest_rt::{EXIT_FAIL, entry, exit, println};

entry!(main);

/// Start of the range part (a) overwrites.
const OWN_START: u64 = 0x10_0000;
/// End (exclusive) of the range part (a) overwrites.
const OWN_END: u64 = 0x12_0000;
/// The address part (b) reads: 1 GiB, outside guest memory.
const OUTSIDE: u64 = 0x4000_0000;

/// The value written at `addr`: differs for every quadword and from the
/// address itself, so a dropped or misplaced write shows.
const fn pattern(addr: u64) -> u64 {
    addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xa5a5_5a5a_0f0f_f0f0
}

/// Part (a): write and read back the pattern; returns the mismatch count.
fn own_memory() -> u64 {
    for addr in (OWN_START..OWN_END).step_by(8) {
        // SAFETY: 0x100000..0x120000 is guest RAM that nothing else uses:
        // the image and its stack start at 0x200000, and the boot
        // information is not read after this point.
        unsafe { write_volatile(addr as *mut u64, pattern(addr)) };
    }
    let mut bad = 0;
    for addr in (OWN_START..OWN_END).step_by(8) {
        // SAFETY: as above; the quadword was just written.
        let got = unsafe { read_volatile(addr as *const u64) };
        if got != pattern(addr) {
            if bad < 4 {
                println!(
                    "isolation: FAIL at {addr:#x}: expected {:#x}, got {got:#x}",
                    pattern(addr)
                );
            }
            bad += 1;
        }
    }
    bad
}

/// The guest's main function.
fn main(_mb_info: u32) -> ! {
    let bad = own_memory();
    if bad != 0 {
        println!("isolation: FAIL {bad} quadwords of GPA {OWN_START:#x}..{OWN_END:#x} differ");
        exit(EXIT_FAIL);
    }
    println!("isolation: wrote over GPA {OWN_START:#x} ok");

    println!("isolation: reading GPA {OUTSIDE:#x} (outside guest memory)");
    // SAFETY: the address is identity mapped by the runtime's page tables,
    // so the access is well defined for the CPU: either the hypervisor
    // stops the VM (the expected outcome) or a value comes back.
    let v = unsafe { read_volatile(OUTSIDE as *const u64) };
    println!("isolation: FAIL read returned {v:#x}");
    exit(EXIT_FAIL)
}
