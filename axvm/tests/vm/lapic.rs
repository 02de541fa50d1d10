//! The per-vCPU local APIC: xAPIC MMIO routed to it, its timer injected
//! before entry, HLT waiting for an armed timer (SDM vol. 3A ch. 11).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axaddrspace::{AccessWidth, NestedPagingKind};
use axdevice::{Clock, RingBuffer};
use axvcpu::AxVCpuExitReason as E;
use axvm::{Vm, VmExit};

use crate::common::*;

fn apic_write(off: usize, data: u64) -> E {
    E::MmioWrite {
        addr: gpa(0xfee0_0000 + off),
        width: AccessWidth::Dword,
        data,
    }
}

#[test]
fn one_shot_timer_wakes_a_halted_vcpu_with_its_vector() {
    let (mut vm, _) = build(vec![
        E::MmioRead {
            addr: gpa(0xfee0_0030),
            width: AccessWidth::Dword,
            reg: 3,
            reg_width: AccessWidth::Qword,
            signed_ext: false,
        },
        apic_write(0xf0, 0x1ff),   // SVR: software enable
        apic_write(0x3e0, 0xb),    // divide by 1
        apic_write(0x320, 0xf0),   // LVT timer: one-shot, vector 0xF0
        apic_write(0x380, 50_000), // 50 µs at the 1 GHz bus
        E::Halt,                   // waits for the deadline, runs on
        apic_write(0xb0, 0),       // EOI
        E::Halt,                   // nothing armed: the VM reports it
    ]);
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    // Version register: 0x14, max LVT entry 6 (SDM 11.4.8).
    assert_eq!(mock(&vm).regs[3], 0x0006_0014);
    assert_eq!(mock(&vm).injected, vec![0xf0]);
    assert_eq!(mock(&vm).runs, 8);
}

#[test]
fn periodic_timer_fires_again_after_eoi_and_masked_timer_never() {
    let (mut vm, _) = build(vec![
        apic_write(0xf0, 0x1ff),
        apic_write(0x3e0, 0xb),
        apic_write(0x320, (1 << 17) | 0xf0), // periodic
        apic_write(0x380, 10_000),
        E::Halt,
        apic_write(0xb0, 0),
        E::Halt,
        apic_write(0xb0, 0),
        apic_write(0x320, (1 << 16) | 0xf0), // masked
        E::Halt,
    ]);
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    assert_eq!(mock(&vm).injected, vec![0xf0, 0xf0]);
}

#[test]
fn hpet_counter_reads_through_the_device_set() {
    let vm = build(vec![]).0;
    let cap = vm
        .devices()
        .handle_mmio_read(gpa(0xfed0_0000), AccessWidth::Qword)
        .unwrap();
    assert_eq!(cap >> 32, 10_000_000, "period in fs");
    assert_ne!(cap & (1 << 13), 0, "64-bit counter");
    assert_eq!(
        vm.devices().find_port(0xa1).map(|d| d.name().to_string()),
        Some("pic8259-slave@0xa0".into())
    );
}

#[test]
fn nimbos_and_arceos_configs_build_every_device() {
    for name in ["nimbos", "arceos"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../configs/{name}.toml"));
        let c = axvmconfig::VmConfig::load_file(&path).unwrap();
        let (vm, _) = build_with(&c, vec![]).unwrap();
        let mmio: Vec<String> = vm
            .devices()
            .mmio_devices()
            .map(|d| d.name().to_string())
            .collect();
        assert!(
            mmio.contains(&"ioapic@0xfec00000".to_string()),
            "{name}: {mmio:?}"
        );
        assert_eq!(
            vm.devices().find_port(0x604).map(|d| d.name().to_string()),
            Some("acpi-pm1a-cnt@0x604".into())
        );
        if name == "nimbos" {
            assert!(mmio.contains(&"hpet@0xfed00000".to_string()));
        }
    }
}

#[test]
fn self_ipi_is_injected_before_the_next_entry() {
    let (mut vm, _) = build(vec![
        apic_write(0xf0, 0x1ff),
        // ICR low: shorthand self (bits 19:18 = 01), fixed, vector 0x40.
        apic_write(0x300, (1 << 18) | 0x40),
        E::Halt, // pending: runs on, the vector goes in first
        apic_write(0xb0, 0),
        E::Halt,
    ]);
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    assert_eq!(mock(&vm).injected, vec![0x40]);
}

