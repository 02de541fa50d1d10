//! Tests of the vCPU state machine and the per-CPU switch, with the mock architecture.

use std::vec;
use std::vec::Vec;

use axaddrspace::{AccessWidth, GuestPhysAddr, HostPhysAddr};

use crate::mock::{DISABLES, FAILING_CPU, Fail, MockCreate, MockPerCpu, MockVCpu, mock_err};
use crate::{
    AxArchVCpu, AxPerCpu, AxVCpu, AxVCpuExitReason, Error, ExitReasonKind, Result, VCpuState,
    x86_gpr,
};

type VCpu = AxVCpu<MockVCpu>;

const ENTRY: usize = 0x7c00;
const EPT_ROOT: usize = 0x12_3000;
const SETUP_CFG: u32 = 0xabcd;

fn gpa(a: usize) -> GuestPhysAddr {
    GuestPhysAddr::from_usize(a)
}

fn hpa(a: usize) -> HostPhysAddr {
    HostPhysAddr::from_usize(a)
}

fn io_write(port: u16, data: u64) -> AxVCpuExitReason {
    AxVCpuExitReason::IoWrite {
        port,
        width: AccessWidth::Byte,
        data,
    }
}

fn created(script: Vec<Result<AxVCpuExitReason>>, fail: Fail) -> VCpu {
    AxVCpu::new(1, 0, None, MockCreate { script, fail }).unwrap()
}

fn setup(v: &mut VCpu) -> Result {
    v.setup(gpa(ENTRY), hpa(EPT_ROOT), SETUP_CFG)
}

/// A vCPU brought into `state` through legal moves, with a long script of exits.
/// `Blocked` is reached from `Free` (`bound == false`) or from `Ready`.
fn vcpu_in(state: VCpuState, bound: bool) -> VCpu {
    let mut v = created(vec![Ok(AxVCpuExitReason::Halt); 4], Fail::default());
    match state {
        VCpuState::Created => {}
        VCpuState::Free => setup(&mut v).unwrap(),
        VCpuState::Ready => {
            setup(&mut v).unwrap();
            v.bind().unwrap();
        }
        VCpuState::Running => {
            setup(&mut v).unwrap();
            v.bind().unwrap();
            v.with_state_transition(VCpuState::Ready, VCpuState::Running, "enter", |_| Ok(()))
                .unwrap();
        }
        VCpuState::Blocked => {
            setup(&mut v).unwrap();
            if bound {
                v.bind().unwrap();
            }
            v.block().unwrap();
        }
        VCpuState::Invalid => {
            v.arch_vcpu_mut().fail.setup = true;
            assert_eq!(setup(&mut v), Err(mock_err("setup")));
        }
    }
    assert_eq!(v.state(), state);
    v
}

type Op = (&'static str, fn(&mut VCpu) -> Result);

const OPS: [Op; 6] = [
    ("setup", setup),
    ("bind", VCpu::bind),
    ("unbind", VCpu::unbind),
    ("run", |v| v.run().map(|_| ())),
    ("block", VCpu::block),
    ("unblock", VCpu::unblock),
];

/// The operations legal in a state, with the state each one leads to.
type Moves = &'static [(&'static str, VCpuState)];

/// (state, bound, the operations legal in it)
const LEGAL: [(VCpuState, bool, Moves); 7] = [
    (VCpuState::Created, false, &[("setup", VCpuState::Free)]),
    (
        VCpuState::Free,
        false,
        &[("bind", VCpuState::Ready), ("block", VCpuState::Blocked)],
    ),
    (
        VCpuState::Ready,
        true,
        &[
            ("unbind", VCpuState::Free),
            ("run", VCpuState::Ready),
            ("block", VCpuState::Blocked),
        ],
    ),
    (VCpuState::Running, true, &[]),
    (VCpuState::Blocked, false, &[("unblock", VCpuState::Free)]),
    (VCpuState::Blocked, true, &[("unblock", VCpuState::Ready)]),
    (VCpuState::Invalid, false, &[]),
];

