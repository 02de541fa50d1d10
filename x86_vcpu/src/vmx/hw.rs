//! The VMX instructions, on bare metal only (`target_os = "none"`).
//!
//! Each wrapper turns the VMX status flags into a `Result`: CF = 1 is
//! VMfailInvalid, ZF = 1 is VMfailValid with the number in the
//! VM-instruction error field (SDM 31.2).
//!
//! VM entry and exit go through one assembly routine,
//! `x86_vcpu_vmx_enter(regs, launched)`:
//!
//! 1. Push the callee-saved registers, RFLAGS (the caller's IF: VM exits
//!    clear RFLAGS) and `regs`; VMWRITE the stack pointer as HOST_RSP.
//! 2. Load the guest GPRs from `regs` (RSP and RIP come from the VMCS),
//!    then VMLAUNCH (first entry after VMCLEAR) or VMRESUME.
//! 3. If the instruction falls through, the entry failed (VMfailInvalid or
//!    VMfailValid): restore the host registers and return 1 or 2.
//! 4. A VM exit (or a VM-entry failure reported as an exit, exit reason
//!    bit 31) lands on `x86_vcpu_vmx_exit` (HOST_RIP) with RSP = HOST_RSP:
//!    store the guest GPRs into `regs`, pop what step 1 pushed, return 0.
//!
//! The processor loads CR0/CR3/CR4, the segment selectors, FS/GS/TR/GDTR/
//! IDTR bases, SYSENTER, PAT and EFER from the host-state area captured by
//! [`host_state`]; the GDTR and IDTR limits (set to 0xFFFF by the exit) are
//! reloaded by [`reload_descriptor_tables`]. Not switched: x87/SSE/AVX
//! state (the host is soft-float), DR0-DR3, and the syscall MSRs (STAR,
//! LSTAR, CSTAR, FMASK, KERNEL_GS_BASE), which hv-app does not use.

use crate::xcr::{xgetbv0, xsetbv0};
use axaddrspace::HostPhysAddr;

use super::invalidate::{InveptType, InvvpidType};
use super::setup::{HostState, system_descriptor_base};
use super::vmcs::{VmcsAccess, VmcsField};
use super::vmx_ops::VmxCpuOps;
use crate::msr::{self, MsrAccess};
use crate::regs::GeneralRegisters;
use crate::{Error, Result};

core::arch::global_asm!(
    ".global x86_vcpu_vmx_enter",
    ".global x86_vcpu_vmx_exit",
    "x86_vcpu_vmx_enter:",
    // rdi = &mut GeneralRegisters, rsi = launched (0 or 1).
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "pushfq",
    "push rdi",
    // HOST_RSP = rsp: the exit stub finds `regs` at [rsp].
    "mov rax, {host_rsp}",
    "vmwrite rax, rsp",
    "jbe 3f",
    // ZF for the VMLAUNCH/VMRESUME choice; MOV leaves the flags alone.
    "test rsi, rsi",
    "mov rax, rdi",
    "mov rcx, [rax + 8]",
    "mov rdx, [rax + 16]",
    "mov rbx, [rax + 24]",
    "mov rbp, [rax + 40]",
    "mov rsi, [rax + 48]",
    "mov rdi, [rax + 56]",
    "mov r8, [rax + 64]",
    "mov r9, [rax + 72]",
    "mov r10, [rax + 80]",
    "mov r11, [rax + 88]",
    "mov r12, [rax + 96]",
    "mov r13, [rax + 104]",
    "mov r14, [rax + 112]",
    "mov r15, [rax + 120]",
    "mov rax, [rax]",
    "jnz 2f",
    "vmlaunch",
    "jmp 3f",
    "2:",
    "vmresume",
    // VMLAUNCH/VMRESUME (or the HOST_RSP VMWRITE) fell through: CF = 1 is
    // VMfailInvalid (1), else ZF = 1 is VMfailValid (2).
    "3:",
    "mov eax, 1",
    "jc 4f",
    "mov eax, 2",
    "4:",
    "add rsp, 8",
    "popfq",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    // VM exit: RSP = HOST_RSP, [rsp] = regs; every GPR but RSP is the guest's.
    "x86_vcpu_vmx_exit:",
    "push rax",
    "mov rax, [rsp + 8]",
    "mov [rax + 8], rcx",
    "mov [rax + 16], rdx",
    "mov [rax + 24], rbx",
    "mov [rax + 40], rbp",
    "mov [rax + 48], rsi",
    "mov [rax + 56], rdi",
    "mov [rax + 64], r8",
    "mov [rax + 72], r9",
    "mov [rax + 80], r10",
    "mov [rax + 88], r11",
    "mov [rax + 96], r12",
    "mov [rax + 104], r13",
    "mov [rax + 112], r14",
    "mov [rax + 120], r15",
    "pop rcx",
    "mov [rax], rcx",
    "xor eax, eax",
    "add rsp, 8",
    "popfq",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    host_rsp = const VmcsField::HOST_RSP.0,
);

