//! A vCPU that plays back a script of exits and records what the VM did
//! to it.

use std::collections::VecDeque;

use axaddrspace::AccessWidth;
use axvcpu::{AxArchVCpu, AxVCpuExitReason, Error, GuestPhysAddr, HostPhysAddr, Result};
use x86_vcpu::decode::{MmioOp, decode_mmio};
use x86_vcpu::mmio_rmw::{ARITH_FLAGS, decode_mmio_rmw};
use x86_vcpu::{GuestCodeLocation, X86VcpuExt, X86VcpuSetupConfig};

/// 64-bit long mode with 4-level paging rooted at `cr3`, at `rip`.
pub fn long_mode(rip: u64, cr3: u64) -> GuestCodeLocation {
    GuestCodeLocation {
        linear_rip: rip,
        cr0: 0x8000_0011, // PG | ET | PE
        cr3,
        cr4: 0x20,   // PAE
        efer: 0x500, // LME | LMA
        bitness: 64,
    }
}

/// 32-bit protected mode, paging off (linear == physical), at `rip`.
pub fn flat32(rip: u64) -> GuestCodeLocation {
    GuestCodeLocation {
        linear_rip: rip,
        cr0: 0x11, // ET | PE
        cr3: 0,
        cr4: 0,
        efer: 0,
        bitness: 32,
    }
}

#[derive(Debug)]
pub struct MockVcpu {
    pub id: usize,
    pub regs: [u64; 16],
    /// The exits `run` returns, in order; running past the end is an error.
    pub script: VecDeque<AxVCpuExitReason>,
    pub entry: Option<GuestPhysAddr>,
    pub ept_root: Option<HostPhysAddr>,
    pub setup: Option<X86VcpuSetupConfig>,
    pub loc: GuestCodeLocation,
    /// The instruction bytes each `decode_mmio` call was given.
    pub decoded: Vec<Vec<u8>>,
    pub binds: usize,
    pub runs: usize,
    /// The vectors the VM injected, in order.
    pub injected: Vec<u8>,
    /// RFLAGS (only the arithmetic flags an emulated instruction sets).
    pub rflags: u64,
    /// The guest takes interrupts once `runs` has reached this (0: always).
    pub ready_after: usize,
    /// How often the VM asked for an interrupt window.
    pub window_requests: usize,
    /// RFLAGS.IF as the guest has it.
    pub interrupts_on: bool,
}

impl AxArchVCpu for MockVcpu {
    type CreateConfig = Vec<AxVCpuExitReason>;
    type SetupConfig = X86VcpuSetupConfig;

    fn new(id: usize, script: Self::CreateConfig) -> Result<Self> {
        Ok(Self {
            id,
            regs: [0; 16],
            script: script.into(),
            entry: None,
            ept_root: None,
            setup: None,
            loc: flat32(0),
            decoded: Vec::new(),
            binds: 0,
            runs: 0,
            injected: Vec::new(),
            rflags: 0x2,
            ready_after: 0,
            window_requests: 0,
            interrupts_on: true,
        })
    }

    fn set_entry(&mut self, entry: GuestPhysAddr) -> Result {
        self.entry = Some(entry);
        self.loc.linear_rip = entry.as_usize() as u64;
        Ok(())
    }

    fn set_ept_root(&mut self, ept_root: HostPhysAddr) -> Result {
        self.ept_root = Some(ept_root);
        Ok(())
    }

    fn setup(&mut self, config: X86VcpuSetupConfig) -> Result {
        self.setup = Some(config);
        Ok(())
    }

    fn run(&mut self) -> Result<AxVCpuExitReason> {
        self.runs += 1;
        self.script
            .pop_front()
            .ok_or(Error::arch("mock vCPU: script ran out"))
    }

    fn bind(&mut self) -> Result {
        self.binds += 1;
        Ok(())
    }

    fn unbind(&mut self) -> Result {
        Ok(())
    }

    fn set_gpr(&mut self, reg: usize, val: u64) {
        self.regs[reg] = val;
    }

    fn gpr(&self, reg: usize) -> u64 {
        self.regs[reg]
    }

    fn inject_interrupt(&mut self, vector: u8) -> Result {
        if vector < 32 {
            return Err(Error::InvalidArgument("vectors 0..32 are exceptions"));
        }
        self.injected.push(vector);
        Ok(())
    }

    fn set_return_value(&mut self, val: u64) {
        self.regs[0] = val;
    }
}

impl X86VcpuExt for MockVcpu {
    fn guest_code_location(&self) -> GuestCodeLocation {
        self.loc
    }

    fn ready_for_interrupt(&self) -> bool {
        self.runs >= self.ready_after
    }

    fn request_interrupt_window(&mut self) -> x86_vcpu::Result<()> {
        self.window_requests += 1;
        Ok(())
    }

    fn interrupts_enabled(&self) -> bool {
        self.interrupts_on
    }

    /// What the real backends do: decode with `x86_vcpu::decode`, step RIP,
    /// read a store's source register.
    fn decode_mmio(
        &mut self,
        addr: GuestPhysAddr,
        insn: &[u8],
    ) -> x86_vcpu::Result<AxVCpuExitReason> {
        self.decoded.push(insn.to_vec());
        let i = decode_mmio(insn, self.loc.bitness)?;
        self.loc.linear_rip += i.len as u64;
        Ok(match i.op {
            MmioOp::Load {
                reg,
                reg_width,
                sign_extend,
            } => AxVCpuExitReason::MmioRead {
                addr,
                width: i.width,
                reg,
                reg_width,
                signed_ext: sign_extend,
            },
            MmioOp::Store(_) => AxVCpuExitReason::MmioWrite {
                addr,
                width: i.width,
                data: i.store_value(|r| self.regs[r]).unwrap(),
            },
        })
    }

    /// What the real backends do: decode with `x86_vcpu::mmio_rmw`, read,
    /// compute, write back, keep the flags, step RIP.
    fn emulate_mmio_rmw(
        &mut self,
        insn: &[u8],
        access: &mut dyn FnMut(AccessWidth, Option<u64>) -> u64,
    ) -> x86_vcpu::Result<()> {
        self.decoded.push(insn.to_vec());
        let i = decode_mmio_rmw(insn, self.loc.bitness)?;
        let src = i.source(|r| self.regs[r]);
        let out = i.apply(access(i.width, None), src);
        if let Some(v) = out.write {
            access(i.width, Some(v));
        }
        self.rflags = (self.rflags & !ARITH_FLAGS) | out.flags;
        self.loc.linear_rip += i.len as u64;
        Ok(())
    }
}