#[test]
fn every_operation_in_every_state() {
    let mut illegal_seen = 0;
    for (state, bound, legal) in LEGAL {
        for (name, op) in OPS {
            let mut v = vcpu_in(state, bound);
            let calls_before = v.arch_vcpu().calls.len();
            let r = op(&mut v);
            match legal.iter().find(|(n, _)| *n == name) {
                Some((_, to)) => {
                    assert_eq!(r, Ok(()), "{name} from {state} (bound {bound})");
                    assert_eq!(v.state(), *to, "{name} from {state}");
                }
                None => {
                    illegal_seen += 1;
                    assert_eq!(
                        r,
                        Err(Error::InvalidState {
                            from: state,
                            op: name
                        }),
                        "{name} from {state} (bound {bound})"
                    );
                    assert_eq!(v.state(), state, "refused {name} changed the state");
                    assert_eq!(v.is_bound(), bound || state == VCpuState::Running);
                    assert_eq!(
                        v.arch_vcpu().calls.len(),
                        calls_before,
                        "refused {name} from {state} reached the architecture"
                    );
                }
            }
        }
    }
    // 7 situations x 6 operations, minus the 8 legal moves in the table.
    assert_eq!(illegal_seen, 7 * 6 - 8);
}

#[test]
fn full_lifecycle() {
    let script = vec![
        Ok(io_write(0x3f8, b'h' as u64)),
        Ok(io_write(0x3f8, b'i' as u64)),
        Ok(AxVCpuExitReason::Hypercall {
            nr: 3,
            args: [1, 2, 3, 4, 5, 6],
        }),
        Ok(AxVCpuExitReason::Halt),
    ];
    let mut v = AxVCpu::<MockVCpu>::new(
        5,
        2,
        Some(0b0110),
        MockCreate {
            script,
            fail: Fail::default(),
        },
    )
    .unwrap();
    assert_eq!(v.id(), 5);
    assert_eq!(v.arch_vcpu().id, 5);
    assert_eq!(v.favor_phys_cpu(), 2);
    assert_eq!(v.affinity(), Some(0b0110));
    assert_eq!(v.state(), VCpuState::Created);

    setup(&mut v).unwrap();
    assert_eq!(v.state(), VCpuState::Free);
    let a = v.arch_vcpu();
    assert_eq!(a.entry, Some(gpa(ENTRY)));
    assert_eq!(a.ept_root, Some(hpa(EPT_ROOT)));
    assert_eq!(a.setup_with, Some(SETUP_CFG));
    assert_eq!(a.calls, ["set_entry", "set_ept_root", "setup"]);

    v.bind().unwrap();
    assert_eq!(v.state(), VCpuState::Ready);
    assert!(v.is_bound() && v.arch_vcpu().bound);

    let mut out = Vec::new();
    loop {
        let exit = v.run().unwrap();
        assert_eq!(v.state(), VCpuState::Ready);
        match exit {
            AxVCpuExitReason::IoWrite {
                port: 0x3f8, data, ..
            } => out.push(data as u8),
            AxVCpuExitReason::Hypercall { nr, args } => {
                assert_eq!((nr, args[5]), (3, 6));
                v.set_return_value(0);
            }
            AxVCpuExitReason::Halt => break,
            other => panic!("unexpected exit {other:?}"),
        }
    }
    assert_eq!(out, b"hi");

    // Halted: block while bound, then wake up.
    v.block().unwrap();
    assert_eq!(v.state(), VCpuState::Blocked);
    assert!(v.is_bound());
    v.inject_interrupt(0x30).unwrap();
    v.unblock().unwrap();
    assert_eq!(v.state(), VCpuState::Ready);

    v.unbind().unwrap();
    assert_eq!(v.state(), VCpuState::Free);
    assert!(!v.is_bound() && !v.arch_vcpu().bound);

    // Migrate: bind again (on another CPU) and run out of script.
    v.bind().unwrap();
    assert_eq!(v.run(), Err(Error::arch("script exhausted")));
    assert_eq!(v.state(), VCpuState::Invalid);

    let c = v.exit_counters();
    assert_eq!(c.get(ExitReasonKind::IoWrite), 2);
    assert_eq!(c.get(ExitReasonKind::Hypercall), 1);
    assert_eq!(c.get(ExitReasonKind::Halt), 1);
    assert_eq!(c.total(), 4);
    assert_eq!(v.arch_vcpu().injected, [0x30]);
    v.reset_exit_counters();
    assert_eq!(v.exit_counters().total(), 0);
}

