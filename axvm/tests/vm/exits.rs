//! The exit loop: what is settled inside the VM and what reaches the caller.

use axaddrspace::{AccessWidth, MappingFlags};
use axvcpu::{AxVCpuExitReason as E, ExitReasonKind, VCpuState};
use axvm::{Error, StopReason, VmExit, VmState};
use axvmconfig::{MapKind, MemFlags, MemoryRegion};

use crate::common::*;
use crate::mock::flat32;

fn out(port: u16, width: AccessWidth, data: u64) -> E {
    E::IoWrite { port, width, data }
}

fn inp(port: u16, width: AccessWidth) -> E {
    E::IoRead { port, width }
}

#[test]
fn serial_output_lands_in_the_console() {
    let script = b"hi\n"
        .iter()
        .map(|&b| out(0x3f8, AccessWidth::Byte, b.into()))
        .chain([E::Halt])
        .collect();
    let (mut vm, console) = build(script);
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    assert_eq!(console.drain(), b"hi\n");
    assert_eq!(vm.state(), &VmState::Running);
    // Bound once, on the first run, and left bound.
    assert_eq!(mock(&vm).binds, 1);
    assert_eq!(vm.vcpu(0).unwrap().state(), VCpuState::Ready);
    let s = vm.exit_stats();
    assert_eq!(s.exits_of(ExitReasonKind::IoWrite), 3);
    assert_eq!(s.exits_of(ExitReasonKind::Halt), 1);
    assert_eq!(s.to_string(), "exits: 4\nIoWrite: 3\nHalt: 1\n");
    assert_eq!(vm.vcpu(0).unwrap().exit_counters().total(), 4);
}

#[test]
fn line_status_register_reads_transmitter_empty() {
    let (mut vm, _) = build(vec![inp(0x3fd, AccessWidth::Byte), E::Halt]);
    mock_mut(&mut vm).regs[0] = 0x1122_3344_5566_7788;
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    // LSR = THRE (bit 5) | TEMT (bit 6); an 8-bit IN keeps RAX[63:8].
    assert_eq!(mock(&vm).regs[0], 0x1122_3344_5566_7760);
}

#[test]
fn unclaimed_ports_read_all_ones_and_swallow_writes() {
    let (mut vm, _) = build(vec![
        inp(0x80, AccessWidth::Word),
        E::Halt,
        inp(0x1234, AccessWidth::Dword),
        out(0x80, AccessWidth::Byte, 0x42),
        E::Halt,
    ]);
    mock_mut(&mut vm).regs[0] = 0x1122_3344_5566_7788;
    vm.run_vcpu(0).unwrap();
    // A 16-bit IN keeps RAX[63:16].
    assert_eq!(mock(&vm).regs[0], 0x1122_3344_5566_ffff);
    vm.run_vcpu(0).unwrap();
    // A 32-bit IN zero-extends into RAX.
    assert_eq!(mock(&vm).regs[0], 0xffff_ffff);
    let s = vm.exit_stats();
    assert_eq!((s.unclaimed_port_reads, s.unclaimed_port_writes), (2, 1));
    assert!(s.to_string().contains("unclaimed_port_reads: 2\n"));
}

#[test]
fn unclaimed_msrs_read_zero_and_swallow_writes() {
    let (mut vm, _) = build(vec![
        E::MsrRead { msr: 0xc001_1029 },
        E::MsrWrite {
            msr: 0xc001_1029,
            value: 5,
        },
        E::Halt,
    ]);
    mock_mut(&mut vm).regs[0] = u64::MAX;
    mock_mut(&mut vm).regs[2] = u64::MAX;
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    // EDX:EAX = 0, upper halves cleared.
    assert_eq!((mock(&vm).regs[0], mock(&vm).regs[2]), (0, 0));
    let s = vm.exit_stats();
    assert_eq!((s.unclaimed_msr_reads, s.unclaimed_msr_writes), (1, 1));
}

#[test]
fn debug_exit_ends_the_vm_with_the_guests_code() {
    // guests/: `out 0xf4, al` with AL = 0 for pass.
    let (mut vm, _) = build(vec![out(0xf4, AccessWidth::Byte, 0), E::Halt]);
    let exit = vm.run_vcpu(0).unwrap();
    assert_eq!(exit, VmExit::DebugExit { code: 0, status: 1 });
    assert!(exit.stops_vm());
    assert_eq!(vm.state(), &VmState::Stopped(StopReason::Guest(exit)));
    assert!(matches!(vm.run_vcpu(0), Err(Error::Stopped { id: 1, .. })));
    // The vCPU did not run again.
    assert_eq!(mock(&vm).runs, 1);

    // 0x7e: unexpected CPU exception in the guest.
    let (mut vm, _) = build(vec![out(0xf7, AccessWidth::Byte, 0x7e)]);
    assert_eq!(
        vm.run_vcpu(0),
        Ok(VmExit::DebugExit {
            code: 0x7e,
            status: 0xfd
        })
    );
}

