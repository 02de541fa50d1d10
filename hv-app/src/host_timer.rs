//! The host's local APIC timer as the wake-up of the VMs' timers (Type-1,
//! and a Type-1.5 guest CPU: [`start_on_guest_cpu`]).
//!
//! A guest that spins without VM exits (NimbOS's idle loop yields to itself
//! with interrupts on) never hands the CPU back, so its virtual local APIC
//! timer, which the VM fires before an entry, would never fire. Before
//! each entry the VM asks its clock for a wake-up at the next virtual timer
//! deadline (`axdevice::Clock::set_wakeup`); [`arm`] programs the host's
//! local APIC timer ([`VECTOR`]) to fire then.
//!
//! The interrupt ends the guest's run: SVM intercepts INTR (the host runs
//! VMRUN with RFLAGS.IF = 1, so physical interrupts are not masked while
//! the guest runs) and the host takes it after STGI through the [`VECTOR`]
//! gate, whose stub only signals EOI; VMX exits on it and acknowledges it
//! (the VM loop calls [`acknowledge`]). Either way the VM loop enters again
//! and fires the virtual timer first.
//!
//! The timer runs in periodic mode, its period the time to the deadline
//! (between [`MIN_PERIOD_US`] and [`MAX_PERIOD_US`]): the host runs with
//! interrupts on, so a firing between the VM's last check and VMRUN is
//! taken by the host and lost to the guest; the next period wakes it.
//!
//! [`start`] masks the 8259 PICs (the BIOS left the PIT on IRQ 0 at vector
//! 8), installs the gates, calibrates the timer against the TSC and turns
//! interrupts on. Only xAPIC mode is handled (the host's own APIC code is
//! xAPIC-only).

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hv_app::apic::ApicBase;
use hv_app::port::PortIo;

use crate::{lapic, pio, trap, tsc};

/// The vector of the host's timer interrupt.
pub const VECTOR: u8 = 0xec;

/// xAPIC registers (SDM vol. 3A table 11-1).
const EOI: u64 = 0xb0;
const SVR: u64 = 0xf0;
const LVT_TIMER: u64 = 0x320;
const TIMER_INITIAL: u64 = 0x380;
const TIMER_CURRENT: u64 = 0x390;
const TIMER_DIVIDE: u64 = 0x3e0;
/// LVT bit 16: masked.
const LVT_MASKED: u32 = 1 << 16;
/// LVT timer mode 01b (bits 18:17): periodic.
const LVT_PERIODIC: u32 = 0b01 << 17;

/// The shortest period: a deadline closer than this fires this late.
pub const MIN_PERIOD_US: u64 = 20;
/// The longest period: a wake-up lost to the host costs at most this.
pub const MAX_PERIOD_US: u64 = 10_000;
/// Divide configuration 1011b: divide by 1.
const DIVIDE_BY_1: u32 = 0xb;

/// The EOI register's address (0 until [`start`]); the stub reads it.
static HOST_TIMER_EOI: AtomicU64 = AtomicU64::new(0);
/// The xAPIC page (valid once [`STARTED`]).
static APIC_PAGE: AtomicU64 = AtomicU64::new(0);
/// APIC timer ticks (divide by 1) per TSC tick, as a 32.32 fixed-point
/// ratio.
static TICKS_PER_TSC_32: AtomicU64 = AtomicU64::new(0);
/// [`MIN_PERIOD_US`] and [`MAX_PERIOD_US`] in APIC timer ticks.
static MIN_TICKS: AtomicU64 = AtomicU64::new(1);
static MAX_TICKS: AtomicU64 = AtomicU64::new(u32::MAX as u64);
/// The TSC value the timer is armed for (0: not armed).
static TARGET: AtomicU64 = AtomicU64::new(0);
static STARTED: AtomicBool = AtomicBool::new(false);

global_asm!(
    r#"
    .section .text.host_timer, "ax"
    .balign 16
    .global host_timer_entry
host_timer_entry:
    pushq %rax
    movq {eoi}(%rip), %rax
    testq %rax, %rax
    jz 1f
    movl $0, (%rax)
1:
    popq %rax
    iretq

    .balign 16
    .global host_spurious_entry
host_spurious_entry:
    iretq
"#,
    eoi = sym HOST_TIMER_EOI,
    options(att_syntax)
);

unsafe extern "C" {
    /// The [`VECTOR`] stub: EOI, return.
    fn host_timer_entry();
    /// The spurious-interrupt stub: return (no EOI, SDM 11.9).
    fn host_spurious_entry();
}

fn read(base: u64, reg: u64) -> u32 {
    // SAFETY: `base` is this CPU's xAPIC page, identity mapped and
    // uncacheable (`start` checked it); an aligned 32-bit register.
    unsafe { core::ptr::read_volatile((base + reg) as *const u32) }
}

fn write(base: u64, reg: u64, value: u32) {
    // SAFETY: as in `read`; only timer, EOI and SVR registers are written.
    unsafe { core::ptr::write_volatile((base + reg) as *mut u32, value) }
}

