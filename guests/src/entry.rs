//! The Multiboot v1 entry: the header, the 32-bit boot code that switches to
//! long mode, and the first Rust function.
//!
//! The loader (QEMU `-kernel`, GRUB, the axhv guest loader) enters
//! `guest_start32` in 32-bit protected mode, paging off, EAX = `0x2BADB002`,
//! EBX = physical address of the boot information (Multiboot spec 3.2). The
//! code then:
//!
//! 1. checks EAX (a wrong value ends the run with
//!    [`EXIT_BAD_MAGIC`]);
//! 2. zeroes `.bss` and takes the boot stack (the loader keeps the boot
//!    information out of `load_addr..bss_end_addr`);
//! 3. checks CPUID 0x8000_0001 EDX.LM (absent:
//!    [`EXIT_NO_LONG_MODE`]);
//! 4. builds page tables in `.bss` identity-mapping the first 4 GiB with
//!    2 MiB pages (`PML4[0] -> PDPT[0..4]` -> 4 page directories); the fourth
//!    GiB, where devices live (the MMIO test device at 0xFEB0_0000), is
//!    mapped uncached (PCD | PWT);
//! 5. sets CR4.PAE, CR3, EFER.LME (and EFER.NXE when CPUID says NX), then
//!    CR0.PG | WP, which activates long mode (Intel SDM vol. 3A "Initializing
//!    IA-32e Mode", AMD APM vol. 2 section 14.6.1);
//! 6. loads a 64-bit GDT and far-jumps to 64-bit code, which loads the data
//!    segments and calls `rt_start` with the saved EBX.

use core::arch::global_asm;

use crate::exit::{DEBUG_EXIT_PORT, EXIT_BAD_MAGIC, EXIT_NO_LONG_MODE};
use crate::multiboot::{BOOTLOADER_MAGIC, GUEST_HEADER_FLAGS, HEADER_MAGIC, header_checksum};

/// Size of the boot stack, which stays the stack of the whole run.
const BOOT_STACK_SIZE: usize = 64 * 1024;

/// Page directory flags of a 2 MiB identity page: present, writable, PS.
const PDE_LARGE_RW: u32 = 0x83;
/// PCD | PWT: uncached, for the device GiB.
const PDE_UNCACHED: u32 = 0x18;
/// First page directory entry of the fourth GiB (3 GiB / 2 MiB).
const FIRST_DEVICE_PDE: u32 = 1536;