#[test]
fn named_illegal_transitions() {
    let mut v = vcpu_in(VCpuState::Created, false);
    assert_eq!(
        v.run(),
        Err(Error::InvalidState {
            from: VCpuState::Created,
            op: "run"
        })
    );
    assert_eq!(
        v.bind(),
        Err(Error::InvalidState {
            from: VCpuState::Created,
            op: "bind"
        })
    );

    let mut v = vcpu_in(VCpuState::Free, false);
    assert_eq!(
        setup(&mut v),
        Err(Error::InvalidState {
            from: VCpuState::Free,
            op: "setup"
        })
    );
    assert_eq!(
        v.run(),
        Err(Error::InvalidState {
            from: VCpuState::Free,
            op: "run"
        })
    );
    v.bind().unwrap();
    assert_eq!(
        v.bind(),
        Err(Error::InvalidState {
            from: VCpuState::Ready,
            op: "bind"
        })
    );
    assert_eq!(
        v.arch_vcpu().calls.iter().filter(|c| **c == "bind").count(),
        1
    );

    let mut v = vcpu_in(VCpuState::Running, true);
    assert_eq!(
        v.unbind(),
        Err(Error::InvalidState {
            from: VCpuState::Running,
            op: "unbind"
        })
    );
    assert_eq!(
        v.set_entry(gpa(0x1000)),
        Err(Error::InvalidState {
            from: VCpuState::Running,
            op: "set entry of"
        })
    );
    assert_eq!(
        v.inject_interrupt(0x20),
        Err(Error::InvalidState {
            from: VCpuState::Running,
            op: "inject an interrupt into"
        })
    );
    // Leaving Running the legal way still works.
    v.with_state_transition(VCpuState::Running, VCpuState::Ready, "exit", |_| Ok(()))
        .unwrap();
    v.unbind().unwrap();
}

#[test]
fn with_state_transition_refuses_non_edges_without_calling_arch() {
    let mut v = vcpu_in(VCpuState::Free, false);
    let mut called = false;
    // The state matches `from`, but Free -> Running skips bind.
    let r = v.with_state_transition(VCpuState::Free, VCpuState::Running, "jump", |_| {
        called = true;
        Ok(())
    });
    assert_eq!(
        r,
        Err(Error::InvalidState {
            from: VCpuState::Free,
            op: "jump"
        })
    );
    assert!(!called);
    // Blocked while unbound must not come back as Ready.
    v.block().unwrap();
    let r = v.with_state_transition(VCpuState::Blocked, VCpuState::Ready, "wake", |_| Ok(()));
    assert_eq!(
        r,
        Err(Error::InvalidState {
            from: VCpuState::Blocked,
            op: "wake"
        })
    );
    // A value flows through on success.
    v.unblock().unwrap();
    let n = v
        .with_state_transition(VCpuState::Free, VCpuState::Ready, "bind", |a| {
            a.bind()?;
            Ok(7)
        })
        .unwrap();
    assert_eq!(n, 7);
    assert!(v.is_bound());
}

#[test]
fn failed_setup_marks_invalid_and_invalid_is_terminal() {
    for (fail, err) in [
        (
            Fail {
                set_entry: true,
                ..Fail::default()
            },
            mock_err("set_entry"),
        ),
        (
            Fail {
                set_ept_root: true,
                ..Fail::default()
            },
            mock_err("set_ept_root"),
        ),
        (
            Fail {
                setup: true,
                ..Fail::default()
            },
            mock_err("setup"),
        ),
    ] {
        let mut v = created(vec![Ok(AxVCpuExitReason::Halt)], fail);
        assert_eq!(setup(&mut v), Err(err));
        assert_eq!(v.state(), VCpuState::Invalid);
        for (name, op) in OPS {
            assert_eq!(
                op(&mut v),
                Err(Error::InvalidState {
                    from: VCpuState::Invalid,
                    op: name
                })
            );
        }
        assert_eq!(
            v.inject_interrupt(0x20),
            Err(Error::InvalidState {
                from: VCpuState::Invalid,
                op: "inject an interrupt into"
            })
        );
        assert!(matches!(
            v.set_io_result(AccessWidth::Byte, 0),
            Err(Error::InvalidState {
                from: VCpuState::Invalid,
                ..
            })
        ));
    }
}

#[test]
fn failed_bind_unbind_run_mark_invalid() {
    let mut v = vcpu_in(VCpuState::Free, false);
    v.arch_vcpu_mut().fail.bind = true;
    assert_eq!(v.bind(), Err(mock_err("bind")));
    assert_eq!(v.state(), VCpuState::Invalid);

    let mut v = vcpu_in(VCpuState::Ready, true);
    v.arch_vcpu_mut().fail.unbind = true;
    assert_eq!(v.unbind(), Err(mock_err("unbind")));
    assert_eq!(v.state(), VCpuState::Invalid);

    let mut v = created(
        vec![
            Ok(AxVCpuExitReason::Nothing),
            Err(Error::arch_code("VMRUN failed", 0xffff_ffff_ffff_ffff)),
        ],
        Fail::default(),
    );
    setup(&mut v).unwrap();
    v.bind().unwrap();
    assert_eq!(v.run(), Ok(AxVCpuExitReason::Nothing));
    assert_eq!(
        v.run(),
        Err(Error::arch_code("VMRUN failed", 0xffff_ffff_ffff_ffff))
    );
    assert_eq!(v.state(), VCpuState::Invalid);
    // Only the successful run was counted.
    assert_eq!(v.exit_counters().total(), 1);
    assert_eq!(v.exit_counters().get(ExitReasonKind::Nothing), 1);
}