/// Sets the host timer up and turns interrupts on (see the module
/// documentation). Call once, on the BSP, before running VMs.
pub fn start() -> hv_app::Result {
    let base = lapic::apic_base();
    if base.0 & ApicBase::X2APIC != 0 {
        return Err(hv_app::Error::Unsupported(
            "host timer: the local APIC is in x2APIC mode",
        ));
    }
    let page = base.xapic_base()?;
    lapic::map_uncacheable(page)?;
    // SAFETY: CPL 0; the 8259 PICs are the machine's, nobody else drives
    // them in Type-1.
    let mut io = unsafe { pio::Pio::new() };
    io.outb(0x21, 0xff);
    io.outb(0xa1, 0xff);

    let svr = read(page, SVR);
    let spurious = (svr & 0xff) as u8;
    if svr & (1 << 8) == 0 {
        write(page, SVR, svr | (1 << 8));
    }
    trap::set_interrupt_gate(VECTOR, host_timer_entry as *const () as u64);
    if spurious >= 32 && spurious != VECTOR {
        trap::set_interrupt_gate(spurious, host_spurious_entry as *const () as u64);
    }
    let counted = calibrate_and_run(page)?;
    // SAFETY: the gates for the only interrupts that can come are in place
    // (the PICs are masked, the IOAPIC's entries are masked since reset).
    unsafe { asm!("sti", options(nomem, nostack)) };
    log::info!(
        "host timer: local APIC timer {} kHz, vector {VECTOR:#x}, spurious {spurious:#x}",
        counted / 2
    );
    Ok(())
}

/// Type-1.5: the timer of a CPU Linux gave up for a guest VM (its local
/// APIC is the hypervisor's until Linux starts the CPU again). The CPU
/// takes the interrupt through the hypervisor's own IDT, which
/// acknowledges every vector (`linux_entry::host_interrupts_on`); the PICs
/// stay Linux's. Call on that CPU, before it runs the VM; [`stop`] after.
pub fn start_on_guest_cpu() -> hv_app::Result {
    let base = lapic::apic_base();
    if base.0 & ApicBase::X2APIC != 0 {
        return Err(hv_app::Error::Unsupported(
            "host timer: the local APIC is in x2APIC mode",
        ));
    }
    calibrate_and_run(base.xapic_base()?)?;
    Ok(())
}

/// Stops the timer of this CPU and forgets it ([`arm`] does nothing until
/// the next start).
pub fn stop() {
    if STARTED.swap(false, Ordering::AcqRel) {
        let page = APIC_PAGE.load(Ordering::Relaxed);
        write(page, TIMER_INITIAL, 0);
        write(page, LVT_TIMER, LVT_MASKED | u32::from(VECTOR));
        TARGET.store(0, Ordering::Relaxed);
    }
}

/// Measures the local APIC timer (at `page`) against the TSC, then sets it
/// periodic at [`VECTOR`], stopped, ready for [`arm`]; returns the ticks
/// counted in 2 ms.
fn calibrate_and_run(page: u64) -> hv_app::Result<u64> {
    // Calibration: count down from the top for 2 ms of TSC.
    write(page, TIMER_DIVIDE, DIVIDE_BY_1);
    write(page, LVT_TIMER, LVT_MASKED | u32::from(VECTOR));
    write(page, TIMER_INITIAL, u32::MAX);
    let hz = tsc::tsc_hz();
    let start = tsc::rdtsc();
    let window = (hz / 500).max(1);
    while tsc::rdtsc().wrapping_sub(start) < window {
        core::hint::spin_loop();
    }
    let counted = u64::from(u32::MAX - read(page, TIMER_CURRENT));
    write(page, TIMER_INITIAL, 0);
    if counted == 0 {
        return Err(hv_app::Error::Unsupported(
            "host timer: the local APIC timer does not count",
        ));
    }
    let ratio = (counted << 32) / window;
    TICKS_PER_TSC_32.store(ratio, Ordering::Relaxed);
    let us_ticks = |us: u64| ((u128::from(hz / 1_000_000 * us) * u128::from(ratio)) >> 32) as u64;
    MIN_TICKS.store(us_ticks(MIN_PERIOD_US).max(1), Ordering::Relaxed);
    MAX_TICKS.store(
        us_ticks(MAX_PERIOD_US).clamp(1, u64::from(u32::MAX)),
        Ordering::Relaxed,
    );
    write(page, LVT_TIMER, LVT_PERIODIC | u32::from(VECTOR));
    APIC_PAGE.store(page, Ordering::Relaxed);
    HOST_TIMER_EOI.store(page + EOI, Ordering::Release);
    TARGET.store(0, Ordering::Relaxed);
    STARTED.store(true, Ordering::Release);
    Ok(counted)
}

/// Arms the host timer to fire once the TSC reaches `target` (and every
/// period after it, see the module documentation), or stops it (`None`).
/// The target already armed is left alone, so a VM may ask before every
/// entry. Does nothing before [`start`] (Type-1.5: the APIC is Linux's).
pub fn arm(target: Option<u64>) {
    if !STARTED.load(Ordering::Acquire) {
        return;
    }
    let page = APIC_PAGE.load(Ordering::Relaxed);
    let armed = TARGET.load(Ordering::Relaxed);
    let Some(target) = target else {
        if armed != 0 {
            TARGET.store(0, Ordering::Relaxed);
            write(page, TIMER_INITIAL, 0);
        }
        return;
    };
    let target = target.max(1);
    if target == armed {
        return;
    }
    TARGET.store(target, Ordering::Relaxed);
    let delay = u128::from(target.saturating_sub(tsc::rdtsc()));
    let ticks = ((delay * u128::from(TICKS_PER_TSC_32.load(Ordering::Relaxed))) >> 32).clamp(
        u128::from(MIN_TICKS.load(Ordering::Relaxed)),
        u128::from(MAX_TICKS.load(Ordering::Relaxed)),
    );
    write(page, TIMER_INITIAL, ticks as u32);
}

/// A VM exit for an external interrupt with `vector`: on VMX the exit
/// acknowledged it (the stub did not run), so signal EOI here.
pub fn acknowledge(vector: u8) {
    let eoi = HOST_TIMER_EOI.load(Ordering::Acquire);
    if vector == VECTOR && eoi != 0 {
        // SAFETY: the EOI register of this CPU's xAPIC page (`start`).
        unsafe { core::ptr::write_volatile(eoi as *mut u32, 0) };
    }
}
