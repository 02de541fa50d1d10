//! MMIO emulation: a nested page fault on the test window becomes a device
//! access, decoded from the guest's real instruction bytes.

use axaddrspace::{AccessWidth, MappingFlags};
use axvcpu::AxVCpuExitReason as E;
use axvm::{ExitStats, VmExit};

use crate::common::*;
use crate::mock::{flat32, long_mode};

const WINDOW: usize = 0xfeb0_0000;

fn npf(addr: usize, access: MappingFlags) -> E {
    E::NestedPageFault {
        addr: gpa(addr),
        access_flags: access,
    }
}

fn window_u64(vm: &TestVm, off: usize) -> u64 {
    vm.devices()
        .handle_mmio_read(gpa(WINDOW + off), AccessWidth::Qword)
        .unwrap()
}

/// A VM whose vCPU 0 executes `insn` at GVA [`CODE_GVA`] in 64-bit mode,
/// with RDI = the window + `rdi_off`, faulting on `addr` with `access`.
fn vm_executing(insn: &[u8], addr: usize, access: MappingFlags) -> TestVm {
    let (mut vm, _) = build(vec![npf(addr, access), E::Halt]);
    map_code_pages(&mut vm);
    vm.aspace_mut().write(gpa(CODE_GPA), insn).unwrap();
    let m = mock_mut(&mut vm);
    m.loc = long_mode(CODE_GVA, CR3);
    m.regs[7] = WINDOW as u64; // RDI
    vm
}

#[test]
fn a_store_becomes_a_device_write() {
    // mov dword ptr [rdi + 0x10], eax
    let mut vm = vm_executing(&[0x89, 0x47, 0x10], WINDOW + 0x10, MappingFlags::WRITE);
    mock_mut(&mut vm).regs[0] = 0x1122_3344_5566_7788;
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    // Four bytes, little endian; the rest of the window untouched.
    assert_eq!(window_u64(&vm, 0x10), 0x5566_7788);
    assert_eq!(window_u64(&vm, 0x8), 0);
    // RIP stepped over the 3-byte instruction.
    assert_eq!(mock(&vm).loc.linear_rip, CODE_GVA + 3);
    assert_eq!(
        vm.exit_stats(),
        ExitStats {
            mmio_writes: 1,
            exits: vm.exit_stats().exits.clone(),
            ..ExitStats::new()
        }
    );
    assert!(vm.exit_stats().to_string().contains("NestedPageFault: 1\n"));
    assert!(vm.exit_stats().to_string().contains("mmio_writes: 1\n"));
}

#[test]
fn loads_set_the_register_as_the_instruction_says() {
    // (instruction, offset it accesses, preset RAX, expected RAX) with the
    // word 0xbeef at window + 0x12 and the byte 0x80 at window + 0x14. The
    // device address is the faulting GPA; the instruction gives the rest.
    let cases: [(&[u8], usize, u64, u64); 4] = [
        // movsx rax, word ptr [rdi + 0x12]: sign-extended to 64 bits.
        (
            &[0x48, 0x0f, 0xbf, 0x47, 0x12],
            0x12,
            0,
            0xffff_ffff_ffff_beef,
        ),
        // mov al, byte ptr [rdi + 0x14]: RAX[63:8] kept.
        (
            &[0x8a, 0x47, 0x14],
            0x14,
            0xa1a2_a3a4_a5a6_a7a8,
            0xa1a2_a3a4_a5a6_a780,
        ),
        // movzx eax, word ptr [rdi + 0x12]: 32-bit destination clears RAX[63:32].
        (&[0x0f, 0xb7, 0x47, 0x12], 0x12, u64::MAX, 0xbeef),
        // mov rax, qword ptr [rdi + 0x10]
        (&[0x48, 0x8b, 0x47, 0x10], 0x10, 0, 0x0000_0080_beef_0000),
    ];
    for (insn, off, preset, expected) in cases {
        let mut vm = vm_executing(insn, WINDOW + off, MappingFlags::READ);
        vm.devices()
            .handle_mmio_write(gpa(WINDOW + 0x12), AccessWidth::Word, 0xbeef)
            .unwrap();
        vm.devices()
            .handle_mmio_write(gpa(WINDOW + 0x14), AccessWidth::Byte, 0x80)
            .unwrap();
        mock_mut(&mut vm).regs[0] = preset;
        assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt), "{insn:02x?}");
        assert_eq!(mock(&vm).regs[0], expected, "{insn:02x?}");
        assert_eq!(mock(&vm).loc.linear_rip, CODE_GVA + insn.len() as u64);
        assert_eq!(vm.exit_stats().mmio_reads, 1);
    }
}

