//! Tests of `Vm` through the public API, with a scripted mock vCPU and host
//! heap memory.

mod boot;
mod common;
mod errors;
mod exits;
mod lapic;
mod mmio;
mod mock;
