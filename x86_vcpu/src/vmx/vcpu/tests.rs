use super::*;
use crate::hal::test_hal::TestHal;
use crate::vcpu::BootProtocol;
use crate::vendor::tests::vendor_leaf;
use crate::vendor::{CpuidResult, FakeCpuid};
use crate::vmx::controls::tests::skylake_msrs;
use crate::vmx::vmcs::FakeVmcs;
use axaddrspace::{AccessWidth, MappingFlags};

type Vcpu = VmxVcpu<TestHal>;

fn caps() -> VmxCaps {
    VmxCaps::read(&skylake_msrs())
}

fn intel_cpuid() -> FakeCpuid {
    FakeCpuid::new()
        .with(0, 0, vendor_leaf(0x16, b"GenuineIntel"))
        .with(
            1,
            0,
            CpuidResult::new(0x50654, 0x0010_0800, 0x7ffe_fbff, 0xbfeb_fbff),
        )
        .with(0xd, 0, CpuidResult::new(0x2e7, 0xa88, 0xa88, 0))
}

fn setup(boot: BootProtocol, entry: usize) -> (Vcpu, FakeVmcs) {
    let mut v = Vcpu::with_caps(0, X86VcpuCreateConfig::new(0, 1), caps()).unwrap();
    v.set_entry(GuestPhysAddr::from(entry)).unwrap();
    v.set_ept_root(HostPhysAddr::from(0x40_0000usize)).unwrap();
    let mut vmcs = FakeVmcs::new();
    v.setup_with(&mut vmcs, &X86VcpuSetupConfig { boot })
        .unwrap();
    (v, vmcs)
}

fn multiboot() -> (Vcpu, FakeVmcs) {
    setup(BootProtocol::Multiboot { info_paddr: 0x9500 }, 0x10_0000)
}

fn long_mode() -> (Vcpu, FakeVmcs) {
    setup(
        BootProtocol::LongMode {
            cr3: 0x1000,
            rsi: 0x7000,
        },
        0x20_0000,
    )
}

fn exit(
    v: &mut Vcpu,
    vmcs: &mut FakeVmcs,
    reason: u32,
    qual: u64,
    len: u64,
) -> Result<AxVCpuExitReason> {
    vmcs.set_exit_info(F::VM_EXIT_REASON, reason.into());
    vmcs.set_exit_info(F::EXIT_QUALIFICATION, qual);
    vmcs.set_exit_info(F::VMEXIT_INSTRUCTION_LEN, len);
    vmcs.set_exit_info(F::IDT_VECTORING_INFO, 0);
    v.handle_exit(vmcs, &intel_cpuid())
}

fn rip(vmcs: &FakeVmcs) -> u64 {
    vmcs.get(F::GUEST_RIP).unwrap()
}

#[test]
fn setup_writes_the_vmcs() {
    let (v, vmcs) = multiboot();
    // VMCS region starts with the revision identifier (4).
    assert_eq!(&v.vmcs.as_ref()[..4], &[4, 0, 0, 0]);
    let (a, b) = v.io_bitmap.storage();
    assert_eq!(vmcs.get(F::IO_BITMAP_A), Some(a.paddr().as_usize() as u64));
    assert_eq!(vmcs.get(F::IO_BITMAP_B), Some(b.paddr().as_usize() as u64));
    assert_eq!(vmcs.get(F::EPT_POINTER), Some(0x40_001e));
    assert_eq!(vmcs.get(F::VPID), Some(1));
    assert_eq!(vmcs.get(F::GUEST_RIP), Some(0x10_0000));
    assert_eq!(vmcs.get(F::GUEST_CR0), Some(0x31));
    assert_eq!(v.gpr(0), 0x2bad_b002);
    assert_eq!(v.gpr(3), 0x9500);
    // Every port and the EFER MSR exit; FS base passes through.
    assert!(v.io_bitmap.is_intercepted(0x3f8));
    assert!(v.io_bitmap.is_intercepted(0xcfc));
    assert!(
        v.msr_bitmap
            .is_intercepted(msr::IA32_EFER, MsrAccessKind::Write)
    );
    assert!(
        !v.msr_bitmap
            .is_intercepted(msr::IA32_FS_BASE, MsrAccessKind::Write)
    );
    assert!(
        !v.msr_bitmap
            .is_intercepted(msr::IA32_TSC, MsrAccessKind::Read)
    );
    assert!(
        v.msr_bitmap
            .is_intercepted(msr::IA32_TSC, MsrAccessKind::Write)
    );
    let (_, l) = long_mode();
    assert_ne!(l.get(F::VMENTRY_CONTROLS).unwrap() & (1 << 9), 0);
}

