//! `mmio`: exercises MMIO instruction emulation against the hypervisor's
//! test device, a 4 KiB window at GPA 0xFEB0_0000 that behaves like RAM
//! (writes store bytes, reads return them, a fresh window reads 0).
//!
//! Every access is one inline-assembly instruction, so the exact encodings
//! the hypervisor has to decode are known: register stores and loads of 8,
//! 16, 32 and 64 bits (loads into a preset RAX, to check that 8/16-bit
//! loads keep the upper bits and 32-bit loads clear them), immediate stores
//! (8, 16, 32 bits, and 64 bits sign-extended from imm32), `movzx`, `movsx`
//! and `movsxd` with the sign bit set and clear, an R9/R10 pair (REX
//! prefixes), and 32-bit displacements. Read-modify-write instructions
//! (`add [mem], imm`) are left out: the hypervisor's MMIO decoder handles
//! plain moves only.
//!
//! Without the device (plain QEMU) the fresh-window reads and the readbacks
//! fail; the guest lists each failure and exits 1.

#![no_std]
#![no_main]

use guest_rt::{EXIT_FAIL, EXIT_PASS, entry, exit, println};

entry!(main);

/// Guest physical address of the test device's window.
const TEST_DEV: u64 = 0xfeb0_0000;

/// What RAX holds before each load: the upper bits a narrow load must keep.
const PRESET: u64 = 0xa1a2_a3a4_a5a6_a7a8;

/// Counts of the run.
#[derive(Debug, Default)]
struct Tally {
    /// MMIO instructions executed.
    accesses: u32,
    /// Loads that returned a wrong value.
    failures: u32,
}

impl Tally {
    /// Records the result of the load `insn`.
    fn expect(&mut self, insn: &str, got: u64, expected: u64) {
        if got != expected {
            println!("mmio: FAIL `{insn}`: expected {expected:#018x}, got {got:#018x}");
            self.failures += 1;
        }
    }
}

/// Runs the MMIO instruction `$insn` once with RDI = [`TEST_DEV`] and
/// RAX = `$rax`, and evaluates to RAX afterwards.
macro_rules! access {
    ($tally:ident, $insn:literal, $rax:expr) => {{
        let mut rax: u64 = $rax;
        // SAFETY: the instruction accesses at most 8 bytes inside the
        // 4 KiB device window at TEST_DEV, which the runtime maps (identity,
        // uncached) and which is no Rust object; it changes only RAX.
        unsafe {
            core::arch::asm!($insn, in("rdi") TEST_DEV, inout("rax") rax,
                options(nostack, preserves_flags));
        }
        $tally.accesses += 1;
        rax
    }};
}

/// A store: runs `$insn` with RAX = `$value`.
macro_rules! store {
    ($tally:ident, $insn:literal, $value:expr) => {{
        let _ = access!($tally, $insn, $value);
    }};
}

/// A load: runs `$insn` with RAX = [`PRESET`] and checks RAX afterwards.
macro_rules! load {
    ($tally:ident, $insn:literal, $expected:expr) => {{
        let got = access!($tally, $insn, PRESET);
        $tally.expect($insn, got, $expected);
    }};
}

/// Stores R9 and loads it back into R10: the REX.R register encodings.
fn high_registers(t: &mut Tally) {
    const INSN: &str = "mov r10, qword ptr [rdi + 0x20]";
    let value: u64 = 0xfedc_ba98_7654_3210;
    let got: u64;
    // SAFETY: as in `access!`: 8 bytes at TEST_DEV + 0x20, inside the
    // mapped device window; only R10 changes.
    unsafe {
        core::arch::asm!(
            "mov qword ptr [rdi + 0x20], r9",
            "mov r10, qword ptr [rdi + 0x20]",
            in("rdi") TEST_DEV, in("r9") value, out("r10") got,
            options(nostack, preserves_flags));
    }
    t.accesses += 2;
    t.expect(INSN, got, value);
}

/// The guest's main function.
fn main(_mb_info: u32) -> ! {
    println!("mmio: test device at {TEST_DEV:#x}");
    let mut t = Tally::default();

    // A fresh window reads 0; a 32-bit load clears RAX[63:32].
    load!(t, "mov rax, qword ptr [rdi]", 0);
    load!(t, "mov eax, dword ptr [rdi + 0xffc]", 0);

    // Register stores and loads of each width. Narrow loads keep the
    // upper bits of RAX.
    store!(t, "mov byte ptr [rdi], al", 0x5a);
    load!(t, "mov al, byte ptr [rdi]", (PRESET & !0xff) | 0x5a);
    store!(t, "mov word ptr [rdi + 2], ax", 0xbeef);
    load!(t, "mov ax, word ptr [rdi + 2]", (PRESET & !0xffff) | 0xbeef);
    store!(t, "mov dword ptr [rdi + 4], eax", 0xdead_beef);
    load!(t, "mov eax, dword ptr [rdi + 4]", 0xdead_beef);
    store!(t, "mov qword ptr [rdi + 0x10], rax", 0x0123_4567_89ab_cdef);
    load!(t, "mov rax, qword ptr [rdi + 0x10]", 0x0123_4567_89ab_cdef);

    // Immediate stores; the 64-bit one sign-extends its imm32.
    store!(t, "mov byte ptr [rdi + 1], 0x80", 0);
    store!(t, "mov word ptr [rdi + 0xc], 0x8001", 0);
    store!(t, "mov dword ptr [rdi + 8], 0x12345678", 0);
    store!(t, "mov qword ptr [rdi + 0x18], -2", 0);

    // The bytes landed where they belong (little endian).
    load!(t, "mov rax, qword ptr [rdi]", 0xdead_beef_beef_805a);
    load!(t, "mov rax, qword ptr [rdi + 8]", 0x0000_8001_1234_5678);
    load!(t, "mov rax, qword ptr [rdi + 0x18]", 0xffff_ffff_ffff_fffe);

    // Zero and sign extension, with the sign bit set and clear.
    load!(t, "movzx eax, byte ptr [rdi + 1]", 0x80);
    load!(t, "movzx eax, word ptr [rdi + 6]", 0xdead);
    load!(t, "movsx rax, byte ptr [rdi + 1]", 0xffff_ffff_ffff_ff80);
    load!(t, "movsx rax, byte ptr [rdi]", 0x5a);
    load!(t, "movsx rax, word ptr [rdi + 2]", 0xffff_ffff_ffff_beef);
    load!(t, "movsx eax, word ptr [rdi + 0xc]", 0x0000_0000_ffff_8001);
    load!(t, "movsxd rax, dword ptr [rdi + 4]", 0xffff_ffff_dead_beef);

    // The last dword of the window, and the REX registers.
    store!(t, "mov dword ptr [rdi + 0xffc], eax", 0xcafe_f00d);
    load!(t, "mov eax, dword ptr [rdi + 0xffc]", 0xcafe_f00d);
    high_registers(&mut t);

    if t.failures != 0 {
        println!(
            "mmio: FAIL {} wrong values in {} accesses",
            t.failures, t.accesses
        );
        exit(EXIT_FAIL);
    }
    println!("mmio: {} accesses ok", t.accesses);
    exit(EXIT_PASS)
}
