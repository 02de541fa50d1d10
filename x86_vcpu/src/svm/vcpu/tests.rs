use super::*;
use crate::guest_msrs::SyscallMsrs;
use crate::hal::test_hal::TestHal;
use crate::state::GuestState;
use crate::vcpu::BootProtocol;
use crate::vendor::tests::vendor_leaf;
use crate::vendor::{CpuidResult, FakeCpuid};
use crate::vmx::MsrAccessKind;
use axaddrspace::{AccessWidth, MappingFlags};

type Vcpu = SvmVcpu<TestHal>;

fn tcg_features() -> SvmFeatures {
    SvmFeatures {
        num_asids: 16,
        nested_paging: true,
        ..Default::default()
    }
}

fn amd_cpuid() -> FakeCpuid {
    FakeCpuid::new()
        .with(0, 0, vendor_leaf(0xd, b"AuthenticAMD"))
        .with(
            1,
            0,
            CpuidResult::new(0x800f12, 0x0008_0800, 0x7ed8_320b, 0x178b_fbff),
        )
        .with(0xd, 0, CpuidResult::new(0x7, 0x340, 0x340, 0))
        .with(0x8000_0000, 0, CpuidResult::new(0x8000_001f, 0, 0, 0))
        .with(0x8000_0001, 0, CpuidResult::new(0, 0, 0x0040_03f7, 0))
        .with(0x8000_000A, 0, CpuidResult::new(1, 16, 0, 1))
}

fn vcpu_with(boot: BootProtocol, entry: usize) -> Vcpu {
    let mut v = Vcpu::with_features(0, X86VcpuCreateConfig::new(0, 1), tcg_features()).unwrap();
    v.set_entry(GuestPhysAddr::from(entry)).unwrap();
    v.set_ept_root(HostPhysAddr::from(0x40_0000usize)).unwrap();
    v.setup(X86VcpuSetupConfig { boot }).unwrap();
    v
}

fn multiboot_vcpu() -> Vcpu {
    vcpu_with(BootProtocol::Multiboot { info_paddr: 0x9500 }, 0x10_0000)
}

fn long_mode_vcpu() -> Vcpu {
    vcpu_with(
        BootProtocol::LongMode {
            cr3: 0x1000,
            rsi: 0x7000,
        },
        0x20_0000,
    )
}

/// The processor's side of an exit: it writes the exit fields (which does
/// not ask for a new consistency check), then the vCPU handles the exit.
fn exit(v: &mut Vcpu, code: u64, info1: u64, info2: u64) -> Result<AxVCpuExitReason> {
    let c = &mut v.vmcb_raw_mut().control;
    c.exit_code = code;
    c.exit_info_1 = info1;
    c.exit_info_2 = info2;
    c.exit_int_info = 0;
    v.handle_exit(&amd_cpuid())
}

#[test]
fn setup_fills_a_valid_vmcb() {
    let v = multiboot_vcpu();
    let c = &v.vmcb().control;
    assert_eq!(c.iopm_base_pa, v.iopm.storage().paddr().as_usize() as u64);
    assert_eq!(c.msrpm_base_pa, v.msrpm.storage().paddr().as_usize() as u64);
    assert_eq!(c.n_cr3, 0x40_0000);
    assert_eq!(c.guest_asid, 1);
    assert_eq!(v.vmcb().save.rip, 0x10_0000);
    assert_eq!(v.gpr(0), 0x2bad_b002);
    assert_eq!(v.gpr(3), 0x9500);
    assert_eq!(check_vmcb(v.vmcb()), Ok(()));
    let l = long_mode_vcpu();
    assert_eq!(l.gpr(6), 0x7000);
    assert_eq!(l.vmcb().save.efer, 0x1500);
}

#[test]
fn setup_requires_entry_and_root() {
    let mut v = Vcpu::with_features(0, X86VcpuCreateConfig::new(0, 1), tcg_features()).unwrap();
    let cfg = || X86VcpuSetupConfig {
        boot: BootProtocol::Multiboot { info_paddr: 0 },
    };
    assert!(matches!(
        v.setup(cfg()),
        Err(axvcpu::Error::InvalidArgument(_))
    ));
    v.set_entry(GuestPhysAddr::from(0x10_0000usize)).unwrap();
    assert!(matches!(
        v.setup(cfg()),
        Err(axvcpu::Error::InvalidArgument(_))
    ));
    assert!(v.set_ept_root(HostPhysAddr::from(0x40_0010usize)).is_err());
    assert_eq!(v.run(), Err(axvcpu::Error::BadState));
    assert!(Vcpu::with_features(0, X86VcpuCreateConfig::new(0, 0), tcg_features()).is_err());
    assert!(Vcpu::with_features(0, X86VcpuCreateConfig::new(0, 16), tcg_features()).is_err());
}

#[test]
fn run_on_the_host_is_unsupported() {
    let mut v = multiboot_vcpu();
    assert!(matches!(v.run(), Err(axvcpu::Error::Unsupported(_))));
}

