//! The root VM on Intel VMX: Linux resumed in VMX non-root operation.
//!
//! Per CPU, after the common part of the entry (`linux_cpu_enter`): check
//! `IA32_FEATURE_CONTROL` and the capabilities
//! ([`hv_app::root_vmx::root_controls`]), set CR4.VMXE, VMXON, fill this
//! CPU's root VMCS from the live Linux state (the guest state is Linux's,
//! the host state is Linux's GDT/TSS/IDT with hv-app's page table and
//! stack), and VMLAUNCH at the return address of the module's call. The
//! root VM's exits: CPUID (VMX hidden), VMCALL (the hypercalls), a
//! `mov cr4` touching VMXE, XSETBV, INVD, the VMX instructions (#UD),
//! MSRs outside the bitmap's ranges (#GP), EPT violations (the hypervisor's
//! region: #GP, or the module's call of `leave`), and on a CPU offered
//! for a guest VM, HLT and MWAIT.
//!
//! Leaving (disable, or a CPU handed to a guest VM) clears the root VMCS,
//! runs VMXOFF and clears CR4.VMXE. On the way back to Linux the state a
//! VM exit replaced is put back from the VMCS's guest fields: GDTR/IDTR
//! limits, TR (its limit; the busy bit is cleared first), LDTR, the data
//! segment selectors, FS/GS bases, SYSENTER MSRs and DR7.

use core::arch::asm;

use hv_app::root_vmx::{
    RootControls, access_rights, ept_pointer, fill_root_ept, is_play_dead, offered_proc,
    root_controls, root_cpuid, root_cr4_write,
};
use x86_vcpu::GeneralRegisters;
use x86_vcpu::msr::HwMsr;
use x86_vcpu::vmx::controls::{
    FeatureControlAction, check_cr, cr4 as cr4_bits, feature_control_action,
};
use x86_vcpu::vmx::hw::{self as vmx_hw, HwVmcs};
use x86_vcpu::vmx::{ExitReasonField, VmcsAccess, VmcsField as F, VmxCaps, VmxExitReason as R};

use super::{
    CpuState, EBUSY, EIO, EOPNOTSUPP, EPERM, HC_LEAVE, HOST_PML4, MAX_CPUS, NPT_PD, NPT_PDPT,
    NPT_PML4, Table, axhv_linux_leave, cpuid, halt, linux_vms, live_segments, rdmsr, resume_native,
    segment, wrmsr,
};
use axaddrspace::HostPhysAddr;

static mut VMXON_REGIONS: [Table; MAX_CPUS] = [const { Table([0; 512]) }; MAX_CPUS];
static mut ROOT_VMCS: [Table; MAX_CPUS] = [const { Table([0; 512]) }; MAX_CPUS];
/// The root VM's MSR bitmap: all zero, no MSR in the bitmap's ranges
/// exits.
static MSR_BITMAP: Table = Table([0; 512]);
/// The capabilities and controls, read once by the first CPU in (every
/// CPU has the same).
static SETUP: spin::Once<(VmxCaps, RootControls)> = spin::Once::new();

/// Whether this CPU has VMX (CPUID.1:ECX bit 5).
pub(super) fn present() -> bool {
    cpuid(1, 0)[2] & (1 << 5) != 0
}

fn caps_and_controls(cpu: usize) -> Result<&'static (VmxCaps, RootControls), i64> {
    if let Some(s) = SETUP.get() {
        return Ok(s);
    }
    // SAFETY: CPL 0; the VMX capability MSRs exist (CPUID says VMX) and
    // `VmxCaps::read` reads the optional ones only when advertised.
    let caps = VmxCaps::read(&unsafe { HwMsr::new() });
    if let Err(e) = caps.basic.validate() {
        report!("axhv: cpu{cpu}: VMX unusable: {e}\n");
        return Err(EOPNOTSUPP);
    }
    match root_controls(&caps) {
        Ok(c) => Ok(SETUP.call_once(|| (caps, c))),
        Err(e) => {
            report!("axhv: cpu{cpu}: the root VM cannot run on this VMX: {e}\n");
            Err(EOPNOTSUPP)
        }
    }
}

/// The checks before any change: VMX enabled by the firmware, the
/// capabilities the root VM needs.
pub(super) fn check(cpu: usize) -> Result<(), i64> {
    match feature_control_action(rdmsr(0x3a)) {
        Ok(FeatureControlAction::AlreadyEnabled) => {}
        Ok(FeatureControlAction::Write(v)) => wrmsr(0x3a, v),
        Err(e) => {
            report!("axhv: cpu{cpu}: {e}\n");
            return Err(EPERM);
        }
    }
    caps_and_controls(cpu).map(|_| ())
}