#[test]
fn an_instruction_across_a_page_boundary_is_read_from_both_pages() {
    // `mov dword ptr [rdi], eax` (89 07) with 89 on the last byte of the
    // first code page (GPA 0x30_0fff) and 07 on the next guest page, which
    // maps GPA 0x50_0000.
    let (mut vm, _) = build(vec![npf(WINDOW, MappingFlags::WRITE), E::Halt]);
    map_code_pages(&mut vm);
    vm.aspace_mut()
        .write(gpa(CODE_GPA + 0xfff), &[0x89])
        .unwrap();
    vm.aspace_mut().write(gpa(NEXT_GPA), &[0x07]).unwrap();
    // What follows in the physically next page must not be used.
    vm.aspace_mut()
        .write(gpa(CODE_GPA + 0x1000), &[0xcc])
        .unwrap();
    let m = mock_mut(&mut vm);
    m.loc = long_mode(CODE_GVA + 0xfff, CR3);
    m.regs[0] = 0xcafe_f00d;
    m.regs[7] = WINDOW as u64;
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    let fetched = &mock(&vm).decoded[0];
    assert_eq!(fetched.len(), axvm::MAX_INSN_LEN);
    assert_eq!(&fetched[..2], &[0x89, 0x07]);
    assert_eq!(window_u64(&vm, 0), 0xcafe_f00d);
    assert_eq!(mock(&vm).loc.linear_rip, CODE_GVA + 0x1001);
}

#[test]
fn without_paging_the_linear_address_is_the_physical_one() {
    // 32-bit protected mode, paging off: `mov dword ptr [edi + 4], 0x12345678`.
    let (mut vm, _) = build(vec![npf(WINDOW + 4, MappingFlags::WRITE), E::Halt]);
    vm.aspace_mut()
        .write(gpa(CODE_GPA), &[0xc7, 0x47, 0x04, 0x78, 0x56, 0x34, 0x12])
        .unwrap();
    let m = mock_mut(&mut vm);
    m.loc = flat32(CODE_GPA as u64);
    m.regs[7] = WINDOW as u64;
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    assert_eq!(window_u64(&vm, 0), 0x1234_5678_0000_0000);
    assert_eq!(mock(&vm).loc.linear_rip, CODE_GPA as u64 + 7);
}

#[test]
fn read_modify_write_instructions_are_emulated() {
    // NimbOS clears HPET Tn_CONF.INT_ENB: and qword ptr [rdi], -5.
    let mut vm = vm_executing(&[0x48, 0x83, 0x27, 0xfb], WINDOW, MappingFlags::WRITE);
    vm.devices()
        .handle_mmio_write(gpa(WINDOW), AccessWidth::Qword, 0x8000_0000_0000_0036)
        .unwrap();
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    assert_eq!(window_u64(&vm, 0), 0x8000_0000_0000_0032);
    assert_eq!(mock(&vm).loc.linear_rip, CODE_GVA + 4);
    // SF (bit 63 set), PF (0x32 has three ones: odd, so clear), ZF clear.
    assert_eq!(mock(&vm).rflags & 0x8d5, 0x80);
    assert_eq!(
        (vm.exit_stats().mmio_reads, vm.exit_stats().mmio_writes),
        (1, 1)
    );

    // add dword ptr [rdi + 8], eax wraps to 0: CF, ZF, PF (and AF) set.
    let mut vm = vm_executing(&[0x01, 0x47, 0x08], WINDOW + 8, MappingFlags::WRITE);
    vm.devices()
        .handle_mmio_write(gpa(WINDOW + 8), AccessWidth::Dword, 0xffff_ffff)
        .unwrap();
    mock_mut(&mut vm).regs[0] = 1;
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    assert_eq!(window_u64(&vm, 8), 0);
    assert_eq!(mock(&vm).rflags & 0x8d5, 0x55);

    // cmp dword ptr [rdi], 7 reads only: the device is not written.
    let mut vm = vm_executing(&[0x83, 0x3f, 0x07], WINDOW, MappingFlags::READ);
    vm.devices()
        .handle_mmio_write(gpa(WINDOW), AccessWidth::Dword, 7)
        .unwrap();
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    assert_eq!(
        (vm.exit_stats().mmio_reads, vm.exit_stats().mmio_writes),
        (1, 0)
    );
    assert_eq!(mock(&vm).rflags & 0x8d5, 0x44, "ZF and PF: equal");
    assert_eq!(mock(&vm).loc.linear_rip, CODE_GVA + 3);
}

#[test]
fn an_undecodable_instruction_stops_the_vm_without_panicking() {
    // xchg dword ptr [rdi], eax: neither a move nor an ALU operation.
    let mut vm = vm_executing(&[0x87, 0x07], WINDOW, MappingFlags::WRITE);
    let exit = vm.run_vcpu(0).unwrap();
    let VmExit::Unhandled { reason, rip } = &exit else {
        panic!("expected Unhandled, got {exit:?}");
    };
    assert_eq!(*rip, CODE_GVA);
    assert!(reason.contains("0xfeb00000"), "{reason}");
    assert!(vm.is_stopped());
    // Nothing was written.
    assert_eq!(window_u64(&vm, 0), 0);
}

