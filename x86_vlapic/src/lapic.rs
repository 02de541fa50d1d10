//! One virtual local APIC.

use axaddrspace::AccessWidth;

use crate::base::{ApicBase, ApicMode};
use crate::ipi::{
    DeliveryMode, DestinationMode, ICR_LOW_WRITABLE, IpiRequest, Shorthand, TriggerMode,
    X2APIC_ICR_RESERVED,
};
use crate::regs::{ApicRegister, Lvt, esr, msr};
use crate::timer::{ApicTime, DIVIDE_CONFIG_MASK, Expiry, Timer, TimerDeadline, TimerMode};
use crate::{Error, Result};

/// Version register value: version 0x14 (integrated APIC), max LVT entry 6
/// in bits 23:16 (seven entries: CMCI, timer, thermal, performance
/// monitoring, LINT0, LINT1, error), no EOI-broadcast suppression (bit 24).
pub const APIC_VERSION: u32 = 0x0006_0014;

/// Default APIC timer input frequency: 1 GHz (one bus tick per nanosecond,
/// like KVM). The guest measures it against another clock anyway.
pub const DEFAULT_BUS_FREQ_HZ: u64 = 1_000_000_000;

/// Spurious-interrupt vector register: APIC software enable (bit 8).
pub const SVR_APIC_ENABLE: u32 = 1 << 8;
/// Writable bits of the SVR: vector 7:0, software enable 8, focus
/// processor checking 9.
pub const SVR_WRITABLE: u32 = 0x3FF;

/// Static properties of one virtual local APIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VLocalApicConfig {
    /// Initial (x2)APIC ID; its low 8 bits are the xAPIC ID.
    /// 0xFFFF_FFFF is reserved for broadcast.
    pub apic_id: u32,
    /// Whether this vCPU is the bootstrap processor (`IA32_APIC_BASE.BSP`).
    pub bsp: bool,
    /// Frequency of the timer input before the divider, in Hz.
    pub bus_freq_hz: u64,
    /// Whether x2APIC mode is offered (`CPUID.1:ECX[21]`).
    pub x2apic: bool,
    /// Whether the TSC-deadline timer is offered (`CPUID.1:ECX[24]`).
    pub tsc_deadline: bool,
    /// The guest's MAXPHYADDR (`CPUID.80000008H:EAX[7:0]`), which bounds the
    /// `IA32_APIC_BASE` address field.
    pub max_phys_addr_bits: u8,
}

impl VLocalApicConfig {
    /// A configuration with x2APIC and TSC-deadline offered, a 1 GHz timer
    /// input and a 52-bit MAXPHYADDR.
    pub const fn new(apic_id: u32, bsp: bool) -> Self {
        Self {
            apic_id,
            bsp,
            bus_freq_hz: DEFAULT_BUS_FREQ_HZ,
            x2apic: true,
            tsc_deadline: true,
            max_phys_addr_bits: 52,
        }
    }
}

/// Something the VM must do after an access to the local APIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApicEvent {
    /// A write to the ICR asks for an IPI; the VM delivers it to the
    /// destination APICs (see [`VLocalApic::is_destination`]). Self IPIs
    /// with fixed delivery never appear here: they are delivered locally.
    Ipi(IpiRequest),
    /// The guest signalled end of interrupt for `vector`. For a
    /// level-triggered vector the VM forwards it to the IOAPIC.
    Eoi {
        /// The vector whose ISR bit was cleared.
        vector: u8,
        /// Its trigger mode, from the TMR.
        trigger: TriggerMode,
    },
}

/// A 256-bit interrupt register (IRR, ISR, TMR) as eight 32-bit slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Bitmap256([u32; 8]);