#[test]
fn failed_non_transition_ops_keep_the_state() {
    let mut v = vcpu_in(VCpuState::Ready, true);
    v.arch_vcpu_mut().fail.inject = true;
    v.arch_vcpu_mut().fail.set_entry = true;
    v.arch_vcpu_mut().fail.set_ept_root = true;
    assert_eq!(v.inject_interrupt(0x20), Err(mock_err("inject_interrupt")));
    assert_eq!(v.set_entry(gpa(0x9000)), Err(mock_err("set_entry")));
    assert_eq!(v.set_ept_root(hpa(0x5000)), Err(mock_err("set_ept_root")));
    assert_eq!(v.state(), VCpuState::Ready);
    assert_eq!(v.run(), Ok(AxVCpuExitReason::Halt));
}

#[test]
fn set_entry_after_setup_reaches_arch() {
    // A start-up IPI with vector 0x9a starts the AP at 0x9a000 (Intel SDM Vol. 3A, 9.4.4.1 / 11.6.1).
    let mut v = vcpu_in(VCpuState::Free, false);
    v.set_entry(gpa(0x9a << 12)).unwrap();
    assert_eq!(v.arch_vcpu().entry, Some(gpa(0x9a000)));
    v.set_ept_root(hpa(0x55_5000)).unwrap();
    assert_eq!(v.arch_vcpu().ept_root, Some(hpa(0x55_5000)));
    assert_eq!(v.state(), VCpuState::Free);
}

#[test]
fn create_failure_and_affinity_checks() {
    let r = AxVCpu::<MockVCpu>::new(
        0,
        0,
        None,
        MockCreate {
            script: vec![],
            fail: Fail {
                new: true,
                ..Fail::default()
            },
        },
    );
    assert_eq!(r.unwrap_err(), mock_err("new"));
    assert!(matches!(
        AxVCpu::<MockVCpu>::new(0, 0, Some(0), MockCreate::default()),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        AxVCpu::<MockVCpu>::new(0, 3, Some(0b0101), MockCreate::default()),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        AxVCpu::<MockVCpu>::new(
            0,
            usize::BITS as usize,
            Some(usize::MAX),
            MockCreate::default()
        ),
        Err(Error::InvalidArgument(_))
    ));
    let v = AxVCpu::<MockVCpu>::new(0, 2, Some(0b0101), MockCreate::default()).unwrap();
    assert!(v.can_run_on(0) && v.can_run_on(2));
    assert!(!v.can_run_on(1) && !v.can_run_on(3) && !v.can_run_on(1000));
    let any = AxVCpu::<MockVCpu>::new(0, 200, None, MockCreate::default()).unwrap();
    assert!(any.can_run_on(200) && any.can_run_on(0));
}

