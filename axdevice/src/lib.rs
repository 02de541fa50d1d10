#![cfg_attr(not(test), no_std)]
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

extern crate alloc;

mod console;
mod device;
mod error;
mod hpet;
mod ioapic;
mod pic;
mod power;
mod ram;
mod set;
mod uart;

#[cfg(test)]
mod tests;

pub use console::{NullBackend, RingBuffer, UartBackend};
pub use device::{
    BaseDevice, IrqSink, MmioDevice, MmioRange, MsrDevice, MsrRange, PortDevice, PortRange,
    VCpuDevice, VCpuId,
};
pub use error::{DeviceKind, Error, Result, Span};
pub use hpet::{
    Clock, HPET_COUNT_SIZE_CAP, HPET_ENABLE_CNF, HPET_LEG_RT_CAP, HPET_LEG_RT_CNF,
    HPET_TN_PER_INT_CAP, HPET_TN_SIZE_CAP, Hpet,
};
pub use ioapic::{IOAPIC_RTE_MASKED, IoApic};
pub use pic::{PIC_MASTER_PORT, PIC_SLAVE_PORT, Pic8259, PicPorts};
pub use power::{DebugExit, PowerOff};
pub use ram::RamDevice;
pub use set::{DeviceSet, VCpuDeviceSet};
pub use uart::{
    COM1_BASE, COM1_IRQ, COM2_BASE, COM2_IRQ, COM3_BASE, COM4_BASE, DEFAULT_RX_CAPACITY,
    UART_PORTS, Uart16550,
};