global_asm!(
    r#"
    /* Multiboot v1 header with address fields (spec 3.1). The linker script
       puts it first in .text, at file offset 0x1000 < 8 KiB. */
    .section .multiboot_header, "a"
    .balign 4
guest_multiboot_header:
    .long {mb_magic}
    .long {mb_flags}
    .long {mb_checksum}
    .long guest_multiboot_header    /* header_addr */
    .long __guest_image_start       /* load_addr */
    .long __guest_load_end          /* load_end_addr */
    .long __guest_bss_end           /* bss_end_addr */
    .long guest_start32             /* entry_addr */

    .section .text.boot, "ax"
    .code32
    .global guest_start32
guest_start32:
    cli
    cld
    movl %ebx, %ebp             /* ebp = boot information address */
    movb ${code_bad_magic}, %dl
    cmpl ${loader_magic}, %eax
    jne .Lguest_fail32

    /* Zero .bss: page tables, stack and Rust statics. */
    movl $__guest_bss_start, %edi
    movl $__guest_bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb
    movl $guest_boot_stack_top, %esp

    /* Long mode? CPUID 0x80000001 EDX bit 29. Keep EDX for NX (bit 20). */
    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb .Lguest_no_long_mode
    movl $0x80000001, %eax
    cpuid
    testl $(1 << 29), %edx
    jz .Lguest_no_long_mode
    movl %edx, %esi

    /* PML4[0] = PDPT | present | writable */
    movl $guest_pdpt, %eax
    orl $0x3, %eax
    movl %eax, guest_pml4
    /* PDPT[i] = PD_i | present | writable, i = 0..4 */
    movl $guest_pd, %eax
    orl $0x3, %eax
    xorl %ecx, %ecx
.Lguest_fill_pdpt:
    movl %eax, guest_pdpt(,%ecx,8)
    addl $0x1000, %eax
    incl %ecx
    cmpl $4, %ecx
    jb .Lguest_fill_pdpt
    /* PD entry i = (i << 21) | PS | writable | present, i = 0..2048, plus
       PCD | PWT from 3 GiB on; the high dwords stay 0 (.bss was zeroed). */
    xorl %ecx, %ecx
.Lguest_fill_pd:
    movl %ecx, %eax
    shll $21, %eax
    orl ${pde_large_rw}, %eax
    cmpl ${first_device_pde}, %ecx
    jb .Lguest_cached
    orl ${pde_uncached}, %eax
.Lguest_cached:
    movl %eax, guest_pd(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb .Lguest_fill_pd

    movl %cr4, %eax
    orl $(1 << 5), %eax         /* CR4.PAE */
    movl %eax, %cr4
    movl $guest_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx      /* IA32_EFER */
    rdmsr
    orl $(1 << 8), %eax         /* EFER.LME */
    testl $(1 << 20), %esi
    jz .Lguest_no_nx
    orl $(1 << 11), %eax        /* EFER.NXE */
.Lguest_no_nx:
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax       /* CR0.PG | CR0.WP | CR0.PE */
    movl %eax, %cr0

    lgdt guest_gdt_ptr
    ljmp $0x08, $.Lguest_long_mode

.Lguest_no_long_mode:
    movb ${code_no_long_mode}, %dl
.Lguest_fail32:
    /* Debug-exit device: status (code << 1) | 1. Elsewhere: halt. */
    movb %dl, %al
    outb %al, ${exit_port}
.Lguest_halt32:
    cli
    hlt
    jmp .Lguest_halt32

    .code64
.Lguest_long_mode:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    leaq guest_boot_stack_top(%rip), %rsp
    movl %ebp, %edi             /* arg 0: boot information address */
    xorl %ebp, %ebp             /* end of frame chain */
    call {start}
    ud2

    /* GDT: null, 0x08 = 64-bit code DPL 0, 0x10 = data DPL 0. Accessed bits
       are preset so the CPU never writes to the table. */
    .section .rodata.guest_gdt, "a"
    .balign 16
guest_gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
guest_gdt_end:
    .balign 4
guest_gdt_ptr:
    .word guest_gdt_end - guest_gdt - 1
    .long guest_gdt

    .section .bss.guest_page_tables, "aw", @nobits
    .balign 4096
guest_pml4:
    .skip 4096
guest_pdpt:
    .skip 4096
guest_pd:
    .skip 4096 * 4

    .section .bss.guest_boot_stack, "aw", @nobits
    .balign 16
guest_boot_stack:
    .skip {stack_size}
guest_boot_stack_top:
"#,
    mb_magic = const HEADER_MAGIC,
    mb_flags = const GUEST_HEADER_FLAGS,
    mb_checksum = const header_checksum(GUEST_HEADER_FLAGS),
    loader_magic = const BOOTLOADER_MAGIC,
    code_bad_magic = const EXIT_BAD_MAGIC,
    code_no_long_mode = const EXIT_NO_LONG_MODE,
    exit_port = const DEBUG_EXIT_PORT,
    pde_large_rw = const PDE_LARGE_RW,
    pde_uncached = const PDE_UNCACHED,
    first_device_pde = const FIRST_DEVICE_PDE,
    stack_size = const BOOT_STACK_SIZE,
    start = sym rt_start,
    options(att_syntax)
);

unsafe extern "C" {
    /// The guest's main function, defined by [`entry!`](crate::entry!).
    fn __axhv_guest_main(mb_info: u32) -> !;
}

/// The first Rust code, called by the 64-bit boot code on the boot stack
/// with the loader's EBX: sets up the console and the exception handlers,
/// then runs the guest.
extern "C" fn rt_start(mb_info: u32) -> ! {
    crate::console::init();
    crate::idt::init();
    // SAFETY: `entry!` defines the function with exactly this signature;
    // the runtime calls it once, with the loader's boot information address.
    unsafe { __axhv_guest_main(mb_info) }
}