#[test]
fn register_access_and_exit_completion() {
    let mut v = vcpu_in(VCpuState::Ready, true);
    v.set_gpr(x86_gpr::RAX, 0xdead_beef_cafe_f00d);
    // in al, dx -> only AL changes.
    v.set_io_result(AccessWidth::Byte, 0x1ff).unwrap();
    assert_eq!(v.gpr(x86_gpr::RAX), 0xdead_beef_cafe_f0ff);
    // in ax, dx
    v.set_io_result(AccessWidth::Word, 0x1234).unwrap();
    assert_eq!(v.gpr(x86_gpr::RAX), 0xdead_beef_cafe_1234);
    // in eax, dx -> zero-extended into RAX.
    v.set_io_result(AccessWidth::Dword, 0x8765_4321).unwrap();
    assert_eq!(v.gpr(x86_gpr::RAX), 0x8765_4321);
    assert!(matches!(
        v.set_io_result(AccessWidth::Qword, 0),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(v.state(), VCpuState::Ready);

    // rdmsr IA32_APIC_BASE (0x1b), value 0xfee00900 (BSP, enabled, base 0xfee00000):
    // EDX:EAX, upper halves of RAX and RDX cleared.
    v.set_gpr(x86_gpr::RDX, u64::MAX);
    v.set_msr_result(0xfee0_0900).unwrap();
    assert_eq!(v.gpr(x86_gpr::RAX), 0xfee0_0900);
    assert_eq!(v.gpr(x86_gpr::RDX), 0);
    v.set_msr_result(0x1122_3344_5566_7788).unwrap();
    assert_eq!(v.gpr(x86_gpr::RAX), 0x5566_7788);
    assert_eq!(v.gpr(x86_gpr::RDX), 0x1122_3344);

    // movsx ebx, byte [mmio] reading 0xf0 -> RBX = 0x00000000_fffffff0.
    v.set_gpr(x86_gpr::RBX, u64::MAX);
    v.set_mmio_read_result(
        x86_gpr::RBX,
        AccessWidth::Byte,
        AccessWidth::Dword,
        true,
        0xf0,
    )
    .unwrap();
    assert_eq!(v.gpr(x86_gpr::RBX), 0xffff_fff0);
    // mov r9w, [mmio]
    v.set_gpr(x86_gpr::R9, 0x1111_2222_3333_4444);
    v.set_mmio_read_result(
        x86_gpr::R9,
        AccessWidth::Word,
        AccessWidth::Word,
        false,
        0xabcd,
    )
    .unwrap();
    assert_eq!(v.gpr(x86_gpr::R9), 0x1111_2222_3333_abcd);

    v.set_return_value(0x55);
    assert_eq!(v.gpr(x86_gpr::RAX), 0x55);
}

fn per_cpu(cpu: usize) -> AxPerCpu<MockPerCpu> {
    AxPerCpu::new(cpu).unwrap()
}

#[test]
fn per_cpu_enable_disable() {
    let mut p = per_cpu(3);
    assert_eq!(p.cpu_id(), Some(3));
    assert!(!p.is_enabled());
    p.hardware_enable().unwrap();
    assert!(p.is_enabled());
    assert_eq!(
        p.hardware_enable(),
        Err(Error::AlreadyEnabled { cpu_id: 3 })
    );
    assert_eq!(
        p.arch().unwrap().enables,
        1,
        "second enable reached the architecture"
    );
    p.hardware_disable().unwrap();
    assert!(!p.is_enabled());
    assert_eq!(p.hardware_disable(), Err(Error::NotEnabled { cpu_id: 3 }));
    // On again after off.
    p.hardware_enable().unwrap();
    assert_eq!(p.arch().unwrap().enables, 2);
    p.hardware_disable().unwrap();
}

#[test]
fn per_cpu_uninitialized_and_double_init() {
    let mut p = AxPerCpu::<MockPerCpu>::new_uninit();
    assert!(!p.is_initialized() && !p.is_enabled());
    assert_eq!(p.cpu_id(), None);
    assert_eq!(p.hardware_enable(), Err(Error::PerCpuUninit));
    assert_eq!(p.hardware_disable(), Err(Error::PerCpuUninit));
    assert_eq!(p.init(FAILING_CPU), Err(mock_err("percpu new")));
    assert!(!p.is_initialized());
    p.init(1).unwrap();
    assert_eq!(p.init(2), Err(Error::PerCpuAlreadyInit { cpu_id: 1 }));
    assert_eq!(p.cpu_id(), Some(1));
    assert_eq!(p.arch().unwrap().cpu_id, 1);
    assert_eq!(AxPerCpu::<MockPerCpu>::default().cpu_id(), None);
}

#[test]
fn per_cpu_arch_failures() {
    let mut p = per_cpu(0);
    p.arch_mut().unwrap().fail_enable = true;
    assert_eq!(p.hardware_enable(), Err(mock_err("enable")));
    assert!(!p.is_enabled());
    p.arch_mut().unwrap().fail_enable = false;
    p.hardware_enable().unwrap();
    p.arch_mut().unwrap().fail_disable = true;
    assert_eq!(p.hardware_disable(), Err(mock_err("disable")));
    assert!(p.is_enabled());
    p.arch_mut().unwrap().fail_disable = false;
    p.hardware_disable().unwrap();

    // A backend that claims success without switching is caught.
    p.arch_mut().unwrap().lie = true;
    assert_eq!(p.hardware_enable(), Err(Error::BadState));
    assert!(!p.is_enabled());
    let a = p.arch_mut().unwrap();
    a.lie = false;
    a.on = true;
    a.lie = true;
    assert_eq!(p.hardware_disable(), Err(Error::BadState));
    assert!(p.is_enabled());
    p.arch_mut().unwrap().lie = false;
    p.hardware_disable().unwrap();
}

#[test]
fn per_cpu_drop_disables() {
    let before = DISABLES.with(|d| d.get());
    {
        let mut p = per_cpu(0);
        p.hardware_enable().unwrap();
    }
    assert_eq!(DISABLES.with(|d| d.get()), before + 1);
    {
        let _off = per_cpu(0);
    }
    assert_eq!(DISABLES.with(|d| d.get()), before + 1);
}