unsafe extern "sysv64" {
    fn x86_vcpu_vmx_enter(regs: *mut GeneralRegisters, launched: u64) -> u64;
    fn x86_vcpu_vmx_exit();
}

/// The address VM exits continue at (HOST_RIP) for [`vmenter`] and
/// [`vmenter_shared_xcr0`].
pub fn exit_stub_address() -> u64 {
    x86_vcpu_vmx_exit as *const () as usize as u64
}

fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 at CPL 0 has no side effect.
    unsafe {
        core::arch::asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Enters the guest of the current VMCS with `regs` and waits for the next
/// VM exit, switching XCR0 to `guest_xcr0` around it if it differs from
/// the host's. `Ok` means a VM exit happened (possibly a VM-entry failure
/// reported as one, exit reason bit 31); `Err` is VMfailInvalid or
/// VMfailValid with the VM-instruction error.
///
/// # Safety
///
/// VMX root operation at CPL 0 with this vCPU's VMCS current, its host
/// state written ([`host_state`], HOST_RIP = [`exit_stub_address`]) and
/// its guest state and controls set up; `launched` is false exactly when
/// the VMCS was cleared since its last successful VMLAUNCH; `guest_xcr0`
/// was validated with [`crate::vcpu::validate_xcr0`].
pub(crate) unsafe fn vmenter(
    regs: &mut GeneralRegisters,
    launched: bool,
    guest_xcr0: u64,
) -> Result {
    let osxsave = read_cr4() & (1 << 18) != 0;
    let host_xcr0 = if osxsave { xgetbv0() } else { 1 };
    let switch = guest_xcr0 != host_xcr0;
    if switch && !osxsave {
        return Err(Error::Unsupported(
            "guest XCR0 needs the host to set CR4.OSXSAVE",
        ));
    }
    if switch {
        // SAFETY: OSXSAVE is set and the value was validated (contract).
        unsafe { xsetbv0(guest_xcr0) };
    }
    // SAFETY: the caller's contract covers the VMCS and `regs`.
    let status = unsafe { vmenter_shared_xcr0(regs, launched) };
    if switch {
        // SAFETY: restores the host's own value.
        unsafe { xsetbv0(host_xcr0) };
    }
    status
}

/// [`vmenter`] for a guest that runs with the host's own XCR0 (such as a
/// root VM whose XSETBV the hypervisor carries out on the processor):
/// XCR0 is left as it is.
///
/// # Safety
///
/// As for [`vmenter`]: VMX root operation at CPL 0, the VMCS current with
/// its host state (HOST_RIP = [`exit_stub_address`]), guest state and
/// controls set up, `launched` tracking VMLAUNCH since the last VMCLEAR.
pub unsafe fn vmenter_shared_xcr0(regs: &mut GeneralRegisters, launched: bool) -> Result {
    // SAFETY: the caller's contract covers the VMCS; `regs` is a live
    // exclusive borrow for the whole call, and the routine returns on the
    // stack it was called on (HOST_RSP is written from it).
    let status = unsafe { x86_vcpu_vmx_enter(regs, u64::from(launched)) };
    match status {
        0 => Ok(()),
        1 => status_of(1, 0),
        _ => status_of(1, 1),
    }
}

/// A descriptor-table register image for SGDT/SIDT/LGDT/LIDT.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct TableRegister {
    limit: u16,
    base: u64,
}