/// Builds the root VM's EPT (1:1 with the hypervisor's region left out),
/// in the tables the SVM path uses as its nested page table.
pub(super) fn build_ept(region: u64, size: u64) {
    let (pml4, pdpt, pd) = (&raw mut NPT_PML4, &raw mut NPT_PDPT, &raw mut NPT_PD);
    // SAFETY: only the CPU that won NPT_STATE writes the tables, before
    // any CPU uses them.
    unsafe {
        fill_root_ept(
            &mut (*pml4).0,
            &mut (*pdpt).0,
            &mut (*pd).0,
            pdpt as u64,
            pd as u64,
            region,
            size,
        );
    }
}

/// The parts of Linux's CPU state a VM exit replaces with host values.
#[derive(Clone, Copy)]
struct NativeState {
    gdtr: (u64, u16),
    idtr: (u64, u16),
    tr: u16,
    ldtr: u16,
    ds: u16,
    es: u16,
    ss: u16,
    fs: u16,
    gs: u16,
    fs_base: u64,
    gs_base: u64,
    sysenter: [u64; 3],
    dr7: u64,
}

fn live_state() -> NativeState {
    let dr7: u64;
    // SAFETY: reads DR7 (no side effects).
    unsafe { asm!("mov {}, dr7", out(reg) dr7, options(nostack)) };
    let l = live_segments();
    NativeState {
        gdtr: l.gdtr,
        idtr: l.idtr,
        tr: l.tr,
        ldtr: l.ldtr,
        ds: l.ds,
        es: l.es,
        ss: l.ss,
        fs: l.fs,
        gs: l.gs,
        fs_base: rdmsr(0xc000_0100),
        gs_base: rdmsr(0xc000_0101),
        sysenter: [rdmsr(0x174), rdmsr(0x175), rdmsr(0x176)],
        dr7,
    }
}

/// Puts back what a VM exit replaced (see [`NativeState`]), on hv-app's
/// page table (Linux's kernel half is mapped in it).
fn restore_native(s: &NativeState) {
    let mut gdtr = [0u8; 10];
    gdtr[..2].copy_from_slice(&s.gdtr.1.to_le_bytes());
    gdtr[2..].copy_from_slice(&s.gdtr.0.to_le_bytes());
    let mut idtr = [0u8; 10];
    idtr[..2].copy_from_slice(&s.idtr.1.to_le_bytes());
    idtr[2..].copy_from_slice(&s.idtr.0.to_le_bytes());
    // SAFETY: Linux's own descriptor tables and selectors, as the root VM
    // had them; the GDT's TSS descriptor (inside the GDT limit: Linux
    // loaded TR from it) gets its busy bit cleared so that LTR reloads
    // the TSS limit, with CR0.WP off for the moment since Linux maps its
    // GDT read-only (LTR sets the bit again); interrupts are off.
    unsafe {
        asm!("lgdt [{}]", in(reg) gdtr.as_ptr(), options(nostack));
        asm!("lidt [{}]", in(reg) idtr.as_ptr(), options(nostack));
        if s.tr & !7 != 0 && u64::from(s.tr & !7) + 7 <= u64::from(s.gdtr.1) {
            let ty = (s.gdtr.0 + u64::from(s.tr & !7) + 5) as *mut u8;
            let cr0: u64;
            asm!("mov {}, cr0", out(reg) cr0, options(nostack));
            asm!("mov cr0, {}", in(reg) cr0 & !(1 << 16), options(nostack));
            ty.write_volatile(ty.read_volatile() & !0x02);
            // LTR marks the descriptor busy again: a write to the same
            // read-only page, so WP stays off until it is done.
            asm!("ltr {0:x}", in(reg) s.tr, options(nostack));
            asm!("mov cr0, {}", in(reg) cr0, options(nostack));
        }
        asm!("lldt {0:x}", in(reg) s.ldtr, options(nostack));
        asm!("mov ds, {0:x}", in(reg) s.ds, options(nostack));
        asm!("mov es, {0:x}", in(reg) s.es, options(nostack));
        asm!("mov ss, {0:x}", in(reg) s.ss, options(nostack));
        asm!("mov fs, {0:x}", in(reg) s.fs, options(nostack));
        asm!("mov gs, {0:x}", in(reg) s.gs, options(nostack));
        asm!("mov dr7, {}", in(reg) s.dr7, options(nostack));
    }
    wrmsr(0xc000_0100, s.fs_base);
    wrmsr(0xc000_0101, s.gs_base);
    wrmsr(0x174, s.sysenter[0]);
    wrmsr(0x175, s.sysenter[1]);
    wrmsr(0x176, s.sysenter[2]);
}

fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 has no side effect.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack)) };
    v
}

fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no side effect.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack)) };
    v
}

fn write_cr4(v: u64) {
    // SAFETY: callers only toggle CR4.VMXE (VMXON needs it set; it is
    // cleared after VMXOFF).
    unsafe { asm!("mov cr4, {}", in(reg) v, options(nomem, nostack)) };
}

fn region_pa(table: *const Table, cpu: usize) -> u64 {
    // Linked at its physical address: the static's address is the PA.
    table.wrapping_add(cpu) as u64
}

fn vmcs_pa(cpu: usize) -> HostPhysAddr {
    HostPhysAddr::from(region_pa((&raw const ROOT_VMCS).cast(), cpu) as usize)
}

/// VMCLEAR of the root VMCS, VMXOFF, CR4.VMXE off.
fn vmx_off(cpu: usize) {
    // SAFETY: in VMX root operation with the root VMCS (this CPU's) at
    // vmcs_pa; after VMXOFF CR4.VMXE may be cleared.
    unsafe {
        let _ = vmx_hw::vmclear(vmcs_pa(cpu));
        let _ = vmx_hw::vmxoff();
    }
    write_cr4(read_cr4() & !cr4_bits::VMXE);
}

/// Runs Linux as the root VM on this CPU with the VMCS built from the
/// live state: RIP `rip`, RSP `rsp`, CR3 `cr3`, the GPRs in `gprs`.
/// Returns a negative errno if the CPU cannot enter (everything undone);
/// never returns once Linux runs in VMX non-root operation.
pub(super) fn run_root(cpu: usize, gprs: *mut [u64; 16], rsp: u64, cr3: u64, rip: u64) -> i64 {
    let Ok((caps, ctl)) = caps_and_controls(cpu) else {
        return EOPNOTSUPP;
    };
    let cr0 = read_cr0();
    let cr4_linux = read_cr4();
    if cr4_linux & cr4_bits::VMXE != 0 {
        report!(
            "axhv: cpu{cpu}: CR4.VMXE is already set: another hypervisor (kvm_intel?) uses VMX\n"
        );
        return EBUSY;
    }
    let cr4_on = cr4_linux | cr4_bits::VMXE;
    if let Err(e) = check_cr("CR0", cr0, caps.cr0_fixed0, caps.cr0_fixed1)
        .and_then(|()| check_cr("CR4", cr4_on, caps.cr4_fixed0, caps.cr4_fixed1))
    {
        report!("axhv: cpu{cpu}: Linux's control registers do not allow VMX: {e}\n");
        return EOPNOTSUPP;
    }
    let rev = caps.basic.revision_id;
    let vmxon_pa = region_pa((&raw const VMXON_REGIONS).cast(), cpu);
    // SAFETY: this CPU's VMXON region and VMCS (cpu < MAX_CPUS); the
    // revision identifier goes in their first 4 bytes.
    unsafe {
        (vmxon_pa as *mut u32).write_volatile(rev);
        (region_pa((&raw const ROOT_VMCS).cast(), cpu) as *mut u32).write_volatile(rev);
    }
    let native = live_state();
    // SAFETY: GPRS[cpu] belongs to this CPU: RAX = 0 is the entry's
    // return value in Linux.
    unsafe { (*gprs)[0] = 0 };
    write_cr4(cr4_on);
    // SAFETY: CR4.VMXE set, CR0 checked against the fixed bits, the
    // region holds the revision identifier.
    if let Err(e) = unsafe { vmx_hw::vmxon(HostPhysAddr::from(vmxon_pa as usize)) } {
        write_cr4(cr4_linux);
        report!("axhv: cpu{cpu}: VMXON failed: {e}\n");
        return EIO;
    }
    // SAFETY: VMX root operation; this CPU's VMCS with the revision id.
    let loaded =
        unsafe { vmx_hw::vmclear(vmcs_pa(cpu)).and_then(|()| vmx_hw::vmptrld(vmcs_pa(cpu))) };
    // SAFETY: the root VMCS is current from here on (re-loaded after every
    // hypercall, which may make another VMCS current).
    let mut v = unsafe { HwVmcs::new() };
    if let Err(e) =
        loaded.and_then(|()| fill_vmcs(&mut v, ctl, &native, cr0, cr4_on, cr4_linux, cr3, rsp, rip))
    {
        vmx_off(cpu);
        report!("axhv: cpu{cpu}: cannot set up the root VMCS: {e}\n");
        return EIO;
    }

    let mut launched = false;
    loop {
        // SAFETY: the root VMCS is current and complete (guest state from
        // the live Linux state, host state from this CPU, HOST_RIP the exit
        // stub); `launched` tracks VMLAUNCH since the VMCLEAR; GPRS[cpu] is
        // this CPU's, 16 u64 in the order of `GeneralRegisters` (repr(C)).
        let r =
            unsafe { vmx_hw::vmenter_shared_xcr0(&mut *gprs.cast::<GeneralRegisters>(), launched) };
        if let Err(e) = r {
            report!(
                "axhv: cpu{cpu}: {} failed: {e}\n",
                if launched { "VMRESUME" } else { "VMLAUNCH" }
            );
            if launched {
                halt();
            }
            crate::console::flush_deferred();
            vmx_off(cpu);
            return EIO;
        }
        let raw = v.read(F::VM_EXIT_REASON).unwrap_or(0) as u32;
        let reason = ExitReasonField::from_raw(raw);
        if reason.entry_failure {
            let qual = v.read(F::EXIT_QUALIFICATION).unwrap_or(0);
            report!(
                "axhv: cpu{cpu}: VM entry of the root VM failed (exit reason {}, qualification {qual:#x})\n",
                reason.basic
            );
            if launched {
                halt();
            }
            crate::console::flush_deferred();
            // The failed entry loaded the host state: undo what differs.
            vmx_off(cpu);
            restore_native(&native);
            return EIO;
        }
        if !launched {
            launched = true;
            linux_vms::set_cpu_state(cpu, CpuState::Root);
            report!("axhv: cpu{cpu}: Linux runs as the root VM (VMX)\n");
        }
        // SAFETY: gprs is this CPU's array.
        handle_exit(cpu, &mut v, unsafe { &mut *gprs }, reason);
    }
}