#[test]
fn host_trait_paths_refuse() {
    let (mut v, _) = multiboot();
    assert!(matches!(v.run(), Err(axvcpu::Error::Unsupported(_))));
    assert!(matches!(v.bind(), Err(axvcpu::Error::Unsupported(_))));
    assert!(matches!(
        <Vcpu as AxArchVCpu>::new(0, X86VcpuCreateConfig::new(0, 1)),
        Err(axvcpu::Error::Unsupported(_))
    ));
    assert!(Vcpu::with_caps(0, X86VcpuCreateConfig::new(0, 0), caps()).is_err());
    let mut fresh = Vcpu::with_caps(0, X86VcpuCreateConfig::new(0, 1), caps()).unwrap();
    assert_eq!(fresh.run(), Err(axvcpu::Error::BadState));
    let cfg = X86VcpuSetupConfig {
        boot: BootProtocol::RealMode,
    };
    assert!(matches!(
        fresh.setup_with(&mut FakeVmcs::new(), &cfg),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn cpuid_exit() {
    let (mut v, mut vmcs) = multiboot();
    v.set_gpr(0, 1);
    v.set_gpr(1, 0);
    assert_eq!(
        exit(&mut v, &mut vmcs, 10, 0, 2),
        Ok(AxVCpuExitReason::Nothing)
    );
    assert_eq!(rip(&vmcs), 0x10_0002);
    assert_eq!(v.gpr(1) & (1 << 5), 0, "VMX hidden");
    assert_ne!(v.gpr(1) & (1 << 31), 0, "hypervisor bit");
    assert_eq!(v.gpr(3) >> 24, 0);
}

#[test]
fn hlt_vmcall_and_rsp_sync() {
    let (mut v, mut vmcs) = multiboot();
    vmcs.write(F::GUEST_RSP, 0x7ff0).unwrap();
    vmcs.write(F::GUEST_INTERRUPTIBILITY_STATE, 1).unwrap();
    assert_eq!(
        exit(&mut v, &mut vmcs, 12, 0, 1),
        Ok(AxVCpuExitReason::Halt)
    );
    assert_eq!(rip(&vmcs), 0x10_0001);
    assert_eq!(vmcs.get(F::GUEST_INTERRUPTIBILITY_STATE), Some(0));
    assert_eq!(v.gpr(4), 0x7ff0, "RSP read back at exit");
    for (r, val) in [(0, 9), (7, 1), (6, 2), (2, 3), (10, 4), (8, 5), (9, 6)] {
        v.set_gpr(r, val);
    }
    assert_eq!(
        exit(&mut v, &mut vmcs, 18, 0, 3),
        Ok(AxVCpuExitReason::Hypercall {
            nr: 9,
            args: [1, 2, 3, 4, 5, 6]
        })
    );
    assert_eq!(rip(&vmcs), 0x10_0004);
    v.set_gpr(4, 0x6000);
    v.prepare_entry(&mut vmcs).unwrap();
    assert_eq!(vmcs.get(F::GUEST_RSP), Some(0x6000));
}

#[test]
fn io_exits() {
    let (mut v, mut vmcs) = multiboot();
    v.set_gpr(0, 0xffff_1241);
    // out dx, al to 0x3f8.
    assert_eq!(
        exit(&mut v, &mut vmcs, 30, 0x03f8_0000, 1),
        Ok(AxVCpuExitReason::IoWrite {
            port: 0x3f8,
            width: AccessWidth::Byte,
            data: 0x41
        })
    );
    // in eax, 0x71.
    assert_eq!(
        exit(
            &mut v,
            &mut vmcs,
            30,
            (0x71 << 16) | (1 << 6) | (1 << 3) | 3,
            2
        ),
        Ok(AxVCpuExitReason::IoRead {
            port: 0x71,
            width: AccessWidth::Dword
        })
    );
    assert_eq!(rip(&vmcs), 0x10_0003);
    v.set_io_result(AccessWidth::Dword, 0x1234_5678).unwrap();
    assert_eq!(v.gpr(0), 0x1234_5678);
    assert!(matches!(
        exit(&mut v, &mut vmcs, 30, (1 << 4) | (1 << 5), 2),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn msr_exits_and_efer() {
    let (mut v, mut vmcs) = long_mode();
    v.set_gpr(1, 0x1b);
    assert_eq!(
        exit(&mut v, &mut vmcs, 31, 0, 2),
        Ok(AxVCpuExitReason::MsrRead { msr: 0x1b })
    );
    v.set_gpr(1, 0x6e0);
    v.set_gpr(2, 1);
    v.set_gpr(0, 2);
    assert_eq!(
        exit(&mut v, &mut vmcs, 32, 0, 2),
        Ok(AxVCpuExitReason::MsrWrite {
            msr: 0x6e0,
            value: 0x1_0000_0002
        })
    );
    assert_eq!(rip(&vmcs), 0x20_0004);
    v.set_gpr(1, msr::IA32_EFER.into());
    exit(&mut v, &mut vmcs, 31, 0, 2).unwrap();
    assert_eq!(v.gpr(0), 0x500);
    // Setting NXE keeps LMA.
    v.set_gpr(0, 0x901);
    v.set_gpr(2, 0);
    exit(&mut v, &mut vmcs, 32, 0, 2).unwrap();
    assert_eq!(vmcs.get(F::GUEST_IA32_EFER), Some(0xd01));
    // Clearing LME while paging: #GP(0), RIP stays.
    let r = rip(&vmcs);
    v.set_gpr(0, 0x801);
    exit(&mut v, &mut vmcs, 32, 0, 2).unwrap();
    assert_eq!(vmcs.get(F::VMENTRY_INTERRUPTION_INFO), Some(0x8000_0b0d));
    assert_eq!(vmcs.get(F::VMENTRY_EXCEPTION_ERROR_CODE), Some(0));
    assert_eq!(rip(&vmcs), r);
}

#[test]
fn ept_violation_then_mmio_decode() {
    let (mut v, mut vmcs) = long_mode();
    vmcs.set_exit_info(F::GUEST_PHYSICAL_ADDR, 0xfee0_0300);
    v.set_gpr(0, 0x000c_4500);
    // Write access, linear address valid: mov [rbx+0x300], eax (89 83 00 03 00 00).
    let e = exit(&mut v, &mut vmcs, 48, 0x182, 0);
    assert_eq!(
        e,
        Ok(AxVCpuExitReason::NestedPageFault {
            addr: GuestPhysAddr::from(0xfee0_0300usize),
            access_flags: MappingFlags::WRITE
        })
    );
    let loc = v.guest_code_location();
    assert_eq!(
        (loc.linear_rip, loc.bitness, loc.cr3),
        (0x20_0000, 64, 0x1000)
    );
    let m = v
        .decode_mmio(
            GuestPhysAddr::from(0xfee0_0300usize),
            &[0x89, 0x83, 0x00, 0x03, 0x00, 0x00],
        )
        .unwrap();
    assert_eq!(
        m,
        AxVCpuExitReason::MmioWrite {
            addr: GuestPhysAddr::from(0xfee0_0300usize),
            width: AccessWidth::Dword,
            data: 0x000c_4500
        }
    );
    // RIP moves at the next entry.
    assert_eq!(rip(&vmcs), 0x20_0000);
    v.prepare_entry(&mut vmcs).unwrap();
    assert_eq!(rip(&vmcs), 0x20_0006);
    // A second decode without a new fault is refused.
    assert!(
        v.decode_mmio(GuestPhysAddr::from(0usize), &[0x8b, 0x03])
            .is_err()
    );
    assert!(matches!(
        exit(&mut v, &mut vmcs, 49, 0, 0),
        Err(Error::EptMisconfiguration(0xfee0_0300))
    ));
}

#[test]
fn interrupts_and_windows() {
    let (mut v, mut vmcs) = multiboot();
    v.inject_interrupt(0x20).unwrap();
    // IF clear: interrupt-window exiting on, nothing injected.
    v.prepare_entry(&mut vmcs).unwrap();
    assert_eq!(vmcs.get(F::VMENTRY_INTERRUPTION_INFO), Some(0));
    assert_ne!(
        vmcs.get(F::CPU_BASED_VM_EXEC_CONTROL).unwrap() & (1 << 2),
        0
    );
    vmcs.write(F::GUEST_RFLAGS, 0x202).unwrap();
    assert_eq!(
        exit(&mut v, &mut vmcs, 7, 0, 0),
        Ok(AxVCpuExitReason::InterruptWindow)
    );
    assert_eq!(
        vmcs.get(F::CPU_BASED_VM_EXEC_CONTROL).unwrap() & (1 << 2),
        0
    );
    v.prepare_entry(&mut vmcs).unwrap();
    assert_eq!(vmcs.get(F::VMENTRY_INTERRUPTION_INFO), Some(0x8000_0020));
    assert_eq!(v.pending_interrupts(), 0);
    // External interrupt exit with acknowledge-on-exit.
    vmcs.set_exit_info(F::VMEXIT_INTERRUPTION_INFO, 0x8000_00ec);
    assert_eq!(
        exit(&mut v, &mut vmcs, 1, 0, 0),
        Ok(AxVCpuExitReason::ExternalInterrupt { vector: 0xec })
    );
}

#[test]
fn idt_vectoring_is_reinjected() {
    let (mut v, mut vmcs) = long_mode();
    vmcs.set_exit_info(F::VM_EXIT_REASON, 48);
    vmcs.set_exit_info(F::EXIT_QUALIFICATION, 0x181);
    vmcs.set_exit_info(F::GUEST_PHYSICAL_ADDR, 0x5000);
    vmcs.set_exit_info(F::VMEXIT_INSTRUCTION_LEN, 0);
    vmcs.set_exit_info(F::IDT_VECTORING_INFO, 0x8000_0b0e);
    vmcs.set_exit_info(F::IDT_VECTORING_ERROR_CODE, 0x2);
    v.handle_exit(&mut vmcs, &intel_cpuid()).unwrap();
    assert_eq!(vmcs.get(F::VMENTRY_INTERRUPTION_INFO), Some(0x8000_0b0e));
    assert_eq!(vmcs.get(F::VMENTRY_EXCEPTION_ERROR_CODE), Some(2));
    // Pending interrupts wait behind it.
    v.inject_interrupt(0x40).unwrap();
    vmcs.write(F::GUEST_RFLAGS, 0x202).unwrap();
    v.prepare_entry(&mut vmcs).unwrap();
    assert_eq!(vmcs.get(F::VMENTRY_INTERRUPTION_INFO), Some(0x8000_0b0e));
    assert_eq!(v.pending_interrupts(), 1);
}

#[test]
fn cr0_write_of_host_owned_bit_and_long_mode_switch() {
    let (mut v, mut vmcs) = multiboot();
    // Guest: EFER.LME, then mov cr0, eax with PG|PE (no NE). CR4.PAE is
    // not set yet: #GP.
    vmcs.write(F::GUEST_IA32_EFER, 0x100).unwrap();
    v.set_gpr(0, 0x8000_0011);
    exit(&mut v, &mut vmcs, 28, 0x000, 3).unwrap();
    assert_eq!(vmcs.get(F::VMENTRY_INTERRUPTION_INFO), Some(0x8000_0b0d));
    vmcs.write(F::VMENTRY_INTERRUPTION_INFO, 0).unwrap();
    assert_eq!(vmcs.get(F::CR0_READ_SHADOW), Some(0x11), "CR0 unchanged");
    // The guest's mov cr4 with PAE touched no host-owned bit: no exit, the
    // processor wrote GUEST_CR4 and the read shadow kept its old value.
    let cr4 = vmcs.get(F::GUEST_CR4).unwrap();
    vmcs.write(F::GUEST_CR4, cr4 | 0x20).unwrap();
    assert_eq!(vmcs.get(F::CR4_READ_SHADOW).unwrap() & 0x20, 0);
    assert_eq!(
        exit(&mut v, &mut vmcs, 28, 0x000, 3),
        Ok(AxVCpuExitReason::Nothing)
    );
    assert_eq!(vmcs.get(F::CR0_READ_SHADOW), Some(0x8000_0011));
    assert_eq!(vmcs.get(F::GUEST_CR0), Some(0x8000_0031), "NE forced");
    assert_eq!(vmcs.get(F::GUEST_IA32_EFER), Some(0x500), "LMA set");
    assert_ne!(
        vmcs.get(F::VMENTRY_CONTROLS).unwrap() & (1 << 9),
        0,
        "IA-32e mode guest"
    );
    assert_eq!(rip(&vmcs), 0x10_0003);
    // Paging back off leaves long mode.
    v.set_gpr(3, 0x11);
    exit(&mut v, &mut vmcs, 28, 0x300, 3).unwrap();
    assert_eq!(vmcs.get(F::GUEST_IA32_EFER), Some(0x100));
    assert_eq!(vmcs.get(F::VMENTRY_CONTROLS).unwrap() & (1 << 9), 0);
    // PG without PE: #GP.
    v.set_gpr(0, 0x8000_0010);
    exit(&mut v, &mut vmcs, 28, 0x000, 3).unwrap();
    assert_eq!(vmcs.get(F::VMENTRY_INTERRUPTION_INFO), Some(0x8000_0b0d));
}

#[test]
fn cr4_write_rules() {
    let (mut v, mut vmcs) = long_mode();
    // mov cr4, rcx with OSXSAVE|PAE: VMXE stays forced, shadow is the guest's.
    v.set_gpr(1, 0x4_0020);
    exit(&mut v, &mut vmcs, 28, 0x104, 3).unwrap();
    assert_eq!(vmcs.get(F::CR4_READ_SHADOW), Some(0x4_0020));
    assert_eq!(vmcs.get(F::GUEST_CR4), Some(0x4_2020));
    // The guest may not set VMXE.
    v.set_gpr(1, 0x2020);
    exit(&mut v, &mut vmcs, 28, 0x104, 3).unwrap();
    assert_eq!(vmcs.get(F::VMENTRY_INTERRUPTION_INFO), Some(0x8000_0b0d));
    assert_eq!(vmcs.get(F::CR4_READ_SHADOW), Some(0x4_0020));
}

#[test]
fn xsetbv_and_vmx_instructions() {
    let (mut v, mut vmcs) = long_mode();
    v.set_gpr(0, 0x7);
    v.set_gpr(1, 0);
    v.set_gpr(2, 0);
    exit(&mut v, &mut vmcs, 55, 0, 3).unwrap();
    assert_eq!(v.guest_xcr0(), 7);
    assert_eq!(rip(&vmcs), 0x20_0003);
    v.set_gpr(0, 0x5); // AVX without SSE
    exit(&mut v, &mut vmcs, 55, 0, 3).unwrap();
    assert_eq!(v.guest_xcr0(), 7);
    assert_eq!(vmcs.get(F::VMENTRY_INTERRUPTION_INFO), Some(0x8000_0b0d));
    // VMXON in the guest: #UD.
    exit(&mut v, &mut vmcs, 27, 0, 4).unwrap();
    assert_eq!(vmcs.get(F::VMENTRY_INTERRUPTION_INFO), Some(0x8000_0306));
}

#[test]
fn fatal_exits() {
    let (mut v, mut vmcs) = multiboot();
    assert_eq!(
        exit(&mut v, &mut vmcs, 2, 0, 0),
        Ok(AxVCpuExitReason::TripleFault)
    );
    assert_eq!(
        exit(&mut v, &mut vmcs, 0x8000_0021, 0, 0),
        Ok(AxVCpuExitReason::FailEntry {
            hardware_entry_failure_reason: 0x8000_0021
        })
    );
    assert_eq!(
        exit(&mut v, &mut vmcs, 52, 0, 0),
        Err(Error::UnknownExit(52))
    );
    assert_eq!(
        exit(&mut v, &mut vmcs, 35, 0, 0),
        Err(Error::UnknownExit(35))
    );
}

#[test]
fn entry_and_root_changes_after_setup_apply_at_next_entry() {
    let (mut v, mut vmcs) = multiboot();
    v.set_entry(GuestPhysAddr::from(0x30_0000usize)).unwrap();
    v.set_ept_root(HostPhysAddr::from(0x80_0000usize)).unwrap();
    assert!(v.set_ept_root(HostPhysAddr::from(0x80_0010usize)).is_err());
    v.prepare_entry(&mut vmcs).unwrap();
    assert_eq!(rip(&vmcs), 0x30_0000);
    assert_eq!(vmcs.get(F::EPT_POINTER), Some(0x80_001e));
}

#[test]
fn launch_state_follows_exits_and_entry_failures() {
    let (mut v, mut vmcs) = multiboot();
    assert!(!v.launched(), "a set-up VMCS is entered with VMLAUNCH");
    // A VM-entry failure (exit reason bit 31, basic reason 33) leaves the
    // VMCS unlaunched and keeps the qualification.
    let e = exit(&mut v, &mut vmcs, 0x8000_0021, 4, 0).unwrap();
    assert_eq!(
        e,
        AxVCpuExitReason::FailEntry {
            hardware_entry_failure_reason: 0x8000_0021
        }
    );
    assert!(!v.launched());
    let f = v.entry_failure().unwrap();
    assert_eq!((f.raw_reason, f.qualification), (0x8000_0021, 4));
    assert_eq!(
        f.description(),
        "invalid guest state: invalid VMCS link pointer"
    );
    // Any real exit (here HLT) means VMLAUNCH worked: VMRESUME next.
    exit(&mut v, &mut vmcs, 12, 0, 1).unwrap();
    assert!(v.launched());
}

#[test]
fn host_state_is_written_once_per_binding() {
    let (mut v, mut vmcs) = multiboot();
    assert!(v.host_state().is_none());
    let host = HostState {
        cr0: 0x8001_0033,
        cr3: 0x1000,
        cr4: 0x2020,
        cs: 0x08,
        ss: 0x10,
        ds: 0x10,
        es: 0x10,
        tr: 0x18,
        tr_base: 0x1f_0080,
        gs_base: 0x1a6000,
        gdtr_base: 0x1f_0000,
        gdtr_limit: 39,
        idtr_base: 0x1f_1000,
        idtr_limit: 4095,
        efer: 0xd01,
        pat: 0x0007_0406_0007_0406,
        rip: 0x11_0000,
        ..Default::default()
    };
    let mut captures = 0;
    v.write_host_state_once(&mut vmcs, || {
        captures += 1;
        host
    })
    .unwrap();
    v.write_host_state_once(&mut vmcs, || {
        captures += 1;
        host
    })
    .unwrap();
    assert_eq!(captures, 1);
    assert_eq!(v.host_state(), Some(&host));
    assert_eq!(vmcs.get(F::HOST_GS_BASE), Some(0x1a6000));
    assert_eq!(vmcs.get(F::HOST_TR_BASE), Some(0x1f_0080));
    assert_eq!(vmcs.get(F::HOST_IA32_EFER), Some(0xd01));
    assert_eq!(vmcs.get(F::HOST_RIP), Some(0x11_0000));
    // A state the processor would refuse is not recorded as written.
    let (mut w, mut vmcs2) = multiboot();
    let bad = HostState { tr: 0, ..host };
    assert!(w.write_host_state_once(&mut vmcs2, || bad).is_err());
    assert!(w.host_state().is_none());
}

#[test]
fn ia32e_entry_control_follows_efer_lma() {
    let (mut v, mut vmcs) = multiboot();
    let ia32e = 1u64 << 9;
    assert_eq!(vmcs.get(F::VMENTRY_CONTROLS).unwrap() & ia32e, 0);
    // The guest set EFER.LME (emulated WRMSR) and then CR0.PG natively:
    // the processor set EFER.LMA, and the exit saved it.
    vmcs.write(F::GUEST_IA32_EFER, 0x500).unwrap();
    v.prepare_entry(&mut vmcs).unwrap();
    assert_ne!(vmcs.get(F::VMENTRY_CONTROLS).unwrap() & ia32e, 0);
    // Paging off again: LMA clear, so is the control.
    vmcs.write(F::GUEST_IA32_EFER, 0x100).unwrap();
    v.prepare_entry(&mut vmcs).unwrap();
    assert_eq!(vmcs.get(F::VMENTRY_CONTROLS).unwrap() & ia32e, 0);
    // A long-mode boot starts with the control set and keeps it.
    let (mut l, mut lvmcs) = long_mode();
    l.prepare_entry(&mut lvmcs).unwrap();
    assert_ne!(lvmcs.get(F::VMENTRY_CONTROLS).unwrap() & ia32e, 0);
}

#[test]
fn tlb_flush_for_a_new_ept_root() {
    use crate::vmx::{InveptType, InvvpidType};
    let (mut v, mut vmcs) = multiboot();
    // A new vCPU flushes before its first entry: INVEPT single context for
    // its EPTP (0x40_0000 | WB | walk length 4), INVVPID for VPID 1.
    assert!(v.guest_tlb_flush_pending());
    let f = v.pending_tlb_flush(&vmcs).unwrap().unwrap();
    assert_eq!(f.invept, (InveptType::SingleContext, [0x40_001e, 0]));
    assert_eq!(f.invvpid, Some((InvvpidType::SingleContext, [1, 0])));
    // A root changed after setup: the flush names the new EPTP.
    v.set_ept_root(HostPhysAddr::from(0x80_0000usize)).unwrap();
    v.prepare_entry(&mut vmcs).unwrap();
    let f = v.pending_tlb_flush(&vmcs).unwrap().unwrap();
    assert_eq!(f.invept.1, [0x80_001e, 0]);
}

#[test]
fn syscall_msrs_are_switched_in_software_and_passed_through() {
    let (v, _) = multiboot();
    // Skylake offers "enable RDTSCP" (IA32_VMX_PROCBASED_CTLS2 bit 35):
    // TSC_AUX joins the five MSRs the VMCS does not hold.
    assert_eq!(
        v.msr_switch().msrs(),
        [
            msr::IA32_STAR,
            msr::IA32_LSTAR,
            msr::IA32_CSTAR,
            msr::IA32_FMASK,
            msr::IA32_KERNEL_GS_BASE,
            msr::IA32_TSC_AUX
        ]
    );
    for m in v.msr_switch().msrs() {
        for kind in [MsrAccessKind::Read, MsrAccessKind::Write] {
            assert!(!v.msr_bitmap.is_intercepted(*m, kind), "{m:#x}");
        }
    }
    assert!(!v.msr_switch().is_loaded(), "nothing loaded before a run");
    assert_eq!(
        v.syscall_msrs(&crate::msr::FakeMsrs::new()),
        crate::SyscallMsrs::default()
    );

    // Without RDTSCP for the guest, TSC_AUX is neither switched nor passed.
    let mut caps = caps();
    caps.proc2 &= !(1u64 << (32 + 3));
    let w = Vcpu::with_caps(0, X86VcpuCreateConfig::new(0, 2), caps).unwrap();
    assert_eq!(w.msr_switch().msrs().len(), 5);
    assert!(!w.msr_switch().switches(msr::IA32_TSC_AUX));
    assert!(
        w.msr_bitmap
            .is_intercepted(msr::IA32_TSC_AUX, MsrAccessKind::Read)
    );
}

#[test]
fn setup_takes_the_syscall_msrs_of_the_initial_state() {
    let mut s = crate::state::GuestState::long_mode(0, 0x3000);
    s.syscall_msrs = crate::SyscallMsrs {
        star: 0x0023_0010_0000_0000,
        lstar: 0xffff_ffff_8160_0040,
        cstar: 0xffff_ffff_8160_1000,
        fmask: 0x4_7700,
        kernel_gs_base: 0x7f00_1234_5000,
        tsc_aux: 1,
    };
    let (v, _) = setup(
        BootProtocol::Custom(std::boxed::Box::new(s.clone())),
        0x20_0000,
    );
    let hw = crate::msr::FakeMsrs::new();
    assert_eq!(v.syscall_msrs(&hw), s.syscall_msrs);

    let mut v = Vcpu::with_caps(0, X86VcpuCreateConfig::new(0, 1), caps()).unwrap();
    v.set_entry(GuestPhysAddr::from(0x20_0000usize)).unwrap();
    v.set_ept_root(HostPhysAddr::from(0x40_0000usize)).unwrap();
    s.syscall_msrs.tsc_aux = 1 << 32; // reserved bits
    let mut vmcs = FakeVmcs::new();
    assert!(
        v.setup_with(
            &mut vmcs,
            &X86VcpuSetupConfig {
                boot: BootProtocol::Custom(std::boxed::Box::new(s)),
            },
        )
        .is_err()
    );
}

#[test]
fn cpuid_exit_reports_the_tsc_frequency_in_leaf_0x16() {
    let mut config = X86VcpuCreateConfig::new(0, 1);
    config.cpuid.tsc_khz = 3_000_000;
    let mut v = Vcpu::with_caps(0, config, caps()).unwrap();
    v.set_entry(GuestPhysAddr::from(0x10_0000usize)).unwrap();
    v.set_ept_root(HostPhysAddr::from(0x40_0000usize)).unwrap();
    let mut vmcs = FakeVmcs::new();
    v.setup_with(
        &mut vmcs,
        &X86VcpuSetupConfig {
            boot: BootProtocol::Multiboot { info_paddr: 0 },
        },
    )
    .unwrap();
    v.set_gpr(0, 0x16);
    exit(&mut v, &mut vmcs, 10, 0, 2).unwrap();
    assert_eq!(
        (v.gpr(0), v.gpr(3), v.gpr(1), v.gpr(2)),
        (3000, 3000, 1000, 0)
    );
    // The Skylake host's maximum (0x16) is already high enough.
    v.set_gpr(0, 0);
    exit(&mut v, &mut vmcs, 10, 0, 2).unwrap();
    assert_eq!(v.gpr(0), 0x16);
}