#[test]
fn code_the_guest_page_tables_do_not_map_is_unhandled() {
    // RIP in a GVA page the guest tables leave unmapped (PD[3]).
    let mut vm = vm_executing(&[0x89, 0x07], WINDOW, MappingFlags::WRITE);
    mock_mut(&mut vm).loc = long_mode(0x60_0000, CR3);
    let exit = vm.run_vcpu(0).unwrap();
    assert!(
        matches!(&exit, VmExit::Unhandled { rip: 0x60_0000, reason } if reason.contains("cannot fetch")),
        "{exit:?}"
    );
}

#[test]
fn executing_from_the_window_is_a_bad_access() {
    let (mut vm, _) = build(vec![npf(WINDOW, MappingFlags::EXECUTE)]);
    mock_mut(&mut vm).loc = flat32(WINDOW as u64);
    assert_eq!(
        vm.run_vcpu(0),
        Ok(VmExit::BadAccess {
            gpa: gpa(WINDOW),
            rip: WINDOW as u64,
            access: MappingFlags::EXECUTE
        })
    );
}

#[test]
fn an_access_past_the_end_of_the_window_reads_all_ones() {
    // mov rax, qword ptr [rdi + 0xffc]: runs 4 bytes past the window.
    let mut vm = vm_executing(
        &[0x48, 0x8b, 0x87, 0xfc, 0x0f, 0x00, 0x00],
        WINDOW + 0xffc,
        MappingFlags::READ,
    );
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    assert_eq!(mock(&vm).regs[0], u64::MAX);
    assert_eq!(vm.exit_stats().device_errors, 1);
}

#[test]
fn mmio_exits_reported_by_the_vcpu_are_emulated_too() {
    let (mut vm, _) = build(vec![
        E::MmioWrite {
            addr: gpa(WINDOW + 8),
            width: AccessWidth::Word,
            data: 0xabcd,
        },
        E::MmioRead {
            addr: gpa(WINDOW + 8),
            width: AccessWidth::Byte,
            reg: 3,
            reg_width: AccessWidth::Qword,
            signed_ext: true,
        },
        E::Halt,
    ]);
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    // RBX = sign-extended 0xcd.
    assert_eq!(mock(&vm).regs[3], 0xffff_ffff_ffff_ffcd);
    let s = vm.exit_stats();
    assert_eq!((s.mmio_reads, s.mmio_writes), (1, 1));
}

#[test]
fn rewritten_code_and_remapped_pages_are_fetched_anew() {
    // Three MMIO stores at the same RIP; between them the guest rewrites
    // the instruction, then points the code page elsewhere. The fetch
    // caches (page walk, host page) must not hand back the old bytes.
    let store = || npf(WINDOW, MappingFlags::WRITE);
    let (mut vm, _) = build(vec![store(), E::Halt, store(), E::Halt, store(), E::Halt]);
    map_code_pages(&mut vm);
    // mov dword ptr [rdi], eax
    vm.aspace_mut().write(gpa(CODE_GPA), &[0x89, 0x07]).unwrap();
    let m = mock_mut(&mut vm);
    m.loc = long_mode(CODE_GVA, CR3);
    m.regs[0] = 0x1122_3344;
    m.regs[1] = 0xab;
    m.regs[2] = 0x5566;
    m.regs[7] = WINDOW as u64;
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    assert_eq!(window_u64(&vm, 0), 0x1122_3344);

    // Self-modifying code: mov byte ptr [rdi], cl.
    vm.aspace_mut().write(gpa(CODE_GPA), &[0x88, 0x0f]).unwrap();
    mock_mut(&mut vm).loc.linear_rip = CODE_GVA;
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    assert_eq!(window_u64(&vm, 0), 0x1122_33ab);

    // The guest maps its code page to GPA NEXT_GPA, which holds
    // mov word ptr [rdi], dx; the old page still has the old bytes.
    vm.aspace_mut()
        .write(gpa(NEXT_GPA), &[0x66, 0x89, 0x17])
        .unwrap();
    vm.aspace_mut()
        .write_obj(gpa(0x4000), &(NEXT_GPA as u64 | 0b11))
        .unwrap();
    mock_mut(&mut vm).loc.linear_rip = CODE_GVA;
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    assert_eq!(window_u64(&vm, 0), 0x1122_5566);
    let fetched: Vec<_> = mock(&vm).decoded.iter().map(|b| b[..3].to_vec()).collect();
    assert_eq!(
        fetched,
        [
            vec![0x89, 0x07, 0],
            vec![0x88, 0x0f, 0],
            vec![0x66, 0x89, 0x17]
        ]
    );
    assert_eq!(vm.exit_stats().mmio_writes, 3);
}