/// The host state of the current CPU for the VMCS host-state area, with
/// HOST_RIP = [`exit_stub_address`]. HOST_RSP is left 0: the entry
/// routine writes it.
///
/// # Safety
///
/// CPL 0 in 64-bit mode, with a GDT holding a 64-bit TSS descriptor for
/// the current TR (read from memory for the TR base).
pub(crate) unsafe fn host_state() -> HostState {
    let (cr0, cr3, cr4): (u64, u64, u64);
    let (cs, ss, ds, es, fs, gs, tr): (u16, u16, u16, u16, u16, u16, u16);
    let mut gdtr = TableRegister::default();
    let mut idtr = TableRegister::default();
    // SAFETY: reading control registers, segment selectors and the
    // descriptor-table registers at CPL 0 has no side effect; SGDT/SIDT
    // write 10 bytes into the two local images.
    unsafe {
        core::arch::asm!(
            "mov {0}, cr0",
            "mov {1}, cr3",
            "mov {2}, cr4",
            out(reg) cr0, out(reg) cr3, out(reg) cr4,
            options(nomem, nostack, preserves_flags)
        );
        core::arch::asm!(
            "mov {0:x}, cs",
            "mov {1:x}, ss",
            "mov {2:x}, ds",
            "mov {3:x}, es",
            "mov {4:x}, fs",
            "mov {5:x}, gs",
            "str {6:x}",
            out(reg) cs, out(reg) ss, out(reg) ds, out(reg) es, out(reg) fs, out(reg) gs,
            out(reg) tr,
            options(nomem, nostack, preserves_flags)
        );
        core::arch::asm!(
            "sgdt [{0}]",
            "sidt [{1}]",
            in(reg) &raw mut gdtr, in(reg) &raw mut idtr,
            options(nostack, preserves_flags)
        );
    }
    let gdt_base = gdtr.base;
    let tr_base = if tr & !7 == 0 {
        0
    } else {
        let desc = (gdt_base + u64::from(tr & !7)) as *const u64;
        // SAFETY: the GDT the CPU uses is mapped, and the caller guarantees
        // a 16-byte TSS descriptor at TR's index.
        unsafe { system_descriptor_base(desc.read_unaligned(), desc.add(1).read_unaligned()) }
    };
    // SAFETY: CPL 0; FS/GS base, EFER, PAT and SYSENTER exist on every
    // x86_64 processor with VMX, and are only read.
    let msrs = unsafe { crate::msr::HwMsr::new() };
    HostState {
        cr0,
        cr3,
        cr4,
        cs,
        ss,
        ds,
        es,
        fs,
        gs,
        tr,
        fs_base: msrs.read(msr::IA32_FS_BASE),
        gs_base: msrs.read(msr::IA32_GS_BASE),
        tr_base,
        gdtr_base: gdt_base,
        idtr_base: idtr.base,
        gdtr_limit: gdtr.limit,
        idtr_limit: idtr.limit,
        efer: msrs.read(msr::IA32_EFER),
        pat: msrs.read(msr::IA32_PAT),
        sysenter_cs: msrs.read(msr::IA32_SYSENTER_CS) as u32,
        sysenter_esp: msrs.read(msr::IA32_SYSENTER_ESP),
        sysenter_eip: msrs.read(msr::IA32_SYSENTER_EIP),
        rsp: 0,
        rip: exit_stub_address(),
    }
}

/// Loads the GDTR and IDTR of `h` again: a VM exit keeps their bases but
/// sets both limits to 0xFFFF (SDM 28.5.2).
///
/// # Safety
///
/// `h` was captured by [`host_state`] on this CPU and its tables are still
/// in place.
pub(crate) unsafe fn reload_descriptor_tables(h: &HostState) {
    let gdtr = TableRegister {
        limit: h.gdtr_limit,
        base: h.gdtr_base,
    };
    let idtr = TableRegister {
        limit: h.idtr_limit,
        base: h.idtr_base,
    };
    // SAFETY: the same tables the CPU used before the entry (contract).
    unsafe {
        core::arch::asm!(
            "lgdt [{0}]",
            "lidt [{1}]",
            in(reg) &raw const gdtr, in(reg) &raw const idtr,
            options(readonly, nostack, preserves_flags)
        );
    }
}

