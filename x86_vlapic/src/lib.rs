#![cfg_attr(not(test), no_std)]
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod base;
mod error;
mod ipi;
mod lapic;
pub mod regs;
mod timer;

#[cfg(test)]
mod tests;

pub use base::{ApicBase, ApicMode};
pub use error::{Error, Result};
pub use ipi::{
    DeliveryMode, DestinationMode, ICR_LOW_WRITABLE, IpiRequest, Shorthand, TriggerMode,
    X2APIC_ICR_RESERVED,
};
pub use lapic::{
    APIC_VERSION, ApicEvent, DEFAULT_BUS_FREQ_HZ, SVR_APIC_ENABLE, SVR_WRITABLE, VLocalApic,
    VLocalApicConfig,
};
pub use regs::{ApicRegister, Lvt};
pub use timer::{ApicTime, DIVIDE_CONFIG_MASK, TimerDeadline, TimerMode, divisor};