#[test]
fn power_off_port_and_system_down() {
    // The test-guest config has a power_off at 0x604.
    let c = test_config();
    // outw(0x604, 0x2000): SLP_EN with SLP_TYP 0.
    let (mut vm, _) = build_with(&c, vec![out(0x604, AccessWidth::Word, 0x2000)]).unwrap();
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::PowerOff));
    assert!(vm.is_stopped());

    let (mut vm, _) = build(vec![E::SystemDown]);
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::PowerOff));
}

#[test]
fn hypercalls_reach_the_caller_and_get_their_result() {
    let (mut vm, _) = build(vec![
        E::Hypercall {
            nr: 0,
            args: [1, 2, 3, 4, 5, 6],
        },
        E::Halt,
    ]);
    assert_eq!(
        vm.run_vcpu(0),
        Ok(VmExit::Hypercall {
            nr: 0,
            args: [1, 2, 3, 4, 5, 6]
        })
    );
    vm.set_hypercall_result(0, 0x0001_0000).unwrap();
    assert_eq!(mock(&vm).regs[0], 0x0001_0000);
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    assert!(!vm.is_stopped());
    assert!(matches!(
        vm.set_hypercall_result(5, 0),
        Err(Error::NoSuchVCpu { id: 5 })
    ));
}

#[test]
fn a_hypercall_handler_answers_in_the_loop_and_defers_the_rest() {
    let hc = |nr: u64| E::Hypercall {
        nr,
        args: [1, 2, 3, 4, 5, 6],
    };
    let (mut vm, _) = build(vec![hc(0), hc(0), hc(0x10), E::Halt]);
    let mut seen = Vec::new();
    // The handler answers number 0 (the version) and leaves 0x10 to the
    // caller.
    let exit = vm.run_vcpu_with(0, |nr, args| {
        seen.push((nr, *args));
        (nr == 0).then_some(0x0001_0000)
    });
    assert_eq!(
        exit,
        Ok(VmExit::Hypercall {
            nr: 0x10,
            args: [1, 2, 3, 4, 5, 6]
        })
    );
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0], (0, [1, 2, 3, 4, 5, 6]));
    // The answered ones went to RAX without leaving the loop: three runs.
    assert_eq!(mock(&vm).runs, 3);
    assert_eq!(mock(&vm).regs[0], 0x0001_0000);
    vm.set_hypercall_result(0, 7).unwrap();
    assert_eq!(vm.run_vcpu_with(0, |_, _| None), Ok(VmExit::Halt));
    assert_eq!(mock(&vm).regs[0], 7);
    // Every exit counted once, answered or not.
    let s = vm.exit_stats();
    assert_eq!(s.exits_of(ExitReasonKind::Hypercall), 3);
    assert_eq!(s.exits.total(), 4);
    assert_eq!(&s.exits, vm.vcpu(0).unwrap().exit_counters());
    vm.reset_exit_stats();
    assert_eq!(vm.exit_stats().exits.total(), 0);
    assert_eq!(vm.vcpu(0).unwrap().exit_counters().total(), 0);
}

#[test]
fn only_writes_to_the_power_ports_can_end_the_vm() {
    // The test-guest config has a power_off at 0x604.
    let c = test_config();
    // Writes to the UART and to an unclaimed port around the power-off
    // port's range (0x604..0x606) run on; the write to 0x604 ends the VM.
    let (mut vm, _) = build_with(
        &c,
        vec![
            out(0x3ff, AccessWidth::Byte, 0x55),
            out(0x603, AccessWidth::Byte, 0xff),
            out(0x606, AccessWidth::Word, 0x2000),
            out(0x604, AccessWidth::Word, 0x2000),
            E::Halt,
        ],
    )
    .unwrap();
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::PowerOff));
    assert_eq!(mock(&vm).runs, 4);
    assert_eq!(vm.exit_stats().unclaimed_port_writes, 2);
}

#[test]
fn triple_fault_shutdown_and_failed_entry_end_the_vm() {
    let (mut vm, _) = build(vec![E::TripleFault]);
    mock_mut(&mut vm).loc = flat32(0x20_0123);
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::TripleFault { rip: 0x20_0123 }));
    assert!(matches!(
        vm.state(),
        VmState::Stopped(StopReason::Guest(VmExit::TripleFault { rip: 0x20_0123 }))
    ));
    assert_eq!(
        vm.state().to_string(),
        "stopped (triple fault at RIP 0x200123)"
    );

    let (mut vm, _) = build(vec![E::Shutdown]);
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Shutdown));
    assert!(vm.is_stopped());

    let (mut vm, _) = build(vec![E::FailEntry {
        hardware_entry_failure_reason: 0x8000_0021,
    }]);
    assert_eq!(
        vm.run_vcpu(0),
        Ok(VmExit::FailEntry {
            hardware_entry_failure_reason: 0x8000_0021
        })
    );
    assert!(vm.is_stopped());
}

