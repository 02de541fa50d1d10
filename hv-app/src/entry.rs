//! The Multiboot v1 entry: the header, the 32-bit boot code that switches to
//! long mode, and the first Rust function.
//!
//! The loader (QEMU `-kernel`, GRUB) enters `_start32` in 32-bit protected
//! mode, paging off, EAX = `0x2BADB002`, EBX = physical address of the boot
//! information (Multiboot spec 3.2). The code then:
//!
//! 1. checks EAX (a wrong value ends the run: QEMU status 5);
//! 2. zeroes `.bss` and takes the boot stack. The loader keeps its boot
//!    information and modules out of `load_addr..bss_end_addr` (QEMU puts
//!    the information below 1 MiB, the modules from the first page after
//!    `bss_end_addr`), so this cannot clobber them;
//! 3. checks CPUID 0x8000_0001 EDX.LM (absent: QEMU status 7);
//! 4. builds page tables in `.bss` identity-mapping the first 4 GiB with
//!    2 MiB pages (PML4[0] -> PDPT[0..4] -> 4 page directories);
//! 5. sets CR4.PAE, CR3, EFER.LME (and EFER.NXE when CPUID says NX), then
//!    CR0.PG|WP, which activates long mode (Intel SDM vol. 3 section 10.8.5,
//!    AMD APM vol. 2 section 14.6.1);
//! 6. loads a 64-bit GDT and far-jumps to 64-bit code, which loads the data
//!    segments and calls [`rust_entry`] with the saved EAX and EBX.

use core::arch::global_asm;

use hv_app::multiboot::{BOOTLOADER_MAGIC, HEADER_MAGIC, HV_APP_HEADER_FLAGS, header_checksum};
use hv_app::port::{ExitCode, QEMU_DEBUG_EXIT_PORT};

/// Size of the boot stack.
const BOOT_STACK_SIZE: usize = 64 * 1024;

global_asm!(
    r#"
    /* Multiboot v1 header with address fields (spec 3.1). The linker script
       puts it first in .text, at file offset 0x1000 < 8 KiB. */
    .section .multiboot_header, "a"
    .balign 4
multiboot_header:
    .long {mb_magic}
    .long {mb_flags}
    .long {mb_checksum}
    .long multiboot_header      /* header_addr */
    .long __image_start         /* load_addr */
    .long __load_end            /* load_end_addr */
    .long __bss_end             /* bss_end_addr */
    .long _start32              /* entry_addr */

    .section .text.boot, "ax"
    .code32
    .global _start32
_start32:
    cli
    cld
    movl %eax, %esi             /* esi = loader magic */
    movl %ebx, %ebp             /* ebp = boot information address */
    movl ${code_bad_magic}, %eax
    cmpl ${loader_magic}, %esi
    jne .Lfail32

    /* Zero .bss: page tables, stack and Rust statics. */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb
    movl $boot_stack_top, %esp

    /* Long mode? CPUID 0x80000001 EDX bit 29. Keep EDX for NX (bit 20). */
    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb .Lno_long_mode
    movl $0x80000001, %eax
    cpuid
    testl $(1 << 29), %edx
    jz .Lno_long_mode
    movl %edx, %edi

    /* PML4[0] = PDPT | present | writable */
    movl $boot_pdpt, %eax
    orl $0x3, %eax
    movl %eax, boot_pml4
    /* PDPT[i] = PD_i | present | writable, i = 0..4 */
    movl $boot_pd, %eax
    orl $0x3, %eax
    xorl %ecx, %ecx
.Lfill_pdpt:
    movl %eax, boot_pdpt(,%ecx,8)
    addl $0x1000, %eax
    incl %ecx
    cmpl $4, %ecx
    jb .Lfill_pdpt
    /* PD entry i = (i << 21) | page size | writable | present, i = 0..2048;
       the high dwords stay 0 (.bss was zeroed). */
    xorl %ecx, %ecx
.Lfill_pd:
    movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, boot_pd(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb .Lfill_pd

    movl %cr4, %eax
    orl $(1 << 5), %eax         /* CR4.PAE */
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx      /* IA32_EFER */
    rdmsr
    orl $(1 << 8), %eax         /* EFER.LME */
    testl $(1 << 20), %edi
    jz .Lno_nx
    orl $(1 << 11), %eax        /* EFER.NXE */
.Lno_nx:
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax       /* CR0.PG | CR0.WP | CR0.PE */
    movl %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $.Llong_mode

.Lno_long_mode:
    movl ${code_no_long_mode}, %eax
.Lfail32:
    /* QEMU isa-debug-exit: exit status (eax << 1) | 1. Elsewhere: halt. */
    outl %eax, ${exit_port}
.Lhalt32:
    cli
    hlt
    jmp .Lhalt32

    .code64
.Llong_mode:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    leaq boot_stack_top(%rip), %rsp
    movl %esi, %edi             /* arg 0: magic (zero-extended) */
    movl %ebp, %esi             /* arg 1: boot information address */
    xorl %ebp, %ebp             /* end of frame chain */
    call {entry}
    ud2

    /* GDT: null, 0x08 = 64-bit code DPL 0, 0x10 = data DPL 0. Accessed bits
       are preset so the CPU never writes to the table. */
    .section .data.boot_gdt, "aw"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
boot_gdt_end:
    .balign 4
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .bss.boot_page_tables, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4

    .section .bss.boot_stack, "aw", @nobits
    .balign 16
boot_stack:
    .skip {stack_size}
boot_stack_top:
"#,
    mb_magic = const HEADER_MAGIC,
    mb_flags = const HV_APP_HEADER_FLAGS.bits(),
    mb_checksum = const header_checksum(HV_APP_HEADER_FLAGS.bits()),
    loader_magic = const BOOTLOADER_MAGIC,
    code_bad_magic = const ExitCode::BadBootMagic as u32,
    code_no_long_mode = const ExitCode::NoLongMode as u32,
    exit_port = const QEMU_DEBUG_EXIT_PORT,
    stack_size = const BOOT_STACK_SIZE,
    entry = sym rust_entry,
    options(att_syntax)
);

/// The first Rust code, called by the 64-bit boot code on the boot stack
/// with the loader's EAX (`magic`) and EBX (`info`).
extern "C" fn rust_entry(magic: u32, info: u32) -> ! {
    let _ = crate::hv_main(crate::Entry::Multiboot {
        magic,
        info_addr: info,
    });
    // hv_main never returns from a Multiboot entry (it powers off).
    crate::pio::power_off(hv_app::port::ExitCode::Failure)
}