#[test]
fn run_names_a_broken_vmcb_before_vmrun() {
    let mut v = multiboot_vcpu();
    // A caller (or a bug) clears the VMRUN intercept: VMRUN would fail with
    // VMEXIT_INVALID (APM 15.5.1); `run` refuses and says why.
    v.vmcb_mut().control.intercept_misc2 &= !1;
    let invalid = Ok(AxVCpuExitReason::FailEntry {
        hardware_entry_failure_reason: u64::MAX,
    });
    assert_eq!(v.run(), invalid);
    assert_eq!(v.entry_failure(), Some("the VMRUN intercept is clear"));
    v.vmcb_mut().control.intercept_misc2 |= 1;
    v.vmcb_mut().save.efer &= !(1 << 12);
    assert_eq!(v.run(), invalid);
    assert_eq!(v.entry_failure(), Some("EFER.SVME is zero"));
    // Fixed: the run goes on to VMRUN (unsupported on the host) and the
    // failure is forgotten.
    v.vmcb_mut().save.efer |= 1 << 12;
    assert!(matches!(v.run(), Err(axvcpu::Error::Unsupported(_))));
    assert_eq!(v.entry_failure(), None);
}

#[test]
fn vmcb_is_checked_again_only_when_the_hypervisor_changed_it() {
    let mut v = long_mode_vcpu();
    assert!(!v.entry_check_pending(), "setup checked the VMCB");
    // Exits settled in the vCPU or handed up write only fields VMRUN does
    // not check (RIP, RAX/RBX/RCX/RDX, the interrupt shadow).
    exit(&mut v, 0x72, 0, 0).unwrap(); // CPUID
    v.vmcb_raw_mut().save.rax = 0;
    v.regs.rcx = u64::from(msr::IA32_EFER);
    exit(&mut v, 0x7c, 0, 0).unwrap(); // RDMSR EFER
    exit(&mut v, 0x7b, (0x3ff << 16) | (1 << 4), 0x20_0010).unwrap(); // OUT
    exit(&mut v, 0x81, 0, 0).unwrap(); // VMMCALL
    v.set_return_value(0x10000);
    v.set_gpr(3, 5);
    v.bind().unwrap();
    exit(&mut v, 0x400, 1 << 32, 0xfeb0_0000).unwrap(); // NPF
    v.decode_mmio(GuestPhysAddr::from(0xfeb0_0000usize), &[0x8b, 0x03])
        .unwrap();
    assert!(!v.entry_check_pending());

    // Proof that a clean VMCB is not checked: a broken field written behind
    // the vCPU's back (no real path does this) is not noticed, and the run
    // goes on to VMRUN (unsupported on the host).
    v.vmcb_raw_mut().control.guest_asid = 0;
    assert!(matches!(v.run(), Err(axvcpu::Error::Unsupported(_))));
    assert_eq!(v.entry_failure(), None);

    // The same write through `vmcb_mut` is seen at the next entry.
    v.vmcb_mut().control.guest_asid = 0;
    assert!(v.entry_check_pending());
    let invalid = Ok(AxVCpuExitReason::FailEntry {
        hardware_entry_failure_reason: u64::MAX,
    });
    assert_eq!(v.run(), invalid);
    assert_eq!(v.entry_failure(), Some("ASID is zero"));
    assert!(v.entry_check_pending(), "still broken: checked again");
    v.vmcb_mut().control.guest_asid = 1;
    assert!(matches!(v.run(), Err(axvcpu::Error::Unsupported(_))));
    assert_eq!(v.entry_failure(), None);
    assert!(
        !v.entry_check_pending(),
        "passed: clean until the next change"
    );

    // An emulated EFER write changes checked state.
    v.vmcb_raw_mut().save.rax = 0xd01; // SCE | LME | LMA | NXE
    v.regs.rdx = 0;
    exit(&mut v, 0x7c, 1, 0).unwrap();
    assert_eq!(v.vmcb().save.efer, 0x1d01);
    assert!(v.entry_check_pending());
    assert!(matches!(v.run(), Err(axvcpu::Error::Unsupported(_))));
    assert!(!v.entry_check_pending());

    // So does a new nested page table root.
    v.set_ept_root(HostPhysAddr::from(0x80_0000usize)).unwrap();
    assert!(v.entry_check_pending());
    assert!(matches!(v.run(), Err(axvcpu::Error::Unsupported(_))));

    // And a VMRUN the processor refused: the VMCB may hold partial state.
    assert_eq!(
        exit(&mut v, u64::MAX, 0, 0),
        Ok(AxVCpuExitReason::FailEntry {
            hardware_entry_failure_reason: u64::MAX,
        })
    );
    assert!(v.entry_check_pending());
}