#[allow(clippy::too_many_arguments)]
fn fill_vmcs(
    v: &mut HwVmcs,
    ctl: &RootControls,
    n: &NativeState,
    cr0: u64,
    cr4: u64,
    cr4_shadow: u64,
    cr3: u64,
    rsp: u64,
    rip: u64,
) -> x86_vcpu::Result {
    let (cs, rflags): (u16, u64);
    // SAFETY: reads CS and RFLAGS.
    unsafe {
        asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack));
        asm!("pushfq", "pop {}", out(reg) rflags);
    }
    let (gdt, glim) = n.gdtr;
    let segs = [
        (
            F::GUEST_ES_SELECTOR,
            F::GUEST_ES_BASE,
            F::GUEST_ES_LIMIT,
            F::GUEST_ES_ACCESS_RIGHTS,
            n.es,
            false,
        ),
        (
            F::GUEST_CS_SELECTOR,
            F::GUEST_CS_BASE,
            F::GUEST_CS_LIMIT,
            F::GUEST_CS_ACCESS_RIGHTS,
            cs,
            false,
        ),
        (
            F::GUEST_SS_SELECTOR,
            F::GUEST_SS_BASE,
            F::GUEST_SS_LIMIT,
            F::GUEST_SS_ACCESS_RIGHTS,
            n.ss,
            false,
        ),
        (
            F::GUEST_DS_SELECTOR,
            F::GUEST_DS_BASE,
            F::GUEST_DS_LIMIT,
            F::GUEST_DS_ACCESS_RIGHTS,
            n.ds,
            false,
        ),
        (
            F::GUEST_FS_SELECTOR,
            F::GUEST_FS_BASE,
            F::GUEST_FS_LIMIT,
            F::GUEST_FS_ACCESS_RIGHTS,
            n.fs,
            false,
        ),
        (
            F::GUEST_GS_SELECTOR,
            F::GUEST_GS_BASE,
            F::GUEST_GS_LIMIT,
            F::GUEST_GS_ACCESS_RIGHTS,
            n.gs,
            false,
        ),
        (
            F::GUEST_LDTR_SELECTOR,
            F::GUEST_LDTR_BASE,
            F::GUEST_LDTR_LIMIT,
            F::GUEST_LDTR_ACCESS_RIGHTS,
            n.ldtr,
            true,
        ),
        (
            F::GUEST_TR_SELECTOR,
            F::GUEST_TR_BASE,
            F::GUEST_TR_LIMIT,
            F::GUEST_TR_ACCESS_RIGHTS,
            n.tr,
            true,
        ),
    ];
    let mut tr_base = 0;
    for (sel_f, base_f, limit_f, ar_f, sel, sys) in segs {
        let s = segment(gdt, glim, sel, sys);
        v.write(sel_f, u64::from(sel))?;
        v.write(base_f, s.base)?;
        v.write(limit_f, u64::from(s.limit))?;
        v.write(ar_f, u64::from(access_rights(s.attrib, sel)))?;
        if sel_f == F::GUEST_TR_SELECTOR {
            tr_base = s.base;
        }
    }
    v.write(F::GUEST_FS_BASE, n.fs_base)?;
    v.write(F::GUEST_GS_BASE, n.gs_base)?;
    v.write(F::GUEST_GDTR_BASE, gdt)?;
    v.write(F::GUEST_GDTR_LIMIT, u64::from(glim))?;
    v.write(F::GUEST_IDTR_BASE, n.idtr.0)?;
    v.write(F::GUEST_IDTR_LIMIT, u64::from(n.idtr.1))?;
    v.write(F::GUEST_CR0, cr0)?;
    v.write(F::GUEST_CR3, cr3)?;
    v.write(F::GUEST_CR4, cr4)?;
    v.write(F::GUEST_DR7, n.dr7)?;
    v.write(F::GUEST_RSP, rsp)?;
    v.write(F::GUEST_RIP, rip)?;
    v.write(F::GUEST_RFLAGS, rflags)?;
    v.write(F::GUEST_IA32_SYSENTER_CS, n.sysenter[0])?;
    v.write(F::GUEST_IA32_SYSENTER_ESP, n.sysenter[1])?;
    v.write(F::GUEST_IA32_SYSENTER_EIP, n.sysenter[2])?;
    v.write(F::GUEST_IA32_DEBUGCTL, 0)?;
    v.write(F::VMCS_LINK_POINTER, u64::MAX)?;
    v.write(F::GUEST_INTERRUPTIBILITY_STATE, 0)?;
    v.write(F::GUEST_ACTIVITY_STATE, 0)?;
    v.write(F::GUEST_PENDING_DBG_EXCEPTIONS, 0)?;

    v.write(F::PIN_BASED_VM_EXEC_CONTROL, u64::from(ctl.pin))?;
    v.write(F::CPU_BASED_VM_EXEC_CONTROL, u64::from(ctl.proc))?;
    v.write(F::SECONDARY_VM_EXEC_CONTROL, u64::from(ctl.proc2))?;
    v.write(F::VMEXIT_CONTROLS, u64::from(ctl.exit))?;
    v.write(F::VMENTRY_CONTROLS, u64::from(ctl.entry))?;
    v.write(F::EXCEPTION_BITMAP, 0)?;
    v.write(F::PAGE_FAULT_ERROR_CODE_MASK, 0)?;
    v.write(F::PAGE_FAULT_ERROR_CODE_MATCH, 0)?;
    v.write(F::CR3_TARGET_COUNT, 0)?;
    v.write(F::VMEXIT_MSR_STORE_COUNT, 0)?;
    v.write(F::VMEXIT_MSR_LOAD_COUNT, 0)?;
    v.write(F::VMENTRY_MSR_LOAD_COUNT, 0)?;
    v.write(F::VMENTRY_INTERRUPTION_INFO, 0)?;
    v.write(F::CR0_GUEST_HOST_MASK, 0)?;
    v.write(F::CR0_READ_SHADOW, cr0)?;
    v.write(F::CR4_GUEST_HOST_MASK, cr4_bits::VMXE)?;
    v.write(F::CR4_READ_SHADOW, cr4_shadow)?;
    v.write(F::MSR_BITMAP, (&raw const MSR_BITMAP) as u64)?;
    v.write(F::EPT_POINTER, ept_pointer((&raw const NPT_PML4) as u64))?;
    v.write(F::TSC_OFFSET, 0)?;
    if ctl.proc2 & (1 << 20) != 0 {
        v.write(F::XSS_EXITING_BITMAP, 0)?;
    }

    v.write(F::HOST_CR0, cr0)?;
    v.write(F::HOST_CR3, (&raw const HOST_PML4) as u64)?;
    v.write(F::HOST_CR4, cr4)?;
    v.write(F::HOST_CS_SELECTOR, u64::from(cs))?;
    for f in [
        F::HOST_SS_SELECTOR,
        F::HOST_DS_SELECTOR,
        F::HOST_ES_SELECTOR,
        F::HOST_FS_SELECTOR,
        F::HOST_GS_SELECTOR,
    ] {
        v.write(f, 0)?;
    }
    v.write(F::HOST_TR_SELECTOR, u64::from(n.tr & !7))?;
    v.write(F::HOST_FS_BASE, n.fs_base)?;
    v.write(F::HOST_GS_BASE, n.gs_base)?;
    v.write(F::HOST_TR_BASE, tr_base)?;
    v.write(F::HOST_GDTR_BASE, gdt)?;
    v.write(F::HOST_IDTR_BASE, n.idtr.0)?;
    v.write(F::HOST_IA32_SYSENTER_CS, n.sysenter[0])?;
    v.write(F::HOST_IA32_SYSENTER_ESP, n.sysenter[1])?;
    v.write(F::HOST_IA32_SYSENTER_EIP, n.sysenter[2])?;
    v.write(F::HOST_RIP, vmx_hw::exit_stub_address())?;
    Ok(())
}