impl Bitmap256 {
    fn get(&self, v: u8) -> bool {
        self.0[(v >> 5) as usize] & (1 << (v & 31)) != 0
    }
    fn set(&mut self, v: u8) {
        self.0[(v >> 5) as usize] |= 1 << (v & 31);
    }
    fn clear(&mut self, v: u8) {
        self.0[(v >> 5) as usize] &= !(1 << (v & 31));
    }
    fn is_empty(&self) -> bool {
        let w = &self.0;
        (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) == 0
    }
    fn highest(&self) -> Option<u8> {
        (0..8usize)
            .rev()
            .find(|&i| self.0[i] != 0)
            .map(|i| (i as u32 * 32 + 31 - self.0[i].leading_zeros()) as u8)
    }
}

/// The state of one virtual local APIC: registers, interrupt queues, timer
/// and `IA32_APIC_BASE`.
///
/// The caller supplies the time ([`ApicTime`]) on every access that may
/// depend on it; nothing here reads a clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VLocalApic {
    config: VLocalApicConfig,
    base: ApicBase,
    /// xAPIC ID register (ID in bits 31:24).
    xapic_id: u32,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: Bitmap256,
    tmr: Bitmap256,
    irr: Bitmap256,
    /// ESR as software last latched it.
    esr: u32,
    /// Errors seen since the last ESR write.
    esr_pending: u32,
    lvt: [u32; 7],
    icr_low: u32,
    icr_high: u32,
    timer: Timer,
}

impl VLocalApic {
    /// A local APIC in its power-up state.
    pub fn new(config: VLocalApicConfig) -> Result<Self> {
        if config.apic_id == u32::MAX {
            return Err(Error::BadConfig(
                "APIC ID 0xFFFFFFFF is the broadcast address",
            ));
        }
        if config.bus_freq_hz == 0 {
            return Err(Error::BadConfig("timer bus frequency is 0"));
        }
        if !(12..=52).contains(&config.max_phys_addr_bits) {
            return Err(Error::BadConfig("MAXPHYADDR must be within 12..=52"));
        }
        let mut apic = Self {
            config,
            base: ApicBase::reset(config.bsp),
            xapic_id: 0,
            tpr: 0,
            ldr: 0,
            dfr: 0,
            svr: 0,
            isr: Bitmap256::default(),
            tmr: Bitmap256::default(),
            irr: Bitmap256::default(),
            esr: 0,
            esr_pending: 0,
            lvt: [0; 7],
            icr_low: 0,
            icr_high: 0,
            timer: Timer::new(config.bus_freq_hz),
        };
        apic.reset();
        Ok(apic)
    }

    /// The configuration this APIC was made with.
    pub fn config(&self) -> &VLocalApicConfig {
        &self.config
    }

    /// Power-up / RESET (SDM 11.4.7.1): xAPIC mode at the default base,
    /// ID from the configuration, every other register at its reset value.
    pub fn reset(&mut self) {
        self.base = ApicBase::reset(self.config.bsp);
        self.xapic_id = (self.config.apic_id & 0xFF) << 24;
        self.reset_registers();
    }

