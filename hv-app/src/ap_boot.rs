//! The application processors' way from real mode to Rust.
//!
//! A STARTUP IPI starts an AP in 16-bit real mode at `CS:IP = (vector <<
//! 8):0000`, that is at the physical page `vector << 12` below 1 MiB, with
//! CR0 = 0x6000_0010 (caches off, no protection). Only the first, 16-bit
//! part of the path must live there: [`install`] copies
//! `ap_trampoline_start..ap_trampoline_end` to that page. It needs no
//! patching, because it refers to its own bytes only relative to CS and to
//! everything else by absolute addresses in the image (which is below
//! 4 GiB):
//!
//! 1. 16-bit, in the low page: `cli`, DS = CS, `lgdtl` of a descriptor
//!    kept in the page that points at [`ap_gdt`] in the image, CR0 = PE
//!    (which also clears CD and NW), far jump to the 32-bit code segment;
//! 2. 32-bit, in the image: data segments, CR4.PAE, CR3 = [`AP_CR3`] (the
//!    BSP's page tables), EFER |= [`AP_EFER`] (LME, NXE as on the BSP),
//!    CR0 = [`AP_CR0`] (the BSP's: PG, WP, PE), far jump to 64-bit code —
//!    the same steps as the BSP's entry (SDM vol. 3A section 10.8.5);
//! 3. 64-bit: CR4 = [`AP_CR4`] (the BSP's), the initial APIC ID from CPUID
//!    leaf 1 picks this AP's stack from [`AP_STACK_TOPS`] (an AP without
//!    one halts), then `crate::smp::ap_entry(apic_id)`.
//!
//! The BSP writes the statics before it sends the INIT IPI and starts
//! the APs one at a time; the APs only read them. An AP that answers late
//! still finds its own stack, so a slow AP cannot take another's.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicU64};

use hv_app::{Error, Result};

/// One stack slot per 8-bit initial APIC ID.
pub const STACK_SLOTS: usize = 256;

/// The value the APs load into CR3 (the BSP's, below 4 GiB).
pub static AP_CR3: AtomicU32 = AtomicU32::new(0);
/// The value the APs load into CR0 to turn paging on (the BSP's).
pub static AP_CR0: AtomicU32 = AtomicU32::new(0);
/// The bits the APs set in EFER (LME, plus NXE if the BSP has it).
pub static AP_EFER: AtomicU32 = AtomicU32::new(0);
/// The value the APs load into CR4 once in 64-bit mode (the BSP's).
pub static AP_CR4: AtomicU64 = AtomicU64::new(0);
/// The top of each AP's stack, indexed by its initial APIC ID; 0 for a
/// CPU hv-app does not start.
pub static AP_STACK_TOPS: [AtomicU64; STACK_SLOTS] = [const { AtomicU64::new(0) }; STACK_SLOTS];

/// Selector of the 32-bit code segment in [`ap_gdt`].
const AP_CODE32: u16 = 0x08;
/// Selector of the data segment in [`ap_gdt`].
const AP_DATA: u16 = 0x10;
/// Selector of the 64-bit code segment in [`ap_gdt`].
const AP_CODE64: u16 = 0x18;

global_asm!(
    r#"
    /* Copied to the trampoline page; runs there in real mode. */
    .section .text.ap_trampoline, "ax"
    .balign 16
    .global ap_trampoline_start
    .code16
ap_trampoline_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl ap_tramp_gdtr - ap_trampoline_start
    movl $1, %eax               /* CR0.PE only: CD and NW (set by INIT) go */
    movl %eax, %cr0
    ljmpl ${code32}, $ap_start32
    .balign 4
ap_tramp_gdtr:
    .word ap_gdt_end - ap_gdt - 1
    .long ap_gdt
    .global ap_trampoline_end
ap_trampoline_end:

    /* Runs in place, in the image. */
    .section .text.ap_boot, "ax"
    .code32
ap_start32:
    movw ${data}, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $(1 << 5), %eax         /* CR4.PAE */
    movl %eax, %cr4
    movl {cr3}, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx      /* IA32_EFER */
    rdmsr
    orl {efer}, %eax
    wrmsr
    movl {cr0}, %eax            /* PG | WP | PE: long mode is active */
    movl %eax, %cr0
    ljmp ${code64}, $ap_start64

    .code64
ap_start64:
    movw ${data}, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    movq {cr4}(%rip), %rax
    movq %rax, %cr4
    movl $1, %eax
    cpuid
    shrl $24, %ebx              /* initial APIC ID, zero-extended */
    leaq {stacks}(%rip), %rax
    movq (%rax,%rbx,8), %rsp
    testq %rsp, %rsp
    jz 1f
    movl %ebx, %edi             /* arg 0: the APIC ID */
    xorl %ebp, %ebp
    call {entry}
1:
    cli
    hlt
    jmp 1b

    /* null, 0x08 = 32-bit code, 0x10 = data, 0x18 = 64-bit code; accessed
       bits preset so the CPU never writes to the table. */
    .section .rodata.ap_gdt, "a"
    .balign 16
    .global ap_gdt
ap_gdt:
    .quad 0
    .quad 0x00cf9b000000ffff
    .quad 0x00cf93000000ffff
    .quad 0x00af9b000000ffff
ap_gdt_end:
"#,
    code32 = const AP_CODE32,
    data = const AP_DATA,
    code64 = const AP_CODE64,
    cr3 = sym AP_CR3,
    cr0 = sym AP_CR0,
    efer = sym AP_EFER,
    cr4 = sym AP_CR4,
    stacks = sym AP_STACK_TOPS,
    entry = sym crate::smp::ap_entry,
    options(att_syntax)
);

unsafe extern "C" {
    /// First byte of the real-mode part.
    static ap_trampoline_start: u8;
    /// End of the real-mode part.
    static ap_trampoline_end: u8;
    /// The GDT of the APs' boot path (32-bit code, data, 64-bit code).
    static ap_gdt: u8;
}

/// Bytes of the real-mode part that [`install`] copies.
pub fn trampoline_len() -> u64 {
    (&raw const ap_trampoline_end) as u64 - (&raw const ap_trampoline_start) as u64
}

/// Copies the real-mode part to `page` (a free page below 1 MiB that the
/// caller reserved for it).
///
/// # Safety
///
/// `[page, page + 4096)` is identity-mapped RAM that nothing else uses,
/// now or later (an AP may run from it at any time after a STARTUP IPI).
pub unsafe fn install(page: u64) -> Result {
    let len = trampoline_len();
    if len > 4096 || page == 0 || page % 4096 != 0 {
        return Err(Error::BadStartPage(page));
    }
    // SAFETY: the source is the image's own code; the destination is the
    // page the caller gives us alone, which does not overlap the image
    // (below 1 MiB; the image is linked at 1 MiB).
    unsafe {
        core::ptr::copy_nonoverlapping(
            &raw const ap_trampoline_start,
            page as *mut u8,
            len as usize,
        );
    }
    log::debug!(
        "AP trampoline: {len} bytes at {page:#x}, boot GDT at {:#x}",
        (&raw const ap_gdt) as u64
    );
    Ok(())
}