fn advance(v: &mut HwVmcs) {
    let len = v.read(F::VMEXIT_INSTRUCTION_LEN).unwrap_or(0);
    let rip = v.read(F::GUEST_RIP).unwrap_or(0);
    let _ = v.write(F::GUEST_RIP, rip + len);
    // The instruction is done: blocking by STI / MOV SS ends with it.
    let intr = v.read(F::GUEST_INTERRUPTIBILITY_STATE).unwrap_or(0);
    if intr & 3 != 0 {
        let _ = v.write(F::GUEST_INTERRUPTIBILITY_STATE, intr & !3);
    }
}

/// Injects hardware exception `vector` (with `error` code) at the next VM
/// entry.
fn inject(v: &mut HwVmcs, vector: u64, error: Option<u32>) {
    let mut info = vector | (3 << 8) | (1 << 31);
    if let Some(code) = error {
        info |= 1 << 11;
        let _ = v.write(F::VMENTRY_EXCEPTION_ERROR_CODE, u64::from(code));
    }
    let _ = v.write(F::VMENTRY_INTERRUPTION_INFO, info);
}

fn handle_exit(cpu: usize, v: &mut HwVmcs, gprs: &mut [u64; 16], reason: ExitReasonField) {
    // An event whose delivery the exit interrupted is delivered again.
    let vectoring = v.read(F::IDT_VECTORING_INFO).unwrap_or(0);
    if vectoring & (1 << 31) != 0 {
        let _ = v.write(F::VMENTRY_INTERRUPTION_INFO, vectoring & !(1 << 12));
        if vectoring & (1 << 11) != 0 {
            let code = v.read(F::IDT_VECTORING_ERROR_CODE).unwrap_or(0);
            let _ = v.write(F::VMENTRY_EXCEPTION_ERROR_CODE, code);
        }
        let len = v.read(F::VMEXIT_INSTRUCTION_LEN).unwrap_or(0);
        let _ = v.write(F::VMENTRY_INSTRUCTION_LEN, len);
    }
    let rip = v.read(F::GUEST_RIP).unwrap_or(0);
    match reason.reason() {
        Ok(R::Cpuid) => {
            let leaf = gprs[0] as u32;
            let r = root_cpuid(leaf, cpuid(leaf, gprs[1] as u32));
            gprs[0] = u64::from(r[0]);
            gprs[3] = u64::from(r[1]);
            gprs[1] = u64::from(r[2]);
            gprs[2] = u64::from(r[3]);
            advance(v);
        }
        Ok(R::Vmcall) => {
            let cpl = (v.read(F::GUEST_SS_ACCESS_RIGHTS).unwrap_or(0) >> 5) & 3;
            let nr = gprs[0];
            gprs[0] = if cpl != 0 {
                // Only the root VM's kernel may call the hypervisor.
                EPERM as u64
            } else if nr == u64::from(HC_LEAVE) {
                (-38i64) as u64
            } else {
                let args = [gprs[7], gprs[6], gprs[2], gprs[10], gprs[8], gprs[9]];
                linux_vms::hypercall(cpu, nr, &args)
            };
            // A hypercall that set up a guest VM's VMCS left that one
            // current: the root VMCS again.
            // SAFETY: VMX root operation; this CPU's root VMCS.
            if let Err(e) = unsafe { vmx_hw::vmptrld(vmcs_pa(cpu)) } {
                report!("axhv: cpu{cpu}: VMPTRLD of the root VMCS failed: {e}; halting\n");
                halt();
            }
            if linux_vms::cpu_state(cpu) == CpuState::Offered
                && let Some((caps, ctl)) = SETUP.get()
            {
                // Offered for a guest VM: Linux's last HLT (or MWAIT) with
                // interrupts off (the CPU offlined) hands it over.
                let _ = v.write(
                    F::CPU_BASED_VM_EXEC_CONTROL,
                    u64::from(offered_proc(ctl.proc, caps)),
                );
            }
            crate::console::flush_deferred();
            advance(v);
        }
        Ok(r @ (R::Hlt | R::Mwait)) => {
            let rflags = v.read(F::GUEST_RFLAGS).unwrap_or(0);
            if is_play_dead(r == R::Mwait, rflags, gprs[1])
                && linux_vms::cpu_state(cpu) == CpuState::Offered
            {
                report!("axhv: cpu{cpu}: offlined by Linux: now the hypervisor's\n");
                vmx_off(cpu);
                linux_vms::park(cpu);
            }
            // An idle halt (or intel_idle's MWAIT) while the CPU is being
            // offlined: Linux's idle loop polls instead for that short time.
            advance(v);
        }
        Ok(R::EptViolation) => {
            let gpa = v.read(F::GUEST_PHYSICAL_ADDR).unwrap_or(0);
            if gpa == (&raw const axhv_linux_leave) as u64 {
                // The module called `leave`: return from that call natively.
                let rsp = v.read(F::GUEST_RSP).unwrap_or(0);
                // SAFETY: the return address the module's call pushed, on
                // Linux's kernel stack (mapped by the copied kernel half).
                let ret = unsafe { core::ptr::read_volatile(rsp as *const u64) };
                leave(cpu, v, gprs, ret, rsp + 8);
            }
            report!(
                "axhv: cpu{cpu}: root VM tried to access hypervisor memory at GPA {gpa:#x} (RIP {rip:#x}); injecting #GP\n"
            );
            inject(v, 13, Some(0));
        }
        Ok(R::CrAccess) => cr_access(cpu, v, gprs, rip),
        Ok(R::Xsetbv) => {
            let value = (gprs[2] << 32) | (gprs[0] & 0xffff_ffff);
            let d = cpuid(0xd, 0);
            let supported = (u64::from(d[3]) << 32) | u64::from(d[0]);
            match x86_vcpu::vcpu::validate_xcr0(value, supported) {
                Some(x) if gprs[1] as u32 == 0 => {
                    // SAFETY: XCR0 with a value the processor supports
                    // (checked against CPUID leaf 0xD).
                    unsafe {
                        asm!("xsetbv", in("ecx") 0u32, in("eax") x as u32, in("edx") (x >> 32) as u32,
                             options(nostack))
                    };
                    advance(v);
                }
                _ => inject(v, 13, Some(0)),
            }
        }
        Ok(R::Invd) => {
            // SAFETY: write back and invalidate the caches (INVD without
            // the write-back would lose the hypervisor's dirty lines).
            unsafe { asm!("wbinvd", options(nostack)) };
            advance(v);
        }
        Ok(R::Rdmsr | R::Wrmsr) => {
            report!(
                "axhv: cpu{cpu}: root VM accessed MSR {:#x} outside the bitmap's ranges (RIP {rip:#x}); injecting #GP\n",
                gprs[1] as u32
            );
            inject(v, 13, Some(0));
        }
        Ok(
            R::Vmclear
            | R::Vmlaunch
            | R::Vmptrld
            | R::Vmptrst
            | R::Vmread
            | R::Vmresume
            | R::Vmwrite
            | R::Vmxoff
            | R::Vmxon
            | R::Invept
            | R::Invvpid
            | R::Vmfunc
            | R::Getsec,
        ) => inject(v, 6, None),
        Ok(R::Init) => {
            report!("axhv: cpu{cpu}: INIT for a root CPU ignored (RIP {rip:#x})\n");
        }
        Ok(R::TripleFault) => {
            report!(
                "axhv: cpu{cpu}: root VM shut down (triple fault) at RIP {rip:#x}; halting this CPU\n"
            );
            halt();
        }
        _ => {
            report!(
                "axhv: cpu{cpu}: unexpected root VM exit {} at RIP {rip:#x}; halting this CPU\n",
                reason.basic
            );
            halt();
        }
    }
}

