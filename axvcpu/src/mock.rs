//! A scriptable mock architecture for the tests.

use std::cell::Cell;
use std::collections::VecDeque;
use std::vec::Vec;

use axaddrspace::{GuestPhysAddr, HostPhysAddr};

use crate::{ArchError, AxArchPerCpu, AxArchVCpu, AxVCpuExitReason, Error, Result};

/// Which operations of a [`MockVCpu`] fail.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fail {
    pub new: bool,
    pub set_entry: bool,
    pub set_ept_root: bool,
    pub setup: bool,
    pub bind: bool,
    pub unbind: bool,
    pub inject: bool,
}

/// The error a failing mock operation returns.
pub const fn mock_err(op: &'static str) -> Error {
    Error::Arch(ArchError::with_code(op, 0x42))
}

/// Creation parameters of a [`MockVCpu`].
#[derive(Debug, Default)]
pub struct MockCreate {
    pub script: Vec<Result<AxVCpuExitReason>>,
    pub fail: Fail,
}

/// A vCPU that returns scripted exits and checks that it is driven in order.
#[derive(Debug)]
pub struct MockVCpu {
    pub id: usize,
    pub regs: [u64; 16],
    pub entry: Option<GuestPhysAddr>,
    pub ept_root: Option<HostPhysAddr>,
    pub setup_with: Option<u32>,
    pub bound: bool,
    pub script: VecDeque<Result<AxVCpuExitReason>>,
    pub injected: Vec<u8>,
    pub fail: Fail,
    /// Every call that reached the mock, in order.
    pub calls: Vec<&'static str>,
}

impl AxArchVCpu for MockVCpu {
    type CreateConfig = MockCreate;
    type SetupConfig = u32;

    fn new(vcpu_id: usize, config: MockCreate) -> Result<Self> {
        if config.fail.new {
            return Err(mock_err("new"));
        }
        Ok(Self {
            id: vcpu_id,
            regs: [0; 16],
            entry: None,
            ept_root: None,
            setup_with: None,
            bound: false,
            script: config.script.into(),
            injected: Vec::new(),
            fail: config.fail,
            calls: Vec::new(),
        })
    }

    fn set_entry(&mut self, entry: GuestPhysAddr) -> Result {
        self.calls.push("set_entry");
        if self.fail.set_entry {
            return Err(mock_err("set_entry"));
        }
        self.entry = Some(entry);
        Ok(())
    }

    fn set_ept_root(&mut self, ept_root: HostPhysAddr) -> Result {
        self.calls.push("set_ept_root");
        if self.fail.set_ept_root {
            return Err(mock_err("set_ept_root"));
        }
        self.ept_root = Some(ept_root);
        Ok(())
    }

    fn setup(&mut self, config: u32) -> Result {
        self.calls.push("setup");
        if self.fail.setup {
            return Err(mock_err("setup"));
        }
        if self.entry.is_none() || self.ept_root.is_none() || self.setup_with.is_some() {
            return Err(Error::BadState);
        }
        self.setup_with = Some(config);
        Ok(())
    }

    fn run(&mut self) -> Result<AxVCpuExitReason> {
        self.calls.push("run");
        if !self.bound || self.setup_with.is_none() {
            return Err(Error::BadState);
        }
        self.script
            .pop_front()
            .unwrap_or(Err(Error::arch("script exhausted")))
    }

    fn bind(&mut self) -> Result {
        self.calls.push("bind");
        if self.fail.bind {
            return Err(mock_err("bind"));
        }
        if self.bound || self.setup_with.is_none() {
            return Err(Error::BadState);
        }
        self.bound = true;
        Ok(())
    }

    fn unbind(&mut self) -> Result {
        self.calls.push("unbind");
        if self.fail.unbind {
            return Err(mock_err("unbind"));
        }
        if !self.bound {
            return Err(Error::BadState);
        }
        self.bound = false;
        Ok(())
    }

    fn set_gpr(&mut self, reg: usize, val: u64) {
        self.regs[reg] = val;
    }

    fn gpr(&self, reg: usize) -> u64 {
        self.regs[reg]
    }

    fn inject_interrupt(&mut self, vector: u8) -> Result {
        self.calls.push("inject_interrupt");
        if self.fail.inject {
            return Err(mock_err("inject_interrupt"));
        }
        self.injected.push(vector);
        Ok(())
    }

    fn set_return_value(&mut self, val: u64) {
        self.regs[0] = val;
    }
}

std::thread_local! {
    /// How many times a MockPerCpu was disabled on this thread.
    pub static DISABLES: Cell<usize> = const { Cell::new(0) };
}

/// CPU id for which [`MockPerCpu::new`] fails.
pub const FAILING_CPU: usize = 99;

/// A per-CPU virtualization switch with failure knobs.
#[derive(Debug)]
pub struct MockPerCpu {
    pub cpu_id: usize,
    pub on: bool,
    pub fail_enable: bool,
    pub fail_disable: bool,
    /// Report success without changing anything.
    pub lie: bool,
    pub enables: usize,
}

impl AxArchPerCpu for MockPerCpu {
    fn new(cpu_id: usize) -> Result<Self> {
        if cpu_id == FAILING_CPU {
            return Err(mock_err("percpu new"));
        }
        Ok(Self {
            cpu_id,
            on: false,
            fail_enable: false,
            fail_disable: false,
            lie: false,
            enables: 0,
        })
    }

    fn is_enabled(&self) -> bool {
        self.on
    }

    fn hardware_enable(&mut self) -> Result {
        if self.fail_enable {
            return Err(mock_err("enable"));
        }
        self.enables += 1;
        if !self.lie {
            self.on = true;
        }
        Ok(())
    }

    fn hardware_disable(&mut self) -> Result {
        if self.fail_disable {
            return Err(mock_err("disable"));
        }
        DISABLES.with(|d| d.set(d.get() + 1));
        if !self.lie {
            self.on = false;
        }
        Ok(())
    }
}