#[test]
fn a_kick_returns_at_the_next_silent_exit() {
    let (mut vm, _) = build(vec![E::Nothing, E::Nothing, E::Nothing, E::Halt]);
    let kicker = vm.kicker();
    kicker.kick();
    // The first silent exit returns to the runner, once.
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::ExternalInterrupt { vector: 0 }));
    assert_eq!(mock(&vm).runs, 1);
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    assert_eq!(mock(&vm).runs, 4);
    assert!(!vm.is_stopped());
}

#[test]
fn nothing_and_interrupt_window_loop_external_interrupts_return() {
    let (mut vm, _) = build(vec![
        E::Nothing,
        E::InterruptWindow,
        E::ExternalInterrupt { vector: 0x20 },
        E::Halt,
    ]);
    assert_eq!(
        vm.run_vcpu(0),
        Ok(VmExit::ExternalInterrupt { vector: 0x20 })
    );
    assert_eq!(mock(&vm).runs, 3);
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    let s = vm.exit_stats();
    assert_eq!(s.exits_of(ExitReasonKind::Nothing), 1);
    assert_eq!(s.exits_of(ExitReasonKind::InterruptWindow), 1);
    assert_eq!(s.exits.total(), 4);
}

#[test]
fn npf_outside_memory_is_a_bad_access_that_stops_the_vm() {
    // guests/isolation: a read of GPA 0x4000_0000, outside 16 MiB of RAM.
    let (mut vm, _) = build(vec![E::NestedPageFault {
        addr: gpa(0x4000_0000),
        access_flags: MappingFlags::READ,
    }]);
    mock_mut(&mut vm).loc = flat32(0x20_1234);
    let exit = vm.run_vcpu(0).unwrap();
    assert_eq!(
        exit,
        VmExit::BadAccess {
            gpa: gpa(0x4000_0000),
            rip: 0x20_1234,
            access: MappingFlags::READ
        }
    );
    assert!(vm.is_stopped());
    assert!(exit.to_string().contains("GPA 0x40000000"));
    assert!(matches!(vm.run_vcpu(0), Err(Error::Stopped { .. })));
}

#[test]
fn lazy_ram_is_populated_on_fault_and_rights_are_enforced() {
    let mut c = test_config();
    c.memory.push(MemoryRegion {
        gpa: 0x100_0000,
        size: 0x10_0000,
        map: MapKind::AllocLazy,
        flags: MemFlags::RWX,
    });
    c.memory.push(MemoryRegion {
        gpa: 0x200_0000,
        size: 0x1000,
        map: MapKind::Alloc,
        flags: MemFlags::READ | MemFlags::EXEC,
    });
    let (mut vm, _) = build_with(
        &c,
        vec![
            E::NestedPageFault {
                addr: gpa(0x100_0123),
                access_flags: MappingFlags::WRITE,
            },
            // Already mapped with the right: a stale fault, retried.
            E::NestedPageFault {
                addr: gpa(0x100_0456),
                access_flags: MappingFlags::READ,
            },
            E::Halt,
            // A write to read-only RAM.
            E::NestedPageFault {
                addr: gpa(0x200_0010),
                access_flags: MappingFlags::WRITE,
            },
        ],
    )
    .unwrap();
    assert!(vm.aspace().translate(gpa(0x100_0000)).is_none());
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    assert!(vm.aspace().translate(gpa(0x100_0000)).is_some());
    assert!(vm.aspace().translate(gpa(0x100_1000)).is_none());
    let s = vm.exit_stats();
    assert_eq!((s.lazy_page_faults, s.spurious_page_faults), (1, 1));

    assert!(matches!(
        vm.run_vcpu(0),
        Ok(VmExit::BadAccess {
            access: MappingFlags::WRITE,
            ..
        })
    ));
}

#[test]
fn a_vcpu_failure_is_an_error_that_stops_the_vm() {
    // The script runs out: the mock's run fails.
    let (mut vm, _) = build(vec![]);
    let err = vm.run_vcpu(0).unwrap_err();
    assert_eq!(
        err,
        Error::VCpu(axvcpu::Error::arch("mock vCPU: script ran out"))
    );
    assert_eq!(vm.state(), &VmState::Stopped(StopReason::Failed(err)));
    assert_eq!(vm.vcpu(0).unwrap().state(), VCpuState::Invalid);
    assert!(matches!(vm.run_vcpu(0), Err(Error::Stopped { .. })));
}

#[test]
fn an_unknown_vcpu_is_an_error() {
    let (mut vm, _) = build(vec![E::Halt]);
    assert_eq!(vm.run_vcpu(1), Err(Error::NoSuchVCpu { id: 1 }));
    assert_eq!(vm.state(), &VmState::Created);
}

#[test]
fn stop_by_request_keeps_the_first_reason() {
    let (mut vm, _) = build(vec![E::Halt]);
    vm.stop(StopReason::Requested(
        "destroyed by the control tool".into(),
    ));
    vm.stop(StopReason::Requested("second".into()));
    assert_eq!(
        vm.state().to_string(),
        "stopped (stopped by the hypervisor: destroyed by the control tool)"
    );
    assert!(vm.run_vcpu(0).is_err());
    assert_eq!(mock(&vm).runs, 0);
}