/// A `mov` to or from a control register that exits: CR4 (when it would
/// change the hidden VMXE bit) and CR3 (if the processor forces CR3
/// exiting).
fn cr_access(cpu: usize, v: &mut HwVmcs, gprs: &mut [u64; 16], rip: u64) {
    let q = v.read(F::EXIT_QUALIFICATION).unwrap_or(0);
    let (cr, kind, reg) = (q & 0xf, (q >> 4) & 3, ((q >> 8) & 0xf) as usize);
    let get = |v: &HwVmcs, gprs: &[u64; 16]| {
        if reg == 4 {
            v.read(F::GUEST_RSP).unwrap_or(0)
        } else {
            gprs[reg]
        }
    };
    match (cr, kind) {
        (4, 0) => {
            let value = get(v, gprs);
            let (f0, f1) = SETUP
                .get()
                .map_or((0, u64::MAX), |(c, _)| (c.cr4_fixed0, c.cr4_fixed1));
            match root_cr4_write(value, f0, f1) {
                Some((guest, shadow)) => {
                    let _ = v.write(F::GUEST_CR4, guest);
                    let _ = v.write(F::CR4_READ_SHADOW, shadow);
                    advance(v);
                }
                None => inject(v, 13, Some(0)),
            }
        }
        (3, 0) => {
            let value = get(v, gprs) & !(1 << 63);
            let _ = v.write(F::GUEST_CR3, value);
            advance(v);
        }
        (3, 1) => {
            let value = v.read(F::GUEST_CR3).unwrap_or(0);
            if reg == 4 {
                let _ = v.write(F::GUEST_RSP, value);
            } else {
                gprs[reg] = value;
            }
            advance(v);
        }
        _ => {
            report!(
                "axhv: cpu{cpu}: unexpected control-register exit (qualification {q:#x}) at RIP {rip:#x}; halting this CPU\n"
            );
            halt();
        }
    }
}