#[test]
fn mmio_decodes_are_cached_by_instruction_bytes() {
    let mut v = long_mode_vcpu();
    let a = GuestPhysAddr::from(0xfeb0_0000usize);
    // mov eax, [rbx] twice: decoded once.
    for _ in 0..2 {
        exit(&mut v, 0x400, 1 << 32, 0xfeb0_0000).unwrap();
        assert!(matches!(
            v.decode_mmio(a, &[0x8b, 0x03, 0x90]),
            Ok(AxVCpuExitReason::MmioRead { reg: 0, .. })
        ));
    }
    assert_eq!((v.decode_cache().hits(), v.decode_cache().misses()), (1, 1));
    assert_eq!(v.vmcb().save.rip, 0x20_0004);
    // The guest rewrote the instruction at the same place: mov [rbx], ecx.
    v.regs.rcx = 0x1234_5678;
    assert_eq!(
        v.decode_mmio(a, &[0x89, 0x0b]),
        Ok(AxVCpuExitReason::MmioWrite {
            addr: a,
            width: AccessWidth::Dword,
            data: 0x1234_5678
        })
    );
    assert_eq!(v.decode_cache().misses(), 2);
    // A store's data is read at each exit, not cached with the decode.
    v.regs.rcx = 0x9abc;
    assert_eq!(
        v.decode_mmio(a, &[0x89, 0x0b]),
        Ok(AxVCpuExitReason::MmioWrite {
            addr: a,
            width: AccessWidth::Dword,
            data: 0x9abc
        })
    );
    assert_eq!(v.decode_cache().hits(), 2);
}

#[test]
fn permission_maps() {
    let v = multiboot_vcpu();
    assert!(
        !v.msrpm
            .is_intercepted(msr::IA32_FS_BASE, MsrAccessKind::Write)
    );
    assert!(!v.msrpm.is_intercepted(msr::IA32_LSTAR, MsrAccessKind::Read));
    assert!(v.msrpm.is_intercepted(msr::IA32_EFER, MsrAccessKind::Write));
    assert!(
        v.msrpm
            .is_intercepted(msr::IA32_APIC_BASE, MsrAccessKind::Read)
    );
    assert!(!v.msrpm.is_intercepted(msr::IA32_TSC, MsrAccessKind::Read));
    assert!(v.msrpm.is_intercepted(msr::IA32_TSC, MsrAccessKind::Write));
    assert!(v.iopm.is_intercepted(0x3f8));
    assert!(v.iopm.is_intercepted(0x80));
}

#[test]
fn registers_route_rax_and_rsp_to_the_vmcb() {
    let mut v = multiboot_vcpu();
    v.set_gpr(4, 0x8000);
    v.set_gpr(0, 0x1234);
    v.set_gpr(15, 0x55);
    assert_eq!(v.vmcb().save.rsp, 0x8000);
    assert_eq!(v.vmcb().save.rax, 0x1234);
    assert_eq!(v.regs.r15, 0x55);
    assert_eq!(v.gpr(16), 0);
    v.set_return_value(7);
    assert_eq!(v.vmcb().save.rax, 7);
}

#[test]
fn cpuid_exit_filters_and_steps_two_bytes() {
    let mut v = multiboot_vcpu();
    v.set_gpr(0, 1);
    v.set_gpr(1, 0);
    assert_eq!(exit(&mut v, 0x72, 0, 0), Ok(AxVCpuExitReason::Nothing));
    assert_eq!(v.vmcb().save.rip, 0x10_0002);
    assert_eq!(v.gpr(0), 0x800f12);
    assert_ne!(v.gpr(1) & (1 << 31), 0, "hypervisor bit");
    assert_eq!(v.gpr(3) >> 24, 0, "APIC ID of vCPU 0");
    // The hypervisor leaf.
    v.set_gpr(0, 0x4000_0000);
    exit(&mut v, 0x72, 0, 0).unwrap();
    assert_eq!(v.gpr(0), 0x4000_0010);
    assert_eq!(v.gpr(3), u32::from_le_bytes(*b"AxHv").into());
    // SVM hidden.
    v.set_gpr(0, 0x8000_0001);
    exit(&mut v, 0x72, 0, 0).unwrap();
    assert_eq!(v.gpr(1) & 4, 0);
}

#[test]
fn nrip_is_used_when_saved() {
    let mut v = Vcpu::with_features(
        0,
        X86VcpuCreateConfig::new(0, 1),
        SvmFeatures {
            nrip_save: true,
            ..tcg_features()
        },
    )
    .unwrap();
    v.set_entry(GuestPhysAddr::from(0x10_0000usize)).unwrap();
    v.set_ept_root(HostPhysAddr::from(0x40_0000usize)).unwrap();
    v.setup(X86VcpuSetupConfig {
        boot: BootProtocol::Multiboot { info_paddr: 0 },
    })
    .unwrap();
    // `rep; hlt` style prefixes: nRIP knows the real length (2).
    v.vmcb_mut().control.next_rip = 0x10_0002;
    assert_eq!(exit(&mut v, 0x78, 0, 0), Ok(AxVCpuExitReason::Halt));
    assert_eq!(v.vmcb().save.rip, 0x10_0002);
}