/// INVEPT of type `kind` with `descriptor`.
///
/// # Safety
///
/// VMX root operation at CPL 0; `kind` is supported (IA32_VMX_EPT_VPID_CAP).
pub(crate) unsafe fn invept(kind: InveptType, descriptor: &[u64; 2]) -> Result {
    let (a, z): (u8, u8);
    // SAFETY: the caller's contract; the descriptor is 16 readable bytes.
    unsafe {
        core::arch::asm!("invept {t}, xmmword ptr [{d}]", "setna {a}", "sete {z}",
            t = in(reg) kind as u64, d = in(reg) descriptor.as_ptr(),
            a = out(reg_byte) a, z = out(reg_byte) z, options(readonly, nostack));
    }
    status_of(a, z)
}

/// INVVPID of type `kind` with `descriptor`.
///
/// # Safety
///
/// VMX root operation at CPL 0; `kind` is supported (IA32_VMX_EPT_VPID_CAP).
pub(crate) unsafe fn invvpid(kind: InvvpidType, descriptor: &[u64; 2]) -> Result {
    let (a, z): (u8, u8);
    // SAFETY: the caller's contract; the descriptor is 16 readable bytes.
    unsafe {
        core::arch::asm!("invvpid {t}, xmmword ptr [{d}]", "setna {a}", "sete {z}",
            t = in(reg) kind as u64, d = in(reg) descriptor.as_ptr(),
            a = out(reg_byte) a, z = out(reg_byte) z, options(readonly, nostack));
    }
    status_of(a, z)
}

/// Hands an NMI that caused a VM exit to the host's NMI handler (vector 2),
/// as it would have run without the guest.
///
/// # Safety
///
/// CPL 0 with an IDT whose vector 2 gate handles NMIs.
pub(crate) unsafe fn raise_host_nmi() {
    // SAFETY: the caller's contract.
    unsafe { core::arch::asm!("int 2") };
}

fn status_of(cf_or_zf: u8, zf: u8) -> Result {
    if zf != 0 {
        // SAFETY: VMfailValid means there is a current VMCS to read from.
        let (n, fail, _) = unsafe { vmread_flags(VmcsField::VM_INSTRUCTION_ERROR.0) };
        Err(Error::VmFailValid(if fail != 0 { 0 } else { n as u32 }))
    } else if cf_or_zf != 0 {
        Err(Error::VmFailInvalid)
    } else {
        Ok(())
    }
}

/// VMREAD returning (value, CF|ZF, ZF).
///
/// # Safety
/// VMX root operation.
unsafe fn vmread_flags(field: u32) -> (u64, u8, u8) {
    let value: u64;
    let (a, z): (u8, u8);
    // SAFETY: the caller's contract.
    unsafe {
        core::arch::asm!("vmread {v}, {f}", "setna {a}", "sete {z}", v = out(reg) value, f = in(reg) u64::from(field),
            a = out(reg_byte) a, z = out(reg_byte) z, options(nostack));
    }
    (value, a, z)
}