/// Turns VMX off on this CPU and resumes Linux natively at `rip` with
/// stack `rsp`, with the state the root VM had.
fn leave(cpu: usize, v: &mut HwVmcs, gprs: &[u64; 16], rip: u64, rsp: u64) -> ! {
    report!("axhv: cpu{cpu}: leaving: Linux runs natively again\n");
    linux_vms::set_cpu_state(cpu, CpuState::Absent);
    crate::console::flush_deferred();
    let r = |f| v.read(f).unwrap_or(0);
    let native = NativeState {
        gdtr: (r(F::GUEST_GDTR_BASE), r(F::GUEST_GDTR_LIMIT) as u16),
        idtr: (r(F::GUEST_IDTR_BASE), r(F::GUEST_IDTR_LIMIT) as u16),
        tr: r(F::GUEST_TR_SELECTOR) as u16,
        ldtr: r(F::GUEST_LDTR_SELECTOR) as u16,
        ds: r(F::GUEST_DS_SELECTOR) as u16,
        es: r(F::GUEST_ES_SELECTOR) as u16,
        ss: r(F::GUEST_SS_SELECTOR) as u16,
        fs: r(F::GUEST_FS_SELECTOR) as u16,
        gs: r(F::GUEST_GS_SELECTOR) as u16,
        fs_base: r(F::GUEST_FS_BASE),
        gs_base: r(F::GUEST_GS_BASE),
        sysenter: [
            r(F::GUEST_IA32_SYSENTER_CS),
            r(F::GUEST_IA32_SYSENTER_ESP),
            r(F::GUEST_IA32_SYSENTER_EIP),
        ],
        dr7: r(F::GUEST_DR7),
    };
    let (cr0, cr3, cr4, rflags) = (
        r(F::GUEST_CR0),
        r(F::GUEST_CR3),
        r(F::CR4_READ_SHADOW),
        r(F::GUEST_RFLAGS),
    );
    vmx_off(cpu);
    write_cr4(cr4);
    // SAFETY: the root VM's CR0 (PE, PG, NE as Linux runs with).
    unsafe { asm!("mov cr0, {}", in(reg) cr0, options(nomem, nostack)) };
    restore_native(&native);
    resume_native(
        cpu,
        [
            cr3, rsp, rip, rflags, gprs[3], gprs[5], gprs[12], gprs[13], gprs[14], gprs[15],
        ],
    )
}