#[test]
fn an_interrupt_waits_in_irr_until_the_guest_can_take_it() {
    let isr_word = |reg| E::MmioRead {
        // ISR bits 0x40-0x5f (SDM 11.8.4).
        addr: gpa(0xfee0_0120),
        width: AccessWidth::Dword,
        reg,
        reg_width: AccessWidth::Qword,
        signed_ext: false,
    };
    let (mut vm, _) = build(vec![
        apic_write(0xf0, 0x1ff),
        apic_write(0x300, (1 << 18) | 0x40),
        isr_word(3),
        E::InterruptWindow,
        isr_word(4),
        apic_write(0xb0, 0),
        E::Halt,
    ]);
    // Interrupts off in the guest until its 4th exit.
    mock_mut(&mut vm).ready_after = 4;
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    let m = mock(&vm);
    assert_eq!(m.injected, vec![0x40]);
    assert_eq!(m.window_requests, 2);
    // Not in service while the guest could not take it; in service once
    // injected.
    assert_eq!(m.regs[3], 0);
    assert_eq!(m.regs[4], 1);
}

#[test]
fn halt_with_interrupts_off_ends_the_run_even_with_a_pending_vector() {
    let (mut vm, _) = build(vec![
        apic_write(0xf0, 0x1ff),
        apic_write(0x300, (1 << 18) | 0x40),
        E::Halt,
        E::Halt,
    ]);
    // IF = 0 throughout: the self-IPI waits in the IRR and cannot wake it.
    mock_mut(&mut vm).ready_after = usize::MAX;
    mock_mut(&mut vm).interrupts_on = false;
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    let m = mock(&vm);
    assert_eq!(m.runs, 3, "stopped at the first HLT");
    assert!(m.injected.is_empty());
}

/// A [`TestClock`] that records the wake-ups the VM asks for.
#[derive(Debug, Default)]
struct WakeupClock {
    now: AtomicU64,
    wakeups: Mutex<Vec<Option<u64>>>,
}

impl Clock for WakeupClock {
    fn now_ns(&self) -> u64 {
        self.now.fetch_add(1_000, Ordering::SeqCst)
    }
    fn set_wakeup(&self, at_ns: Option<u64>) {
        self.wakeups.lock().unwrap().push(at_ns);
    }
}

#[test]
fn the_clock_is_asked_to_wake_the_vcpu_at_its_timer_deadline() {
    let clock = Arc::new(WakeupClock::default());
    let mut script = Some(vec![
        apic_write(0xf0, 0x1ff),
        apic_write(0x3e0, 0xb),
        apic_write(0x320, 0xf0),   // one-shot, vector 0xF0
        apic_write(0x380, 50_000), // 50 µs
        E::Nothing,                // a guest spinning: entries go on
        E::Halt,                   // waits for the deadline, fires
        apic_write(0xb0, 0),
        E::Halt, // nothing armed
    ]);
    let mut vm: TestVm = Vm::new_with_clock(
        &test_config(),
        &multiboot_image(LOAD),
        NestedPagingKind::Npt,
        |_| script.take().unwrap_or_default(),
        Arc::new(RingBuffer::new(64)),
        Some(clock.clone() as Arc<dyn Clock>),
    )
    .unwrap();
    assert_eq!(vm.run_vcpu(0), Ok(VmExit::Halt));
    assert_eq!(mock(&vm).injected, vec![0xf0]);
    let w = clock.wakeups.lock().unwrap().clone();
    // Nothing asked before the timer was armed (no deadline, no change);
    // then the deadline once, though the guest exits and enters again
    // before it; once it fired, `None`.
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(w[1], None);
    // The deadline is 50 µs (at the 1 GHz bus, divide by 1) after the TICR
    // write, which came after a few clock reads (1 µs each).
    let at = w[0].unwrap();
    assert!((50_000 + 4_000..50_000 + 20_000).contains(&at), "{w:?}");
}