macro_rules! vmx_op_pa {
    ($(#[$m:meta])* $name:ident, $insn:literal) => {
        $(#[$m])*
        ///
        /// # Safety
        /// CPL 0, CR4.VMXE set, and `pa` a 4 KiB page owned by the caller
        /// holding the right revision identifier.
        pub unsafe fn $name(pa: HostPhysAddr) -> Result {
            let pa = pa.as_usize() as u64;
            let (a, z): (u8, u8);
            // SAFETY: the caller's contract; the operand is a 64-bit memory
            // location holding the physical address.
            unsafe {
                core::arch::asm!(concat!($insn, " qword ptr [{p}]"), "setna {a}", "sete {z}",
                    p = in(reg) &pa, a = out(reg_byte) a, z = out(reg_byte) z, options(nostack));
            }
            status_of(a, z)
        }
    };
}

vmx_op_pa!(
    /// VMXON with the VMXON region at `pa`.
    vmxon,
    "vmxon"
);
vmx_op_pa!(
    /// VMCLEAR of the VMCS at `pa`.
    vmclear,
    "vmclear"
);
vmx_op_pa!(
    /// VMPTRLD of the VMCS at `pa`.
    vmptrld,
    "vmptrld"
);

/// VMXOFF.
///
/// # Safety
/// VMX root operation.
pub unsafe fn vmxoff() -> Result {
    let (a, z): (u8, u8);
    // SAFETY: the caller's contract.
    unsafe {
        core::arch::asm!("vmxoff", "setna {a}", "sete {z}", a = out(reg_byte) a, z = out(reg_byte) z)
    };
    status_of(a, z)
}

/// The current VMCS, through VMREAD/VMWRITE.
#[derive(Debug)]
pub struct HwVmcs {
    _private: (),
}

impl HwVmcs {
    /// A handle to the current VMCS.
    ///
    /// # Safety
    /// VMX root operation with the VMCS to access current (VMPTRLD) for as
    /// long as the handle is used.
    pub unsafe fn new() -> Self {
        Self { _private: () }
    }
}

impl VmcsAccess for HwVmcs {
    fn read_raw(&self, field: VmcsField) -> Result<u64> {
        // SAFETY: `HwVmcs::new`'s contract.
        let (v, a, z) = unsafe { vmread_flags(field.0) };
        status_of(a, z).map(|()| v)
    }

    fn write_raw(&mut self, field: VmcsField, value: u64) -> Result {
        let (a, z): (u8, u8);
        // SAFETY: `HwVmcs::new`'s contract; `VmcsAccess::write` checked width
        // and writability.
        unsafe {
            core::arch::asm!("vmwrite {f}, {v}", "setna {a}", "sete {z}", f = in(reg) u64::from(field.0),
                v = in(reg) value, a = out(reg_byte) a, z = out(reg_byte) z, options(nostack));
        }
        status_of(a, z)
    }
}

/// The real control registers and VMXON/VMXOFF.
#[derive(Debug)]
pub(crate) struct HwVmxCpu {
    _private: (),
}

impl HwVmxCpu {
    /// # Safety
    /// CPL 0 on the CPU being switched.
    pub(crate) unsafe fn new() -> Self {
        Self { _private: () }
    }
}

impl VmxCpuOps for HwVmxCpu {
    fn read_cr0(&self) -> u64 {
        let v: u64;
        // SAFETY: CPL 0 (`HwVmxCpu::new`); reading CR0 has no side effect.
        unsafe {
            core::arch::asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags))
        };
        v
    }

    fn write_cr0(&mut self, value: u64) {
        // SAFETY: CPL 0; the caller (`VmxPerCpu::enable_with`) only sets
        // CR0.NE (or restores the previous value), which changes nothing
        // but how x87 errors are reported.
        unsafe {
            core::arch::asm!("mov cr0, {}", in(reg) value, options(nostack, preserves_flags))
        };
    }

    fn read_cr4(&self) -> u64 {
        let v: u64;
        // SAFETY: as above.
        unsafe {
            core::arch::asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags))
        };
        v
    }

    fn write_cr4(&mut self, value: u64) {
        // SAFETY: CPL 0; the caller (`VmxPerCpu::enable_with`) only flips
        // VMXE on a value checked against the fixed-bit MSRs.
        unsafe {
            core::arch::asm!("mov cr4, {}", in(reg) value, options(nostack, preserves_flags))
        };
    }

    fn vmxon(&mut self, region: HostPhysAddr) -> Result {
        // SAFETY: CPL 0, CR4.VMXE set and the region prepared by the caller.
        unsafe { vmxon(region) }
    }

    fn vmxoff(&mut self) -> Result {
        // SAFETY: called only after a successful VMXON.
        unsafe { vmxoff() }
    }
}