#[test]
fn hlt_and_vmmcall() {
    let mut v = multiboot_vcpu();
    v.vmcb_mut().control.interrupt_shadow = 1;
    assert_eq!(exit(&mut v, 0x78, 0, 0), Ok(AxVCpuExitReason::Halt));
    assert_eq!(v.vmcb().save.rip, 0x10_0001);
    assert_eq!(v.vmcb().control.interrupt_shadow, 0);
    for (r, val) in [(0, 0x11), (7, 1), (6, 2), (2, 3), (10, 4), (8, 5), (9, 6)] {
        v.set_gpr(r, val);
    }
    assert_eq!(
        exit(&mut v, 0x81, 0, 0),
        Ok(AxVCpuExitReason::Hypercall {
            nr: 0x11,
            args: [1, 2, 3, 4, 5, 6]
        })
    );
    assert_eq!(v.vmcb().save.rip, 0x10_0004);
}

#[test]
fn port_io() {
    let mut v = multiboot_vcpu();
    v.set_gpr(0, 0xdead_1241);
    // out dx, al (0x3f8): SZ8, A32; EXITINFO2 = next RIP.
    let out = (0x3f8 << 16) | (1 << 8) | (1 << 4);
    assert_eq!(
        exit(&mut v, 0x7b, out, 0x10_0001),
        Ok(AxVCpuExitReason::IoWrite {
            port: 0x3f8,
            width: AccessWidth::Byte,
            data: 0x41
        })
    );
    assert_eq!(v.vmcb().save.rip, 0x10_0001);
    // in ax, 0x71 (imm8: 3 bytes with 0x66).
    let inw = (0x71 << 16) | (1 << 8) | (1 << 5) | 1;
    assert_eq!(
        exit(&mut v, 0x7b, inw, 0x10_0004),
        Ok(AxVCpuExitReason::IoRead {
            port: 0x71,
            width: AccessWidth::Word
        })
    );
    v.set_io_result(AccessWidth::Word, 0xbeef).unwrap();
    assert_eq!(v.gpr(0), 0xdead_beef);
    assert_eq!(v.vmcb().save.rip, 0x10_0004);
    // rep outsb: refused, not guessed.
    let outs = (0x3f8 << 16) | (1 << 8) | (1 << 4) | (1 << 3) | (1 << 2);
    assert!(matches!(
        exit(&mut v, 0x7b, outs, 0),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn completing_reads_writes_the_right_register_the_right_way() {
    let mut v = long_mode_vcpu();
    for r in 0..16 {
        v.set_gpr(r, 0x1111_1111_1111_1100 + r as u64);
    }
    // RAX lives in the VMCB: mov al, [m] keeps RAX[63:8].
    v.set_mmio_read_result(0, AccessWidth::Byte, AccessWidth::Byte, false, 0x1ab)
        .unwrap();
    assert_eq!(v.vmcb().save.rax, 0x1111_1111_1111_11ab);
    // RSP too: a 32-bit load zero-extends.
    v.set_mmio_read_result(
        4,
        AccessWidth::Dword,
        AccessWidth::Dword,
        false,
        0x8000_0000,
    )
    .unwrap();
    assert_eq!(v.vmcb().save.rsp, 0x8000_0000);
    // R9 in the register block: movsx r9, word [m].
    v.set_mmio_read_result(9, AccessWidth::Word, AccessWidth::Qword, true, 0xbeef)
        .unwrap();
    assert_eq!(v.regs.r9, 0xffff_ffff_ffff_beef);
    // The others are untouched.
    assert_eq!(v.regs.r8, 0x1111_1111_1111_1108);
    assert_eq!(v.regs.r10, 0x1111_1111_1111_110a);
    // No register 16, no load wider than its destination.
    assert!(
        v.set_mmio_read_result(16, AccessWidth::Byte, AccessWidth::Byte, false, 0)
            .is_err()
    );
    assert!(
        v.set_mmio_read_result(1, AccessWidth::Qword, AccessWidth::Dword, false, 0)
            .is_err()
    );
    assert_eq!(v.regs.rcx, 0x1111_1111_1111_1101);
    // RDMSR completion: EDX:EAX, upper halves cleared.
    v.set_msr_result(0x1234_5678_9abc_def0);
    assert_eq!((v.gpr(0), v.gpr(2)), (0x9abc_def0, 0x1234_5678));
    assert!(v.set_io_result(AccessWidth::Qword, 0).is_err());
    assert!(!v.entry_check_pending());
}

#[test]
fn msr_exits() {
    let mut v = long_mode_vcpu();
    v.set_gpr(1, 0x1b);
    assert_eq!(
        exit(&mut v, 0x7c, 0, 0),
        Ok(AxVCpuExitReason::MsrRead { msr: 0x1b })
    );
    assert_eq!(v.vmcb().save.rip, 0x20_0002);
    v.set_gpr(1, 0x830);
    v.set_gpr(2, 0x3);
    v.set_gpr(0, 0x0000_40fd);
    assert_eq!(
        exit(&mut v, 0x7c, 1, 0),
        Ok(AxVCpuExitReason::MsrWrite {
            msr: 0x830,
            value: 0x3_0000_40fd
        })
    );
    // EFER reads hide SVME.
    v.set_gpr(1, msr::IA32_EFER.into());
    assert_eq!(exit(&mut v, 0x7c, 0, 0), Ok(AxVCpuExitReason::Nothing));
    assert_eq!((v.gpr(0), v.gpr(2)), (0x500, 0));
    // EFER write of NXE|LME|SCE keeps SVME and LMA.
    v.set_gpr(0, 0x901);
    v.set_gpr(2, 0);
    let rip = v.vmcb().save.rip;
    exit(&mut v, 0x7c, 1, 0).unwrap();
    assert_eq!(v.vmcb().save.efer, 0x1d01);
    assert_eq!(v.vmcb().save.rip, rip + 2);
    // EFER.SVME from the guest: #GP(0), RIP stays.
    v.set_gpr(0, 0x1d01);
    exit(&mut v, 0x7c, 1, 0).unwrap();
    assert_eq!(v.vmcb().control.event_inj, 0x8000_0b0d);
    assert_eq!(v.vmcb().save.rip, rip + 2);
    // Clearing LME with paging on: #GP(0) too, EFER unchanged.
    v.set_gpr(0, 0x801);
    exit(&mut v, 0x7c, 1, 0).unwrap();
    assert_eq!(v.vmcb().control.event_inj, 0x8000_0b0d);
    assert_eq!(v.vmcb().save.efer, 0x1d01);
}

#[test]
fn nested_page_fault_and_mmio_decode() {
    let mut v = long_mode_vcpu();
    let r = exit(&mut v, 0x400, (1 << 32) | 0b110, 0xfee0_00b0);
    assert_eq!(
        r,
        Ok(AxVCpuExitReason::NestedPageFault {
            addr: GuestPhysAddr::from(0xfee0_00b0usize),
            access_flags: MappingFlags::WRITE
        })
    );
    let loc = v.guest_code_location();
    assert_eq!(
        (loc.linear_rip, loc.bitness, loc.cr3, loc.efer),
        (0x20_0000, 64, 0x1000, 0x500)
    );
    // mov dword [rax+0xb0], 0 (c7 80 b0 00 00 00 00 00 00 00) = EOI write.
    let insn = [0xc7, 0x80, 0xb0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00];
    let e = v
        .decode_mmio(GuestPhysAddr::from(0xfee0_00b0usize), &insn)
        .unwrap();
    assert_eq!(
        e,
        AxVCpuExitReason::MmioWrite {
            addr: GuestPhysAddr::from(0xfee0_00b0usize),
            width: AccessWidth::Dword,
            data: 0
        }
    );
    assert_eq!(v.vmcb().save.rip, 0x20_000a);
    // mov eax, [rbx] in a 32-bit multiboot guest; RIP = CS.base + EIP.
    let mut m = multiboot_vcpu();
    assert_eq!(m.guest_code_location().bitness, 32);
    let e = m
        .decode_mmio(GuestPhysAddr::from(0xfec0_0010usize), &[0x8b, 0x03])
        .unwrap();
    assert!(matches!(
        e,
        AxVCpuExitReason::MmioRead {
            reg: 0,
            width: AccessWidth::Dword,
            ..
        }
    ));
    assert_eq!(m.vmcb().save.rip, 0x10_0002);
    assert!(
        m.decode_mmio(GuestPhysAddr::from(0usize), &[0x01, 0x03])
            .is_err()
    );
    assert_eq!(
        m.vmcb().save.rip,
        0x10_0002,
        "RIP unchanged on a decode error"
    );
}

#[test]
fn interrupt_injection_waits_for_the_window() {
    let mut v = multiboot_vcpu();
    assert!(v.inject_interrupt(13).is_err());
    v.inject_interrupt(0x30).unwrap();
    // IF = 0 (multiboot): ask for a VINTR exit.
    v.prepare_entry();
    assert_eq!(v.vmcb().control.event_inj, 0);
    assert_ne!(v.vmcb().control.vintr & vintr::V_IRQ, 0);
    assert_ne!(
        v.vmcb().control.intercept_misc1 & InterceptMisc1::VINTR.bits(),
        0
    );
    v.vmcb_mut().save.rflags |= 1 << 9;
    assert_eq!(
        exit(&mut v, 0x64, 0, 0),
        Ok(AxVCpuExitReason::InterruptWindow)
    );
    assert_eq!(v.vmcb().control.vintr & vintr::V_IRQ, 0);
    assert_eq!(
        v.vmcb().control.intercept_misc1 & InterceptMisc1::VINTR.bits(),
        0
    );
    v.prepare_entry();
    assert_eq!(v.vmcb().control.event_inj, 0x8000_0030);
    assert_eq!(v.pending_interrupts(), 0);
    // An interrupt shadow (after STI/MOV SS) also blocks.
    v.vmcb_mut().control.event_inj = 0;
    v.inject_interrupt(0x31).unwrap();
    v.vmcb_mut().control.interrupt_shadow = 1;
    v.prepare_entry();
    assert_eq!(v.vmcb().control.event_inj, 0);
}

#[test]
fn ready_for_interrupt_follows_if_shadow_and_queue() {
    let mut v = multiboot_vcpu();
    // IF = 0 at the multiboot entry.
    assert!(!v.ready_for_interrupt());
    v.vmcb_mut().save.rflags |= 1 << 9;
    assert!(v.ready_for_interrupt());
    v.vmcb_mut().control.interrupt_shadow = 1;
    assert!(!v.ready_for_interrupt());
    v.vmcb_mut().control.interrupt_shadow = 0;
    v.inject_interrupt(0x30).unwrap();
    assert!(!v.ready_for_interrupt(), "one is queued already");
    v.prepare_entry();
    assert!(!v.ready_for_interrupt(), "one is being injected");
    v.vmcb_mut().control.event_inj = 0;
    assert!(v.ready_for_interrupt());
    // The window request alone: VINTR armed, nothing injected.
    v.request_interrupt_window().unwrap();
    assert_ne!(v.vmcb().control.vintr & vintr::V_IRQ, 0);
    assert_ne!(
        v.vmcb().control.intercept_misc1 & InterceptMisc1::VINTR.bits(),
        0
    );
    assert_eq!(v.vmcb().control.event_inj, 0);
}

#[test]
fn interrupted_event_is_reinjected() {
    let mut v = long_mode_vcpu();
    let c = &mut v.vmcb_mut().control;
    c.exit_code = 0x400;
    c.exit_info_1 = 1 << 33;
    c.exit_info_2 = 0x5000;
    c.exit_int_info = 0x0000_0002_8000_0b0e; // #PF being delivered
    v.handle_exit(&amd_cpuid()).unwrap();
    assert_eq!(v.vmcb().control.event_inj, 0x0000_0002_8000_0b0e);
    // ... and pending interrupts wait behind it.
    v.inject_interrupt(0x40).unwrap();
    v.vmcb_mut().save.rflags |= 1 << 9;
    v.prepare_entry();
    assert_eq!(v.vmcb().control.event_inj, 0x0000_0002_8000_0b0e);
}

#[test]
fn fatal_and_odd_exits() {
    let mut v = multiboot_vcpu();
    assert_eq!(exit(&mut v, 0x7f, 0, 0), Ok(AxVCpuExitReason::TripleFault));
    assert_eq!(
        exit(&mut v, u64::MAX, 0, 0),
        Ok(AxVCpuExitReason::FailEntry {
            hardware_entry_failure_reason: u64::MAX
        })
    );
    // QEMU TCG stores VMEXIT_INVALID as a 32-bit -1; reported as -1.
    assert_eq!(
        exit(&mut v, 0xffff_ffff, 0, 0),
        Ok(AxVCpuExitReason::FailEntry {
            hardware_entry_failure_reason: u64::MAX
        })
    );
    assert_eq!(exit(&mut v, 0x00, 0, 0), Err(Error::UnknownExit(0)));
    assert_eq!(exit(&mut v, 0x60, 0, 0), Ok(AxVCpuExitReason::Nothing));
    // VMRUN from the guest: #UD.
    assert_eq!(exit(&mut v, 0x80, 0, 0), Ok(AxVCpuExitReason::Nothing));
    assert_eq!(v.vmcb().control.event_inj, 0x8000_0306);
}

#[test]
fn xsetbv_is_checked() {
    let mut v = long_mode_vcpu();
    v.set_gpr(1, 0);
    v.set_gpr(0, 0x7);
    v.set_gpr(2, 0);
    assert_eq!(exit(&mut v, 0x8d, 0, 0), Ok(AxVCpuExitReason::Nothing));
    assert_eq!(v.guest_xcr0(), 7);
    assert_eq!(v.vmcb().save.rip, 0x20_0003);
    // AVX-512 state (bit 5) the host lacks: #GP(0), XCR0 unchanged.
    v.set_gpr(0, 0x27);
    exit(&mut v, 0x8d, 0, 0).unwrap();
    assert_eq!(v.guest_xcr0(), 7);
    assert_eq!(v.vmcb().control.event_inj, 0x8000_0b0d);
    assert_eq!(v.vmcb().save.rip, 0x20_0003);
}

#[test]
fn bind_flushes_the_asid() {
    let mut v = multiboot_vcpu();
    v.vmcb_mut().control.tlb_control = 0;
    v.bind().unwrap();
    // QEMU TCG has no FlushByAsid: the whole TLB is flushed.
    assert_eq!(v.vmcb().control.tlb_control, tlb_control::FLUSH_ALL);
    let mut w = Vcpu::with_features(
        0,
        X86VcpuCreateConfig::new(0, 1),
        SvmFeatures {
            flush_by_asid: true,
            ..tcg_features()
        },
    )
    .unwrap();
    w.bind().unwrap();
    assert_eq!(w.vmcb().control.tlb_control, tlb_control::FLUSH_ASID);
    v.unbind().unwrap();
}

#[test]
fn per_cpu_enable_and_disable() {
    let mut p = <SvmPerCpu<TestHal> as AxArchPerCpu>::new(0).unwrap();
    let mut msrs = crate::msr::FakeMsrs::new().with(msr::IA32_EFER, 0xd01);
    p.enable_with(&mut msrs, &amd_cpuid()).unwrap();
    assert!(p.is_enabled());
    assert_eq!(msrs.read(msr::IA32_EFER), 0x1d01);
    let hsave = msrs.read(msr::AMD_VM_HSAVE_PA);
    assert_ne!(hsave, 0);
    assert_eq!(hsave % 4096, 0);
    assert!(p.enable_with(&mut msrs, &amd_cpuid()).is_err());
    p.disable_with(&mut msrs).unwrap();
    assert!(!p.is_enabled());
    assert_eq!(msrs.read(msr::IA32_EFER), 0xd01);
    assert_eq!(msrs.read(msr::AMD_VM_HSAVE_PA), 0);
    assert!(p.disable_with(&mut msrs).is_err());
}

#[test]
fn per_cpu_refuses_without_svm() {
    let mut p = <SvmPerCpu<TestHal> as AxArchPerCpu>::new(0).unwrap();
    let mut msrs =
        crate::msr::FakeMsrs::new().with(msr::AMD_VM_CR, msr::vm_cr::SVMDIS | msr::vm_cr::LOCK);
    assert!(matches!(
        p.enable_with(&mut msrs, &amd_cpuid()),
        Err(Error::VirtualizationUnavailable(_))
    ));
    assert!(msrs.writes.is_empty());
    let no_np = amd_cpuid().with(0x8000_000A, 0, CpuidResult::new(1, 16, 0, 0));
    assert!(matches!(
        p.enable_with(&mut crate::msr::FakeMsrs::new(), &no_np),
        Err(Error::Unsupported(_))
    ));
    let intel = FakeCpuid::new().with(0, 0, vendor_leaf(0x16, b"GenuineIntel"));
    assert!(matches!(
        p.enable_with(&mut crate::msr::FakeMsrs::new(), &intel),
        Err(Error::VirtualizationUnavailable(_))
    ));
    assert!(!p.is_enabled());
}

#[test]
fn custom_state_keeps_everything_but_rip() {
    let mut s = GuestState::long_mode(0, 0x3000);
    s.regs.rdi = 0x42;
    s.rsp = 0x9000;
    let v = vcpu_with(BootProtocol::Custom(std::boxed::Box::new(s)), 0x40_0000);
    assert_eq!(v.vmcb().save.rip, 0x40_0000);
    assert_eq!(v.vmcb().save.rsp, 0x9000);
    assert_eq!(v.gpr(7), 0x42);
}

#[test]
fn set_entry_and_root_after_setup() {
    let mut v = multiboot_vcpu();
    v.set_entry(GuestPhysAddr::from(0x20_0000usize)).unwrap();
    assert_eq!(v.vmcb().save.rip, 0x20_0000);
    v.vmcb_mut().control.tlb_control = 0;
    v.set_ept_root(HostPhysAddr::from(0x80_0000usize)).unwrap();
    assert_eq!(v.vmcb().control.n_cr3, 0x80_0000);
    assert_eq!(v.vmcb().control.tlb_control, tlb_control::FLUSH_ALL);
    let mut p = <SvmPerCpu<TestHal> as AxArchPerCpu>::new(0).unwrap();
    assert!(matches!(
        p.hardware_enable(),
        Err(axvcpu::Error::Unsupported(_))
    ));
}

/// The syscall MSRs a NimbOS-like kernel sets (SDM/APM: STAR holds the
/// SYSRET base selector in 63:48 and the SYSCALL CS in 47:32).
fn nimbos_msrs() -> SyscallMsrs {
    SyscallMsrs {
        star: 0x001b_0008_0000_0000,
        lstar: 0xffff_ff80_0020_1000,
        cstar: 0xffff_ff80_0020_2000,
        fmask: 0x4_7700,
        kernel_gs_base: 0xffff_ff80_0030_0000,
        tsc_aux: 2,
    }
}

#[test]
fn syscall_msrs_live_in_the_vmcb_and_tsc_aux_in_the_switch() {
    let mut s = GuestState::long_mode(0, 0x3000);
    s.syscall_msrs = nimbos_msrs();
    let mut v = Vcpu::with_features(
        0,
        X86VcpuCreateConfig::new(0, 1),
        SvmFeatures {
            rdtscp: true,
            ..tcg_features()
        },
    )
    .unwrap();
    v.set_entry(GuestPhysAddr::from(0x20_0000usize)).unwrap();
    v.set_ept_root(HostPhysAddr::from(0x40_0000usize)).unwrap();
    v.setup(X86VcpuSetupConfig {
        boot: BootProtocol::Custom(std::boxed::Box::new(s)),
    })
    .unwrap();
    // VMLOAD takes them from the VMCB (APM table B-2 offsets 0x600-0x620).
    let save = &v.vmcb().save;
    assert_eq!(save.star, 0x001b_0008_0000_0000);
    assert_eq!(save.lstar, 0xffff_ff80_0020_1000);
    assert_eq!(save.cstar, 0xffff_ff80_0020_2000);
    assert_eq!(save.sfmask, 0x4_7700);
    assert_eq!(save.kernel_gs_base, 0xffff_ff80_0030_0000);
    // TSC_AUX is switched in software and passed through.
    assert_eq!(v.msr_switch().msrs(), [msr::IA32_TSC_AUX]);
    assert!(
        !v.msrpm
            .is_intercepted(msr::IA32_TSC_AUX, MsrAccessKind::Read)
    );
    assert!(
        !v.msrpm
            .is_intercepted(msr::IA32_TSC_AUX, MsrAccessKind::Write)
    );
    let hw = crate::msr::FakeMsrs::new().with(msr::IA32_TSC_AUX, 9);
    assert_eq!(v.syscall_msrs(&hw), nimbos_msrs());
    // A second vCPU (another VM) has its own, reset, values.
    let w = multiboot_vcpu();
    assert_eq!(w.syscall_msrs(&hw), SyscallMsrs::default());
    // Without RDTSCP, TSC_AUX is not touched and stays intercepted.
    assert!(w.msr_switch().msrs().is_empty());
    assert!(
        w.msrpm
            .is_intercepted(msr::IA32_TSC_AUX, MsrAccessKind::Read)
    );
    // Set later: the VMCB and the switch both follow.
    let mut w = w;
    let mut m = nimbos_msrs();
    m.lstar = 0x20_3000;
    w.set_syscall_msrs(m).unwrap();
    assert_eq!(w.vmcb().save.lstar, 0x20_3000);
    m.kernel_gs_base = 0x8000_0000_0000;
    assert!(w.set_syscall_msrs(m).is_err());
    assert_eq!(w.vmcb().save.kernel_gs_base, 0xffff_ff80_0030_0000);
}

#[test]
fn setup_refuses_syscall_msrs_wrmsr_would_refuse() {
    let mut s = GuestState::long_mode(0, 0x3000);
    s.syscall_msrs.lstar = 0x0000_8000_0000_0000; // not canonical
    let mut v = Vcpu::with_features(0, X86VcpuCreateConfig::new(0, 1), tcg_features()).unwrap();
    v.set_entry(GuestPhysAddr::from(0x20_0000usize)).unwrap();
    v.set_ept_root(HostPhysAddr::from(0x40_0000usize)).unwrap();
    assert!(
        v.setup(X86VcpuSetupConfig {
            boot: BootProtocol::Custom(std::boxed::Box::new(s)),
        })
        .is_err()
    );
}

#[test]
fn cpuid_exit_reports_the_tsc_frequency_in_leaf_0x16() {
    let mut config = X86VcpuCreateConfig::new(0, 1);
    config.cpuid.tsc_khz = 2_994_512;
    let mut v = Vcpu::with_features(0, config, tcg_features()).unwrap();
    v.set_entry(GuestPhysAddr::from(0x10_0000usize)).unwrap();
    v.set_ept_root(HostPhysAddr::from(0x40_0000usize)).unwrap();
    v.setup(X86VcpuSetupConfig {
        boot: BootProtocol::Multiboot { info_paddr: 0x9500 },
    })
    .unwrap();
    // QEMU's EPYC stops at leaf 0xd; the guest sees 0x16.
    v.set_gpr(0, 0);
    exit(&mut v, 0x72, 0, 0).unwrap();
    assert_eq!(v.gpr(0), 0x16);
    v.set_gpr(0, 0x16);
    exit(&mut v, 0x72, 0, 0).unwrap();
    assert_eq!((v.gpr(0), v.gpr(3), v.gpr(1)), (2995, 2995, 1000));
    // A leaf between the host's maximum and 0x16 reads as zeros.
    v.set_gpr(0, 0x10);
    exit(&mut v, 0x72, 0, 0).unwrap();
    assert_eq!((v.gpr(0), v.gpr(3), v.gpr(1), v.gpr(2)), (0, 0, 0, 0));
    // Timing leaf as before.
    v.set_gpr(0, 0x4000_0010);
    exit(&mut v, 0x72, 0, 0).unwrap();
    assert_eq!(v.gpr(0), 2_994_512);
}