    /// INIT (SDM 11.4.7.3, 11.12.5.1): like RESET, except that the APIC ID
    /// and `IA32_APIC_BASE` (hence the mode) are kept.
    pub fn init(&mut self) {
        self.reset_registers();
    }

    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = 0xFFFF_FFFF;
        self.svr = 0xFF;
        self.isr = Bitmap256::default();
        self.tmr = Bitmap256::default();
        self.irr = Bitmap256::default();
        self.esr = 0;
        self.esr_pending = 0;
        self.lvt = [Lvt::RESET_VALUE; 7];
        self.icr_low = 0;
        self.icr_high = 0;
        self.timer.reset();
    }

    // ----- mode and identity -----

    /// The current `IA32_APIC_BASE` value.
    pub fn apic_base(&self) -> ApicBase {
        self.base
    }

    /// The current mode (disabled, xAPIC, x2APIC).
    pub fn mode(&self) -> ApicMode {
        self.base.mode()
    }

    /// A `WRMSR` to `IA32_APIC_BASE`. Leaving an enabled mode for the
    /// disabled state resets every register but the ID (SDM 11.12.5.1:
    /// only the IDs survive).
    pub fn write_apic_base(&mut self, value: u64) -> Result {
        let new =
            self.base
                .checked_write(value, self.config.max_phys_addr_bits, self.config.x2apic)?;
        if new.mode() == ApicMode::Disabled && self.mode() != ApicMode::Disabled {
            self.reset_registers();
        }
        if new.mode() != self.mode() {
            log::debug!(
                "vlapic {}: {:?} -> {:?}",
                self.config.apic_id,
                self.mode(),
                new.mode()
            );
        }
        self.base = new;
        Ok(())
    }

    /// The APIC ID as the guest sees it now: 32 bits in x2APIC mode, the
    /// 8-bit xAPIC ID otherwise.
    pub fn apic_id(&self) -> u32 {
        match self.mode() {
            ApicMode::X2Apic => self.config.apic_id,
            _ => self.xapic_id >> 24,
        }
    }

    /// The logical x2APIC ID derived from the x2APIC ID (SDM 11.12.10.2):
    /// cluster `id >> 4` in bits 31:16, bit `id & 0xF` in bits 15:0.
    pub fn x2apic_ldr(&self) -> u32 {
        let id = self.config.apic_id;
        ((id >> 4) << 16) | (1 << (id & 0xF))
    }

    fn ldr_value(&self) -> u32 {
        match self.mode() {
            ApicMode::X2Apic => self.x2apic_ldr(),
            _ => self.ldr,
        }
    }

    /// Whether the APIC is software-enabled (SVR bit 8).
    pub fn is_software_enabled(&self) -> bool {
        self.svr & SVR_APIC_ENABLE != 0
    }

    /// Whether fixed interrupts can be accepted: globally enabled in
    /// `IA32_APIC_BASE` and software-enabled in the SVR.
    pub fn is_enabled(&self) -> bool {
        self.base.is_enabled() && self.is_software_enabled()
    }

    // ----- priorities -----

    /// The task priority register.
    pub fn tpr(&self) -> u8 {
        self.tpr as u8
    }

    /// CR8 as the guest reads it: `TPR[7:4]` (SDM 11.8.6.1).
    pub fn cr8(&self) -> u64 {
        (self.tpr >> 4) as u64
    }

    /// A guest write to CR8: `TPR[7:4] = CR8[3:0]`, `TPR[3:0] = 0`. Bits above
    /// 3 are reserved (the caller raises #GP for them).
    pub fn set_cr8(&mut self, value: u64) -> Result {
        if value > 0xF {
            return Err(Error::ReservedBits {
                reg: ApicRegister::Tpr,
                value,
            });
        }
        self.tpr = (value as u32) << 4;
        Ok(())
    }

    /// The processor priority (SDM 11.8.3.1): TPR if `TPR[7:4] >= ISRV[7:4]`,
    /// otherwise `ISRV[7:4]` with sub-class 0.
    pub fn ppr(&self) -> u8 {
        let isrv = self.isr.highest().unwrap_or(0) as u32;
        let ppr = if (self.tpr >> 4) >= (isrv >> 4) {
            self.tpr
        } else {
            isrv & 0xF0
        };
        ppr as u8
    }

    /// The arbitration priority (SDM 11.6.2.4, xAPIC only): TPR if
    /// `TPR[7:4] >= IRRV[7:4]` and `TPR[7:4] > ISRV[7:4]`, otherwise the
    /// highest of the three classes with sub-class 0.
    pub fn apr(&self) -> u8 {
        let isrv = self.isr.highest().unwrap_or(0) as u32;
        let irrv = self.irr.highest().unwrap_or(0) as u32;
        let t = self.tpr >> 4;
        let apr = if t >= irrv >> 4 && t > isrv >> 4 {
            self.tpr
        } else {
            t.max(isrv >> 4).max(irrv >> 4) << 4
        };
        apr as u8
    }

    // ----- interrupt queues -----

    /// Accepts an edge-triggered fixed interrupt (from the IOAPIC, an IPI,
    /// an LVT). See [`VLocalApic::accept_interrupt_with_trigger`].
    pub fn accept_interrupt(&mut self, vector: u8) -> bool {
        self.accept_interrupt_with_trigger(vector, TriggerMode::Edge)
    }

    /// Accepts a fixed interrupt: sets its IRR bit and records its trigger
    /// mode in the TMR. Returns whether it was accepted. Vectors 0-15 are
    /// illegal and set ESR "received illegal vector" (bit 6) instead; an
    /// APIC that is disabled (globally or by software) drops it.
    pub fn accept_interrupt_with_trigger(&mut self, vector: u8, trigger: TriggerMode) -> bool {
        if !self.is_enabled() {
            return false;
        }
        if vector < 16 {
            self.record_error(esr::RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        self.irr.set(vector);
        match trigger {
            TriggerMode::Edge => self.tmr.clear(vector),
            TriggerMode::Level => self.tmr.set(vector),
        }
        true
    }

    /// Whether this APIC has nothing to do before the next entry: no
    /// interrupt requested (IRR empty) and no timer that can expire (or the
    /// APIC is disabled). A VM may skip reading its clock then.
    #[inline]
    pub fn is_quiet(&self) -> bool {
        !self.base.is_enabled() || (self.irr.is_empty() && !self.timer.is_armed(self.timer_mode()))
    }

    /// The vector the vCPU should take next: the highest IRR vector whose
    /// priority class is above the PPR's (SDM 11.8.3.1), if any, and if the
    /// APIC is enabled.
    pub fn highest_pending(&self) -> Option<u8> {
        if !self.is_enabled() {
            return None;
        }
        let v = self.irr.highest()?;
        ((v >> 4) > (self.ppr() >> 4)).then_some(v)
    }

    /// The vCPU has injected `vector`: its IRR bit moves to the ISR.
    /// Returns `false` (and changes nothing) if it was not pending.
    pub fn ack(&mut self, vector: u8) -> bool {
        if !self.irr.get(vector) {
            return false;
        }
        self.irr.clear(vector);
        self.isr.set(vector);
        true
    }

    /// End of interrupt: clears the highest ISR bit. Returns the vector and
    /// its trigger mode, or `None` if no interrupt was in service.
    pub fn eoi(&mut self) -> Option<ApicEvent> {
        let vector = self.isr.highest()?;
        self.isr.clear(vector);
        let trigger = if self.tmr.get(vector) {
            TriggerMode::Level
        } else {
            TriggerMode::Edge
        };
        Some(ApicEvent::Eoi { vector, trigger })
    }

    /// Whether `vector` is requested (IRR).
    pub fn irr_bit(&self, vector: u8) -> bool {
        self.irr.get(vector)
    }

    /// Whether `vector` is in service (ISR).
    pub fn isr_bit(&self, vector: u8) -> bool {
        self.isr.get(vector)
    }

    /// Whether `vector` was accepted level-triggered (TMR).
    pub fn tmr_bit(&self, vector: u8) -> bool {
        self.tmr.get(vector)
    }

    /// Logs errors: they show in the ESR after its next write. A newly seen
    /// error raises the LVT error interrupt unless masked.
    fn record_error(&mut self, bits: u32) {
        let new = bits & !self.esr_pending;
        self.esr_pending |= bits;
        if new == 0 || !self.is_enabled() {
            return;
        }
        let lvt = self.lvt[Lvt::Error.index()];
        if lvt & Lvt::MASK != 0 {
            return;
        }
        let vector = lvt as u8;
        if vector < 16 {
            self.esr_pending |= esr::RECEIVE_ILLEGAL_VECTOR;
        } else {
            self.irr.set(vector);
            self.tmr.clear(vector);
        }
    }

    /// Errors logged since the last ESR write (not yet visible in the ESR).
    pub fn pending_errors(&self) -> u32 {
        self.esr_pending
    }

    // ----- LVT and timer -----

    /// The value of an LVT entry.
    pub fn lvt(&self, lvt: Lvt) -> u32 {
        self.lvt[lvt.index()]
    }

    /// The timer mode selected in the LVT timer entry.
    pub fn timer_mode(&self) -> TimerMode {
        TimerMode::from_lvt(self.lvt[Lvt::Timer.index()]).unwrap_or(TimerMode::OneShot)
    }

    /// The timer current count register at `now`.
    pub fn current_count(&self, now: ApicTime) -> u32 {
        self.timer.current_count(self.timer_mode(), now.ns)
    }

    /// Settles the timer at `now`. If it expired and the LVT timer entry is
    /// not masked, the timer vector is set in the IRR and returned. A
    /// one-shot or TSC-deadline timer then stops; a periodic one reloads
    /// (periods missed since the last poll are merged into one interrupt).
    /// A masked timer expires all the same, silently.
    pub fn poll_timer(&mut self, now: ApicTime) -> Option<u8> {
        if !self.base.is_enabled() {
            return None;
        }
        match self.timer.poll(self.timer_mode(), now) {
            Expiry::None => None,
            Expiry::Expired => {
                let lvt = self.lvt[Lvt::Timer.index()];
                if lvt & Lvt::MASK != 0 {
                    return None;
                }
                let vector = lvt as u8;
                self.accept_interrupt(vector).then_some(vector)
            }
        }
    }

    /// When [`VLocalApic::poll_timer`] must next be called, or `None` if
    /// the timer is idle or masked (a masked timer's expiries have no
    /// visible effect; they are settled on the next timer register write).
    pub fn next_deadline(&self) -> Option<TimerDeadline> {
        if !self.base.is_enabled() || self.lvt[Lvt::Timer.index()] & Lvt::MASK != 0 {
            return None;
        }
        self.timer.next_deadline(self.timer_mode())
    }

    // ----- IPIs -----

    /// Whether this APIC is a destination of `req`. `is_sender` tells
    /// whether this APIC sent it (for the shorthands). Matching follows SDM
    /// 11.6.2: physical ID (or broadcast), logical flat/cluster model in
    /// xAPIC mode, logical cluster in x2APIC mode. Lowest-priority requests
    /// match every candidate; the VM picks one. A globally disabled APIC
    /// matches nothing.
    pub fn is_destination(&self, req: &IpiRequest, is_sender: bool) -> bool {
        if !self.base.is_enabled() {
            return false;
        }
        match req.shorthand {
            Shorthand::SelfOnly => is_sender,
            Shorthand::AllIncludingSelf => true,
            Shorthand::AllExcludingSelf => !is_sender,
            Shorthand::None => self.matches_dest(req.dest, req.dest_mode, req.broadcast_dest()),
        }
    }

    fn matches_dest(&self, dest: u32, mode: DestinationMode, broadcast: u32) -> bool {
        if dest == broadcast {
            return true;
        }
        match mode {
            DestinationMode::Physical => self.apic_id() == dest,
            DestinationMode::Logical => {
                if self.mode() == ApicMode::X2Apic {
                    let ldr = self.x2apic_ldr();
                    dest >> 16 == ldr >> 16 && dest & ldr & 0xFFFF != 0
                } else {
                    let mda = dest & 0xFF;
                    let lid = self.ldr >> 24;
                    match self.dfr >> 28 {
                        // Flat model.
                        0xF => lid & mda != 0,
                        // Cluster model.
                        0x0 => lid >> 4 == mda >> 4 && lid & mda & 0xF != 0,
                        _ => false,
                    }
                }
            }
        }
    }

    fn send_ipi(&mut self, x2apic: bool) -> Result<Option<ApicEvent>> {
        let icr = ((self.icr_high as u64) << 32) | self.icr_low as u64;
        let req = IpiRequest::decode(icr, x2apic, self.apic_id())?;
        if req.needs_legal_vector() && req.vector < 16 {
            self.record_error(esr::SEND_ILLEGAL_VECTOR);
            return Ok(None);
        }
        if req.shorthand == Shorthand::SelfOnly && req.delivery_mode == DeliveryMode::Fixed {
            self.accept_interrupt_with_trigger(req.vector, req.trigger);
            return Ok(None);
        }
        Ok(Some(ApicEvent::Ipi(req)))
    }

    // ----- register access -----

    /// A guest read of the xAPIC page at `offset` (0..0x1000).
    ///
    /// Only aligned 32-bit reads of a register's first 4 bytes are accepted.
    /// Reserved offsets log ESR bit 7 and give [`Error::BadOffset`];
    /// write-only registers give [`Error::WriteOnly`]. On any error the VM
    /// returns 0 to the guest.
    pub fn read_xapic(&mut self, offset: u32, width: AccessWidth, now: ApicTime) -> Result<u32> {
        let reg = self.xapic_register(offset, width)?;
        self.read_register(reg, now).map(|v| v as u32)
    }

    /// A guest write of `value` to the xAPIC page at `offset`.
    ///
    /// Reserved bits are ignored (SDM: they read back as 0). Writes to
    /// read-only registers give [`Error::ReadOnly`] and change nothing;
    /// the VM ignores such errors, as the hardware does.
    pub fn write_xapic(
        &mut self,
        offset: u32,
        width: AccessWidth,
        value: u32,
        now: ApicTime,
    ) -> Result<Option<ApicEvent>> {
        let reg = self.xapic_register(offset, width)?;
        self.write_register(reg, value as u64, now)
    }

    fn xapic_register(&mut self, offset: u32, width: AccessWidth) -> Result<ApicRegister> {
        if self.mode() != ApicMode::XApic {
            return Err(Error::NotInXApicMode);
        }
        if offset >= 0x1000 {
            return Err(Error::BadOffset { offset });
        }
        if width != AccessWidth::Dword || offset & 0xF != 0 {
            return Err(Error::BadWidth {
                offset,
                size: width.size(),
            });
        }
        match ApicRegister::from_xapic_offset(offset) {
            Some(reg) => Ok(reg),
            None => {
                self.record_error(esr::ILLEGAL_REGISTER_ADDRESS);
                Err(Error::BadOffset { offset })
            }
        }
    }

    /// A guest `RDMSR` of an x2APIC register (0x800..=0x8FF). Every error
    /// means `#GP(0)`.
    pub fn read_x2apic_msr(&mut self, msr: u32, now: ApicTime) -> Result<u64> {
        let reg = self.x2apic_register(msr)?;
        self.read_register(reg, now)
    }

    /// A guest `WRMSR` of an x2APIC register (0x800..=0x8FF). Every error
    /// means `#GP(0)`: reserved bits (including bits 63:32 of every
    /// register but the ICR) are checked (SDM 11.12.1.3).
    pub fn write_x2apic_msr(
        &mut self,
        msr: u32,
        value: u64,
        now: ApicTime,
    ) -> Result<Option<ApicEvent>> {
        let reg = self.x2apic_register(msr)?;
        if reg != ApicRegister::IcrLow && value >> 32 != 0 {
            return Err(Error::ReservedBits { reg, value });
        }
        self.write_register(reg, value, now)
    }

    fn x2apic_register(&self, msr: u32) -> Result<ApicRegister> {
        if !(msr::X2APIC_FIRST..=msr::X2APIC_LAST).contains(&msr) {
            return Err(Error::BadMsr { msr });
        }
        if self.mode() != ApicMode::X2Apic {
            return Err(Error::NotInX2ApicMode);
        }
        ApicRegister::from_x2apic_msr(msr).ok_or(Error::BadMsr { msr })
    }

    /// Whether `msr` is one this crate answers through
    /// [`VLocalApic::read_msr`] / [`VLocalApic::write_msr`].
    pub fn handles_msr(msr: u32) -> bool {
        msr == msr::IA32_APIC_BASE
            || msr == msr::IA32_TSC_DEADLINE
            || (msr::X2APIC_FIRST..=msr::X2APIC_LAST).contains(&msr)
    }

    /// A guest `RDMSR` of `IA32_APIC_BASE`, `IA32_TSC_DEADLINE` or an
    /// x2APIC register. Every error means `#GP(0)`.
    pub fn read_msr(&mut self, msr: u32, now: ApicTime) -> Result<u64> {
        match msr {
            msr::IA32_APIC_BASE => Ok(self.base.bits()),
            msr::IA32_TSC_DEADLINE => {
                if !self.config.tsc_deadline {
                    return Err(Error::Unsupported("TSC-deadline timer not offered"));
                }
                // Reads 0 outside TSC-deadline mode.
                Ok(match self.timer_mode() {
                    TimerMode::TscDeadline => self.timer.tsc_deadline(),
                    _ => 0,
                })
            }
            _ => self.read_x2apic_msr(msr, now),
        }
    }

    /// A guest `WRMSR` of `IA32_APIC_BASE`, `IA32_TSC_DEADLINE` or an
    /// x2APIC register. Every error means `#GP(0)`.
    pub fn write_msr(&mut self, msr: u32, value: u64, now: ApicTime) -> Result<Option<ApicEvent>> {
        match msr {
            msr::IA32_APIC_BASE => self.write_apic_base(value).map(|()| None),
            msr::IA32_TSC_DEADLINE => {
                if !self.config.tsc_deadline {
                    return Err(Error::Unsupported("TSC-deadline timer not offered"));
                }
                if !self.base.is_enabled() {
                    return Ok(None);
                }
                let mode = self.timer_mode();
                self.timer.write_tsc_deadline(mode, value);
                Ok(None)
            }
            _ => self.write_x2apic_msr(msr, value, now),
        }
    }

    fn read_register(&self, reg: ApicRegister, now: ApicTime) -> Result<u64> {
        let x2 = self.mode() == ApicMode::X2Apic;
        let v: u64 = match reg {
            ApicRegister::Id if x2 => self.config.apic_id as u64,
            ApicRegister::Id => self.xapic_id as u64,
            ApicRegister::Version => APIC_VERSION as u64,
            ApicRegister::Tpr => self.tpr as u64,
            ApicRegister::Apr => self.apr() as u64,
            ApicRegister::Ppr => self.ppr() as u64,
            ApicRegister::Eoi | ApicRegister::SelfIpi => return Err(Error::WriteOnly { reg }),
            ApicRegister::Rrd => 0,
            ApicRegister::Ldr => self.ldr_value() as u64,
            ApicRegister::Dfr => self.dfr as u64,
            ApicRegister::Svr => self.svr as u64,
            ApicRegister::Isr(i) => self.isr.0[(i & 7) as usize] as u64,
            ApicRegister::Tmr(i) => self.tmr.0[(i & 7) as usize] as u64,
            ApicRegister::Irr(i) => self.irr.0[(i & 7) as usize] as u64,
            ApicRegister::Esr => self.esr as u64,
            ApicRegister::Lvt(lvt) => self.lvt[lvt.index()] as u64,
            ApicRegister::IcrLow if x2 => ((self.icr_high as u64) << 32) | self.icr_low as u64,
            ApicRegister::IcrLow => self.icr_low as u64,
            ApicRegister::IcrHigh => self.icr_high as u64,
            ApicRegister::TimerInitialCount => self.timer.initial_count() as u64,
            ApicRegister::TimerCurrentCount => self.current_count(now) as u64,
            ApicRegister::TimerDivideConfig => self.timer.divide_config() as u64,
        };
        Ok(v)
    }

    /// Keeps the bits of `value` in `allowed`; in x2APIC mode any other bit
    /// set is a reserved-bit fault.
    fn checked(&self, reg: ApicRegister, value: u64, allowed: u32) -> Result<u32> {
        if self.mode() == ApicMode::X2Apic && value & !(allowed as u64) != 0 {
            return Err(Error::ReservedBits { reg, value });
        }
        Ok(value as u32 & allowed)
    }

    fn write_register(
        &mut self,
        reg: ApicRegister,
        value: u64,
        now: ApicTime,
    ) -> Result<Option<ApicEvent>> {
        let x2 = self.mode() == ApicMode::X2Apic;
        if reg.is_read_only() || (x2 && matches!(reg, ApicRegister::Id | ApicRegister::Ldr)) {
            return Err(Error::ReadOnly { reg });
        }
        match reg {
            ApicRegister::Id => self.xapic_id = value as u32 & 0xFF00_0000,
            ApicRegister::Tpr => self.tpr = self.checked(reg, value, 0xFF)?,
            ApicRegister::Eoi => {
                // SDM 11.12.1.2: a non-zero EOI write in x2APIC mode is #GP.
                if x2 && value != 0 {
                    return Err(Error::ReservedBits { reg, value });
                }
                return Ok(self.eoi());
            }
            ApicRegister::Ldr => self.ldr = value as u32 & 0xFF00_0000,
            ApicRegister::Dfr => self.dfr = (value as u32 & 0xF000_0000) | 0x0FFF_FFFF,
            ApicRegister::Svr => {
                self.svr = self.checked(reg, value, SVR_WRITABLE)?;
                if !self.is_software_enabled() {
                    // SDM 11.4.7.2: software disable sets every LVT mask.
                    for lvt in &mut self.lvt {
                        *lvt |= Lvt::MASK;
                    }
                }
            }
            ApicRegister::Esr => {
                // Only 0 may be written in x2APIC mode.
                if x2 && value != 0 {
                    return Err(Error::ReservedBits { reg, value });
                }
                self.esr = self.esr_pending;
                self.esr_pending = 0;
            }
            ApicRegister::Lvt(lvt) => self.write_lvt(lvt, value, now)?,
            ApicRegister::IcrLow => {
                if x2 {
                    if value as u32 & X2APIC_ICR_RESERVED != 0 {
                        return Err(Error::ReservedBits { reg, value });
                    }
                    self.icr_high = (value >> 32) as u32;
                }
                self.icr_low = value as u32 & ICR_LOW_WRITABLE;
                return self.send_ipi(x2);
            }
            ApicRegister::IcrHigh => self.icr_high = value as u32 & 0xFF00_0000,
            ApicRegister::TimerInitialCount => {
                let count = self.checked(reg, value, u32::MAX)?;
                self.poll_timer(now);
                let mode = self.timer_mode();
                self.timer.write_initial_count(mode, count, now.ns);
            }
            ApicRegister::TimerDivideConfig => {
                let cfg = self.checked(reg, value, DIVIDE_CONFIG_MASK)?;
                self.poll_timer(now);
                let mode = self.timer_mode();
                self.timer.write_divide_config(mode, cfg, now.ns);
            }
            ApicRegister::SelfIpi => {
                let vector = self.checked(reg, value, 0xFF)? as u8;
                if vector < 16 {
                    self.record_error(esr::SEND_ILLEGAL_VECTOR);
                } else {
                    self.accept_interrupt(vector);
                }
            }
            ApicRegister::Version
            | ApicRegister::Apr
            | ApicRegister::Ppr
            | ApicRegister::Rrd
            | ApicRegister::Isr(_)
            | ApicRegister::Tmr(_)
            | ApicRegister::Irr(_)
            | ApicRegister::TimerCurrentCount => return Err(Error::ReadOnly { reg }),
        }
        Ok(None)
    }

    fn write_lvt(&mut self, lvt: Lvt, value: u64, now: ApicTime) -> Result {
        let reg = ApicRegister::Lvt(lvt);
        let mut writable = lvt.writable_mask();
        if lvt == Lvt::Timer {
            if TimerMode::from_lvt(value as u32).is_none() {
                return Err(Error::ReservedBits { reg, value });
            }
            if !self.config.tsc_deadline {
                writable &= !TimerMode::TscDeadline.lvt_bits();
            }
        }
        let mut new = self.checked(reg, value, writable | lvt.read_only_mask())? & writable;
        if !self.is_software_enabled() {
            new |= Lvt::MASK;
        }
        if lvt == Lvt::Timer {
            // Settle expiries under the old entry first.
            self.poll_timer(now);
            let old_mode = self.timer_mode();
            self.lvt[lvt.index()] = new;
            if self.timer_mode() != old_mode {
                self.timer.disarm();
            }
        } else {
            self.lvt[lvt.index()] = new;
        }
        Ok(())
    }
}
