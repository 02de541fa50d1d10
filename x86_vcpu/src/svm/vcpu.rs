//! The SVM vCPU and per-CPU state, implementing the `axvcpu` traits.
//!
//! Everything except the VMRUN itself is plain memory work on the VMCB and
//! is tested on the host: setup, interrupt injection, and exit handling
//! ([`SvmVcpu::handle_exit`]). VMRUN lives in [`super::hw`] and only exists
//! on bare metal (`target_os = "none"`).

use axaddrspace::{AccessWidth, GuestPhysAddr, HostPhysAddr};
use axvcpu::{AxArchPerCpu, AxArchVCpu, AxVCpuExitReason};

use super::bitmap::{IOPM_SIZE, MSRPM_SIZE, SvmIopm, SvmMsrpm};
use super::event::SvmEvent;
use super::exit::{IoioInfo, SvmExitCode, code as exit_code, npf_access_flags};
use super::setup::{SvmControlsConfig, check_vmcb, write_controls, write_guest_state};
use super::vmcb::{InterceptMisc1, Vmcb, tlb_control, vintr};
use crate::cpuid::CpuidPolicy;
use crate::decode_cache::DecodeCache;
use crate::guest_msrs::{MsrSwitch, SyscallMsrs};
use crate::hal::{Hal, PAGE_SIZE, PhysFrames};
use crate::mmio_rmw::{ARITH_FLAGS, decode_mmio_rmw};
use crate::msr::{self, MsrAccess, efer};
use crate::regs::GeneralRegisters;
use crate::vcpu::{
    GuestCodeLocation, PendingInterrupts, X86VcpuCreateConfig, X86VcpuExt, X86VcpuSetupConfig,
    bitness, mmio_exit, validate_xcr0,
};
use crate::vendor::{CpuidSource, HwCpuid, SvmFeatures, VirtKind, detect};
use crate::{Error, Result};

/// Instruction lengths used to step over an intercepted instruction when the
/// processor has no NRIP save (QEMU TCG): these instructions have one
/// encoding without prefixes.
mod insn_len {
    pub const CPUID: u64 = 2;
    pub const HLT: u64 = 1;
    pub const VMMCALL: u64 = 3;
    pub const RDMSR_WRMSR: u64 = 2;
    pub const XSETBV: u64 = 3;
    pub const INVD: u64 = 2;
}

/// MSRs the guest may access directly: VMRUN/VMLOAD/VMSAVE switch them
/// through the VMCB (or, for PAT under nested paging, G_PAT).
const PASSTHROUGH_MSRS: [u32; 11] = [
    msr::IA32_FS_BASE,
    msr::IA32_GS_BASE,
    msr::IA32_KERNEL_GS_BASE,
    msr::IA32_STAR,
    msr::IA32_LSTAR,
    msr::IA32_CSTAR,
    msr::IA32_FMASK,
    msr::IA32_SYSENTER_CS,
    msr::IA32_SYSENTER_ESP,
    msr::IA32_SYSENTER_EIP,
    msr::IA32_PAT,
];

/// A vCPU on AMD SVM.
pub struct SvmVcpu<H: Hal> {
    id: usize,
    vmcb: PhysFrames<H>,
    host_save: PhysFrames<H>,
    iopm: SvmIopm<PhysFrames<H>>,
    msrpm: SvmMsrpm<PhysFrames<H>>,
    regs: GeneralRegisters,
    entry: Option<GuestPhysAddr>,
    n_cr3: Option<HostPhysAddr>,
    asid: u32,
    cpuid: CpuidPolicy,
    features: SvmFeatures,
    pending: PendingInterrupts,
    guest_xcr0: u64,
    ready: bool,
    /// The VMCB state that [`check_vmcb`] looks at may have changed since it
    /// last passed: check again before the next VMRUN.
    vmcb_dirty: bool,
    /// The consistency check the VMCB failed at the last `run`, if any.
    entry_failure: Option<&'static str>,
    /// Decoded MMIO instructions ([`X86VcpuExt::decode_mmio`]).
    decode_cache: DecodeCache,
    /// TSC_AUX, which VMRUN and VMLOAD/VMSAVE do not switch (empty on a
    /// processor without RDTSCP).
    msrs: MsrSwitch,
}

impl<H: Hal> core::fmt::Debug for SvmVcpu<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SvmVcpu")
            .field("id", &self.id)
            .field("vmcb", &self.vmcb.paddr())
            .field("asid", &self.asid)
            .field("ready", &self.ready)
            .finish()
    }
}

impl<H: Hal> SvmVcpu<H> {
    /// Creates vCPU `id` for a processor with SVM `features` (from
    /// [`crate::vendor::detect`]). The trait's `new` does this with the real CPUID.
    pub fn with_features(
        id: usize,
        config: X86VcpuCreateConfig,
        features: SvmFeatures,
    ) -> Result<Self> {
        if config.tag == 0 {
            return Err(Error::InvalidArgument("ASID 0 belongs to the host"));
        }
        if features.num_asids != 0 && u32::from(config.tag) >= features.num_asids {
            return Err(Error::InvalidArgument(
                "ASID beyond the number the processor supports",
            ));
        }
        let mut msrpm = SvmMsrpm::new_intercept_all(PhysFrames::alloc_zeroed(
            MSRPM_SIZE / PAGE_SIZE,
            "SVM MSRPM",
        )?)?;
        for m in PASSTHROUGH_MSRS {
            msrpm.set_read_write(m, false)?;
        }
        msrpm.set_intercept(msr::IA32_TSC, crate::vmx::MsrAccessKind::Read, false)?;
        // TSC_AUX: the guest's own value sits in the processor while the
        // vCPU is loaded (`MsrSwitch`), so RDMSR/WRMSR go straight to it,
        // like RDTSCP and RDPID.
        let msrs = if features.rdtscp {
            msrpm.set_read_write(msr::IA32_TSC_AUX, false)?;
            MsrSwitch::new(&[msr::IA32_TSC_AUX])?
        } else {
            MsrSwitch::new(&[])?
        };
        Ok(Self {
            id,
            vmcb: PhysFrames::alloc_zeroed(1, "VMCB")?,
            host_save: PhysFrames::alloc_zeroed(1, "SVM host save page")?,
            iopm: SvmIopm::new_intercept_all(PhysFrames::alloc_zeroed(
                IOPM_SIZE / PAGE_SIZE,
                "SVM IOPM",
            )?)?,
            msrpm,
            regs: GeneralRegisters::default(),
            entry: None,
            n_cr3: None,
            asid: config.tag.into(),
            cpuid: config.cpuid,
            features,
            pending: PendingInterrupts::default(),
            guest_xcr0: 1,
            ready: false,
            vmcb_dirty: true,
            entry_failure: None,
            decode_cache: DecodeCache::new(),
            msrs,
        })
    }

    /// The vCPU id.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The VMCB.
    pub fn vmcb(&self) -> &Vmcb {
        // SAFETY: the frame is 4096 bytes and 4 KiB aligned (checked by
        // `PhysFrames`), any byte pattern is a valid `Vmcb`, and the borrow
        // of `self` covers the frame's lifetime.
        unsafe { &*(self.vmcb.as_ref().as_ptr() as *const Vmcb) }
    }

    /// The VMCB, mutably. Anything may change through it, so the next
    /// [`AxArchVCpu::run`] checks the VMCB again ([`check_vmcb`]) before
    /// VMRUN.
    pub fn vmcb_mut(&mut self) -> &mut Vmcb {
        self.vmcb_dirty = true;
        self.vmcb_raw_mut()
    }

    /// The VMCB, mutably, without asking for a new consistency check: only
    /// for the exit handlers' writes to fields [`check_vmcb`] does not look
    /// at (RIP, RAX, RSP, the interrupt shadow, V_INTR, the VINTR intercept,
    /// TLB_CONTROL) or values valid by construction (EVENTINJ from an
    /// [`SvmEvent`]).
    #[inline(always)]
    fn vmcb_raw_mut(&mut self) -> &mut Vmcb {
        // SAFETY: as in `vmcb`, with exclusive access through `&mut self`.
        unsafe { &mut *(self.vmcb.as_mut().as_mut_ptr() as *mut Vmcb) }
    }

    /// Whether the next [`AxArchVCpu::run`] checks the VMCB before VMRUN:
    /// after setup's own check it does not, until the VMCB may have changed
    /// in a way the guest cannot cause (a write through [`Self::vmcb_mut`],
    /// a new nested page table root, an emulated EFER write, a failed
    /// VMRUN). The guest's own state changes are checked by the processor
    /// as the guest makes them.
    pub fn entry_check_pending(&self) -> bool {
        self.vmcb_dirty
    }

    /// The software switch of TSC_AUX ([`crate::guest_msrs`]).
    pub fn msr_switch(&self) -> &MsrSwitch {
        &self.msrs
    }

    /// The guest's STAR, LSTAR, CSTAR, SFMASK and KERNEL_GS_BASE (from the
    /// VMCB, where VMSAVE leaves them after each exit) and TSC_AUX (from
    /// `hw`, the processor's MSRs, while the vCPU is loaded there).
    pub fn syscall_msrs(&self, hw: &impl MsrAccess) -> SyscallMsrs {
        let s = &self.vmcb().save;
        SyscallMsrs {
            star: s.star,
            lstar: s.lstar,
            cstar: s.cstar,
            fmask: s.sfmask,
            kernel_gs_base: s.kernel_gs_base,
            tsc_aux: self.msrs.guest(hw).tsc_aux,
        }
    }

    /// Sets the guest's software-switched MSRs as [`Self::syscall_msrs`]
    /// reads them (refused if WRMSR would refuse one).
    pub fn set_syscall_msrs(&mut self, values: SyscallMsrs) -> Result {
        self.msrs.set_guest(values)?;
        let s = &mut self.vmcb_raw_mut().save;
        s.star = values.star;
        s.lstar = values.lstar;
        s.cstar = values.cstar;
        s.sfmask = values.fmask;
        s.kernel_gs_base = values.kernel_gs_base;
        Ok(())
    }

    /// The MMIO decode cache (for statistics).
    pub fn decode_cache(&self) -> &DecodeCache {
        &self.decode_cache
    }

    /// Physical address of the VMCB.
    pub fn vmcb_paddr(&self) -> HostPhysAddr {
        self.vmcb.paddr()
    }

    /// The I/O permission map (all ports intercepted by default).
    pub fn iopm_mut(&mut self) -> &mut SvmIopm<PhysFrames<H>> {
        &mut self.iopm
    }

    /// The MSR permission map.
    pub fn msrpm_mut(&mut self) -> &mut SvmMsrpm<PhysFrames<H>> {
        &mut self.msrpm
    }

    /// Why the last [`AxArchVCpu::run`] did not enter the guest: the
    /// consistency check ([`check_vmcb`]) the VMCB failed, reported as
    /// `FailEntry` with [`super::VMEXIT_INVALID`] without executing VMRUN.
    /// `None` after a run that entered the guest, including one the
    /// processor failed for a reason `check_vmcb` does not know.
    pub fn entry_failure(&self) -> Option<&'static str> {
        self.entry_failure
    }

    /// The guest's XCR0 as last set by XSETBV.
    pub fn guest_xcr0(&self) -> u64 {
        self.guest_xcr0
    }

    /// Number of interrupts waiting for injection.
    pub fn pending_interrupts(&self) -> usize {
        self.pending.len()
    }

    #[inline]
    fn get_reg(&self, reg: usize) -> Result<u64> {
        match reg {
            0 => Ok(self.vmcb().save.rax),
            4 => Ok(self.vmcb().save.rsp),
            _ => self.regs.get(reg),
        }
    }

    #[inline]
    fn set_reg(&mut self, reg: usize, val: u64) -> Result {
        match reg {
            0 => self.vmcb_raw_mut().save.rax = val,
            4 => self.vmcb_raw_mut().save.rsp = val,
            _ => self.regs.set(reg, val)?,
        }
        Ok(())
    }

    /// Where general-purpose register `reg` (0 = RAX ... 15 = R15) lives:
    /// RAX and RSP in the VMCB, the others in the register block.
    #[inline]
    fn gpr_slot(&mut self, reg: usize) -> Option<&mut u64> {
        match reg {
            0 => return Some(&mut self.vmcb_raw_mut().save.rax),
            4 => return Some(&mut self.vmcb_raw_mut().save.rsp),
            _ => {}
        }
        let r = &mut self.regs;
        Some(match reg {
            1 => &mut r.rcx,
            2 => &mut r.rdx,
            3 => &mut r.rbx,
            5 => &mut r.rbp,
            6 => &mut r.rsi,
            7 => &mut r.rdi,
            8 => &mut r.r8,
            9 => &mut r.r9,
            10 => &mut r.r10,
            11 => &mut r.r11,
            12 => &mut r.r12,
            13 => &mut r.r13,
            14 => &mut r.r14,
            15 => &mut r.r15,
            _ => return None,
        })
    }

    /// The code-segment bitness (16, 32, 64) of the guest.
    #[inline]
    fn code_bitness(&self) -> u32 {
        let s = &self.vmcb().save;
        // VMCB attribute -> VMX access rights, for `bitness`.
        let cs_ar = (u32::from(s.cs.attrib & 0xf00) << 4) | u32::from(s.cs.attrib & 0xff);
        bitness(s.efer, cs_ar, s.cr0)
    }

    fn gpr32(&self, reg: usize) -> u64 {
        self.get_reg(reg).unwrap_or(0) & 0xffff_ffff
    }

    /// Steps over the intercepted instruction of length `len`: RIP = nRIP
    /// when the processor saved it, else RIP + `len`. Clears the interrupt
    /// shadow, as executing the instruction would.
    #[inline(always)]
    fn advance_rip(&mut self, len: u64) {
        let nrip = self.features.nrip_save;
        let v = self.vmcb_raw_mut();
        v.save.rip = if nrip && v.control.next_rip != 0 {
            v.control.next_rip
        } else {
            v.save.rip.wrapping_add(len)
        };
        v.control.interrupt_shadow &= !1;
    }

    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) -> Result {
        self.vmcb_raw_mut().control.event_inj = SvmEvent::exception(vector, error_code)?.to_raw();
        Ok(())
    }

    /// The TLB_CONTROL value that drops this guest's translations: flush by
    /// ASID where the processor has it (CPUID 8000_000Ah EDX bit 6), else
    /// the whole TLB (values 3 and 7 are reserved without FlushByAsid).
    fn asid_flush(&self) -> u8 {
        if self.features.flush_by_asid {
            tlb_control::FLUSH_ASID
        } else {
            tlb_control::FLUSH_ALL
        }
    }

    /// Whether the guest can take an external interrupt now.
    fn interruptible(&self) -> bool {
        let v = self.vmcb();
        v.save.rflags & (1 << 9) != 0 && v.control.interrupt_shadow & 1 == 0
    }

    /// Work before each VMRUN: inject the oldest pending interrupt if the
    /// guest can take it, otherwise ask for a VINTR exit when it can.
    #[inline]
    pub fn prepare_entry(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.inject_pending();
    }

    #[inline(never)]
    fn inject_pending(&mut self) {
        if self.vmcb().control.event_inj & super::event::EVENTINJ_VALID != 0 {
            return; // An event is being (re)delivered first.
        }
        let Some(vector) = self.pending.peek() else {
            return;
        };
        if self.interruptible() {
            self.pending.pop();
            // `push` refused vectors below 32, so this cannot fail.
            if let Ok(ev) = SvmEvent::interrupt(vector) {
                self.vmcb_raw_mut().control.event_inj = ev.to_raw();
            }
        } else {
            self.arm_vintr();
        }
    }

    /// A virtual interrupt with the VINTR intercept: an exit as soon as the
    /// guest can take an interrupt.
    fn arm_vintr(&mut self) {
        let c = &mut self.vmcb_raw_mut().control;
        c.vintr |= vintr::V_IRQ | vintr::V_IGN_TPR;
        c.intercept_misc1 |= InterceptMisc1::VINTR.bits();
    }

    /// See [`X86VcpuExt::ready_for_interrupt`].
    pub fn interrupt_ready(&self) -> bool {
        self.pending.is_empty()
            && self.vmcb().control.event_inj & super::event::EVENTINJ_VALID == 0
            && self.interruptible()
    }

    /// Decides what a #VMEXIT means, updating guest state (RIP, registers)
    /// for the exits handled here. `cpuid` answers the host CPUID for
    /// guest CPUID exits.
    ///
    /// The frequent exits (CPUID, port I/O, MSR, VMMCALL, nested page
    /// fault) are dispatched on the raw exit code; the rest through
    /// [`SvmExitCode`].
    #[inline]
    pub fn handle_exit(&mut self, cpuid: &impl CpuidSource) -> Result<AxVCpuExitReason> {
        let (code, info1, info2, int_info) = {
            let c = &self.vmcb().control;
            (c.exit_code, c.exit_info_1, c.exit_info_2, c.exit_int_info)
        };
        {
            let c = &mut self.vmcb_raw_mut().control;
            c.tlb_control = tlb_control::DO_NOTHING;
            // An event interrupted by the exit is delivered again.
            c.event_inj = 0;
        }
        if int_info & super::event::EVENTINJ_VALID != 0 {
            self.redeliver(int_info);
        }
        use AxVCpuExitReason as R;
        Ok(match code {
            exit_code::CPUID => {
                let (leaf, sub) = (self.vmcb().save.rax as u32, self.regs.rcx as u32);
                let r = self.cpuid.answer(leaf, sub, cpuid, self.vmcb().save.cr4);
                self.vmcb_raw_mut().save.rax = r.eax.into();
                self.regs.rbx = r.ebx.into();
                self.regs.rcx = r.ecx.into();
                self.regs.rdx = r.edx.into();
                self.advance_rip(insn_len::CPUID);
                R::Nothing
            }
            exit_code::IOIO => {
                let io = IoioInfo::from_raw(info1)?;
                if io.is_string {
                    return Err(Error::Unsupported("string port I/O (INS/OUTS)"));
                }
                // EXITINFO2 holds the RIP of the next instruction (APM 15.10.2).
                let v = self.vmcb_raw_mut();
                v.save.rip = info2;
                v.control.interrupt_shadow &= !1;
                if io.is_in {
                    R::IoRead {
                        port: io.port,
                        width: io.width,
                    }
                } else {
                    R::IoWrite {
                        port: io.port,
                        width: io.width,
                        data: v.save.rax & io.width.mask(),
                    }
                }
            }
            exit_code::MSR => self.handle_msr(info1 != 0)?,
            exit_code::VMMCALL => {
                self.advance_rip(insn_len::VMMCALL);
                // The register convention of `crate::vcpu::HYPERCALL_ARG_REGS`.
                let r = &self.regs;
                R::Hypercall {
                    nr: self.vmcb().save.rax,
                    args: [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9],
                }
            }
            exit_code::NPF => R::NestedPageFault {
                addr: GuestPhysAddr::from(info2 as usize),
                access_flags: npf_access_flags(info1),
            },
            _ => self.handle_other_exit(code, cpuid)?,
        })
    }

    /// EXITINTINFO is valid: deliver that event again if it is well formed.
    #[cold]
    fn redeliver(&mut self, int_info: u64) {
        if SvmEvent::from_raw(int_info).is_some() {
            self.vmcb_raw_mut().control.event_inj = int_info;
        }
    }

    /// The exits that are not frequent enough for [`Self::handle_exit`]'s
    /// fast dispatch.
    #[inline(never)]
    fn handle_other_exit(
        &mut self,
        code: u64,
        cpuid: &impl CpuidSource,
    ) -> Result<AxVCpuExitReason> {
        use AxVCpuExitReason as R;
        Ok(match SvmExitCode::from_raw(code) {
            SvmExitCode::Intr | SvmExitCode::Nmi | SvmExitCode::Smi | SvmExitCode::Init => {
                R::Nothing
            }
            SvmExitCode::Vintr => {
                let c = &mut self.vmcb_raw_mut().control;
                c.vintr &= !(vintr::V_IRQ | vintr::V_IGN_TPR);
                c.intercept_misc1 &= !InterceptMisc1::VINTR.bits();
                R::InterruptWindow
            }
            SvmExitCode::Hlt => {
                self.advance_rip(insn_len::HLT);
                R::Halt
            }
            SvmExitCode::Shutdown => R::TripleFault,
            SvmExitCode::Xsetbv => {
                let value = (self.gpr32(2) << 32) | self.gpr32(0);
                let host = cpuid.cpuid(0xd, 0);
                let supported = (u64::from(host.edx) << 32) | u64::from(host.eax);
                match validate_xcr0(value, supported) {
                    Some(v) if self.gpr32(1) == 0 => {
                        self.guest_xcr0 = v;
                        self.advance_rip(insn_len::XSETBV);
                    }
                    _ => self.inject_exception(13, Some(0))?,
                }
                R::Nothing
            }
            SvmExitCode::Invd => {
                self.advance_rip(insn_len::INVD);
                R::Nothing
            }
            SvmExitCode::Vmrun
            | SvmExitCode::Vmload
            | SvmExitCode::Vmsave
            | SvmExitCode::Stgi
            | SvmExitCode::Clgi
            | SvmExitCode::Skinit => {
                // SVM is hidden from the guest: #UD.
                self.inject_exception(6, None)?;
                R::Nothing
            }
            SvmExitCode::Exception(18) => {
                return Err(Error::Unsupported("machine check during guest execution"));
            }
            // Reported as -1 whichever width the processor stored. The VMCB
            // may hold something else than what was entered now: check it
            // again before another VMRUN.
            SvmExitCode::Invalid => {
                self.vmcb_dirty = true;
                R::FailEntry {
                    hardware_entry_failure_reason: super::exit::VMEXIT_INVALID,
                }
            }
            _ => return Err(Error::UnknownExit(code)),
        })
    }

    #[inline]
    fn handle_msr(&mut self, write: bool) -> Result<AxVCpuExitReason> {
        let msr = self.regs.rcx as u32;
        let value = (self.regs.rdx << 32) | (self.vmcb().save.rax & 0xffff_ffff);
        let exit = match (msr, write) {
            // EFER is in the VMCB; SVME stays set and hidden from the guest
            // (which is why EFER reads are intercepted at all).
            (msr::IA32_EFER, false) => {
                let v = self.vmcb().save.efer & !efer::SVME;
                self.vmcb_raw_mut().save.rax = v & 0xffff_ffff;
                self.regs.rdx = v >> 32;
                AxVCpuExitReason::Nothing
            }
            (msr::IA32_EFER, true) => {
                let old = self.vmcb().save.efer;
                let paging = self.vmcb().save.cr0 & crate::vmx::controls::cr0::PG != 0;
                if value & !(efer::SCE | efer::LME | efer::LMA | efer::NXE) != 0
                    || (paging && (value ^ old) & efer::LME != 0)
                {
                    // Reserved bits (SVME included, as the guest has no SVM),
                    // or LME changed while paging: #GP(0), RIP stays on the WRMSR.
                    self.inject_exception(13, Some(0))?;
                    return Ok(AxVCpuExitReason::Nothing);
                }
                // LMA is owned by the processor: keep the current value.
                let lma = old & efer::LMA;
                self.vmcb_mut().save.efer = (value & !efer::LMA) | lma | efer::SVME;
                AxVCpuExitReason::Nothing
            }
            (msr, false) => AxVCpuExitReason::MsrRead { msr },
            (msr, true) => AxVCpuExitReason::MsrWrite { msr, value },
        };
        self.advance_rip(insn_len::RDMSR_WRMSR);
        Ok(exit)
    }

    /// The consistency checks before a VMRUN, when the VMCB may have
    /// changed ([`Self::entry_check_pending`]): `Some(FailEntry)` with
    /// [`super::VMEXIT_INVALID`] for a state VMRUN would refuse (the failed
    /// check is kept in [`Self::entry_failure`]), without entering. After a
    /// real VMEXIT_INVALID the state save area may no longer hold what was
    /// entered (QEMU TCG overwrites it), so this is the reliable place to
    /// name the failure.
    #[cold]
    #[inline(never)]
    fn check_before_entry(&mut self) -> axvcpu::Result<Option<AxVCpuExitReason>> {
        match check_vmcb(self.vmcb()) {
            Ok(()) => {
                self.entry_failure = None;
                self.vmcb_dirty = false;
                Ok(None)
            }
            Err(Error::InvalidVmcb(why)) => {
                log::error!("SVM vCPU {}: VMCB refused before VMRUN: {why}", self.id);
                self.entry_failure = Some(why);
                Ok(Some(AxVCpuExitReason::FailEntry {
                    hardware_entry_failure_reason: super::exit::VMEXIT_INVALID,
                }))
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl<H: Hal> AxArchVCpu for SvmVcpu<H> {
    type CreateConfig = X86VcpuCreateConfig;
    type SetupConfig = X86VcpuSetupConfig;

    fn new(vcpu_id: usize, config: Self::CreateConfig) -> axvcpu::Result<Self> {
        let info = detect(&HwCpuid);
        if info.kind != Some(VirtKind::Svm) {
            return Err(Error::VirtualizationUnavailable("this processor has no SVM").into());
        }
        Ok(Self::with_features(
            vcpu_id,
            config,
            info.svm.unwrap_or_default(),
        )?)
    }

    fn set_entry(&mut self, entry: GuestPhysAddr) -> axvcpu::Result {
        self.entry = Some(entry);
        if self.ready {
            // After setup (a restart at a new address): only RIP moves.
            self.vmcb_raw_mut().save.rip = entry.as_usize() as u64;
        }
        Ok(())
    }

    fn set_ept_root(&mut self, ept_root: HostPhysAddr) -> axvcpu::Result {
        if ept_root.as_usize() % PAGE_SIZE != 0 {
            return Err(axvcpu::Error::InvalidArgument(
                "nested page table root not page aligned",
            ));
        }
        self.n_cr3 = Some(ept_root);
        if self.ready {
            let flush = self.asid_flush();
            let c = &mut self.vmcb_mut().control;
            c.n_cr3 = ept_root.as_usize() as u64;
            c.tlb_control = flush;
        }
        Ok(())
    }

    fn setup(&mut self, config: Self::SetupConfig) -> axvcpu::Result {
        let entry = self
            .entry
            .ok_or(axvcpu::Error::InvalidArgument("setup before set_entry"))?;
        let n_cr3 = self
            .n_cr3
            .ok_or(axvcpu::Error::InvalidArgument("setup before set_ept_root"))?;
        let state = config.boot.state(entry)?;
        let cfg = SvmControlsConfig {
            iopm_pa: self.iopm.storage().paddr().as_usize() as u64,
            msrpm_pa: self.msrpm.storage().paddr().as_usize() as u64,
            asid: self.asid,
            n_cr3: n_cr3.as_usize() as u64,
        };
        let vmcb = self.vmcb_mut();
        *vmcb = Vmcb::zeroed();
        write_controls(vmcb, &cfg)?;
        write_guest_state(vmcb, &state)?;
        check_vmcb(vmcb)?;
        self.msrs.set_guest(state.syscall_msrs)?;
        self.regs = state.regs;
        self.ready = true;
        self.vmcb_dirty = false;
        self.entry_failure = None;
        self.decode_cache.clear();
        Ok(())
    }

    #[inline]
    fn run(&mut self) -> axvcpu::Result<AxVCpuExitReason> {
        if !self.ready {
            return Err(axvcpu::Error::BadState);
        }
        self.prepare_entry();
        if self.vmcb_dirty
            && let Some(refused) = self.check_before_entry()?
        {
            return Ok(refused);
        }
        #[cfg(target_os = "none")]
        {
            // SAFETY: CPL 0 on bare metal (the `axvcpu` contract); the only
            // MSR switched is TSC_AUX, present when `features.rdtscp` put
            // it in the switch, with a value checked by `set_guest`.
            self.msrs.load(&mut unsafe { crate::msr::HwMsr::new() });
            let (vmcb_pa, host_pa) = (self.vmcb.paddr(), self.host_save.paddr());
            // SAFETY: the VMCB passed `check_vmcb` when it last changed in a
            // way the guest cannot cause (`vmcb_dirty`), and is otherwise
            // only changed by the processor and this crate's handlers; the
            // host save page and the register block belong to this vCPU;
            // SVM is enabled on this CPU (the caller's `SvmPerCpu`, per the
            // `axvcpu` contract).
            unsafe { super::hw::vmrun(vmcb_pa, &mut self.regs, host_pa, self.guest_xcr0)? };
            match self.handle_exit(&HwCpuid) {
                Ok(exit) => Ok(exit),
                Err(e) => Err(e.into()),
            }
        }
        #[cfg(not(target_os = "none"))]
        {
            let _ = &self.host_save;
            Err(axvcpu::Error::Unsupported(
                "SVM VMRUN is only built for bare metal (target_os = \"none\")",
            ))
        }
    }

    fn bind(&mut self) -> axvcpu::Result {
        // A VMCB needs no loading; a vCPU moving to another CPU must flush
        // its ASID's stale translations there.
        let flush = self.asid_flush();
        self.vmcb_raw_mut().control.tlb_control = flush;
        Ok(())
    }

    /// Gives the CPU back its own TSC_AUX (the guest's is kept in the
    /// vCPU until the next entry).
    fn unbind(&mut self) -> axvcpu::Result {
        #[cfg(target_os = "none")]
        // SAFETY: as in `run`: CPL 0 and only TSC_AUX, which exists.
        self.msrs.put(&mut unsafe { crate::msr::HwMsr::new() });
        Ok(())
    }

    fn set_gpr(&mut self, reg: usize, val: u64) {
        if self.set_reg(reg, val).is_err() {
            log::warn!("SVM vCPU {}: set_gpr of invalid register {reg}", self.id);
        }
    }

    fn gpr(&self, reg: usize) -> u64 {
        self.get_reg(reg).unwrap_or_else(|_| {
            log::warn!("SVM vCPU {}: gpr of invalid register {reg}", self.id);
            0
        })
    }

    fn inject_interrupt(&mut self, vector: u8) -> axvcpu::Result {
        Ok(self.pending.push(vector)?)
    }

    #[inline]
    fn set_return_value(&mut self, val: u64) {
        self.vmcb_raw_mut().save.rax = val;
    }

    #[inline]
    fn set_io_result(&mut self, width: AccessWidth, value: u64) -> axvcpu::Result {
        if width == AccessWidth::Qword {
            return Err(axvcpu::Error::InvalidArgument(
                "port I/O is 1, 2 or 4 bytes wide",
            ));
        }
        let v = self.vmcb_raw_mut();
        v.save.rax = axvcpu::regs::load_result(v.save.rax, value, width, width, false)?;
        Ok(())
    }

    /// As the default, with an invalid register index refused
    /// ([`axvcpu::Error::InvalidArgument`]) instead of logged.
    #[inline]
    fn set_mmio_read_result(
        &mut self,
        reg: usize,
        width: AccessWidth,
        reg_width: AccessWidth,
        signed_ext: bool,
        value: u64,
    ) -> axvcpu::Result {
        let slot = self.gpr_slot(reg).ok_or(axvcpu::Error::InvalidArgument(
            "invalid general-purpose register index",
        ))?;
        *slot = axvcpu::regs::load_result(*slot, value, width, reg_width, signed_ext)?;
        Ok(())
    }

    #[inline]
    fn set_msr_result(&mut self, value: u64) {
        self.vmcb_raw_mut().save.rax = value & 0xffff_ffff;
        self.regs.rdx = value >> 32;
    }
}

impl<H: Hal> X86VcpuExt for SvmVcpu<H> {
    #[inline]
    fn ready_for_interrupt(&self) -> bool {
        self.interrupt_ready()
    }

    fn interrupts_enabled(&self) -> bool {
        self.vmcb().save.rflags & (1 << 9) != 0
    }

    fn request_interrupt_window(&mut self) -> Result<()> {
        self.arm_vintr();
        Ok(())
    }

    fn guest_code_location(&self) -> GuestCodeLocation {
        let s = &self.vmcb().save;
        let bits = self.code_bitness();
        GuestCodeLocation {
            linear_rip: if bits == 64 {
                s.rip
            } else {
                s.cs.base.wrapping_add(s.rip) & 0xffff_ffff
            },
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer & !efer::SVME,
            bitness: bits,
        }
    }

    /// Decodes through the vCPU's [`DecodeCache`]: the same instruction
    /// bytes (with the same code-segment bitness) are decoded once.
    fn decode_mmio(&mut self, addr: GuestPhysAddr, insn: &[u8]) -> Result<AxVCpuExitReason> {
        let bits = self.code_bitness();
        let i = self.decode_cache.decode(insn, bits)?;
        let exit = mmio_exit(addr, &i, |r| self.get_reg(r).unwrap_or(0));
        let v = self.vmcb_raw_mut();
        v.save.rip = v.save.rip.wrapping_add(i.len as u64);
        v.control.interrupt_shadow &= !1;
        Ok(exit)
    }

    fn emulate_mmio_rmw(
        &mut self,
        insn: &[u8],
        access: &mut dyn FnMut(AccessWidth, Option<u64>) -> u64,
    ) -> Result<()> {
        let i = decode_mmio_rmw(insn, self.code_bitness())?;
        let src = i.source(|r| self.get_reg(r).unwrap_or(0));
        let out = i.apply(access(i.width, None), src);
        if let Some(value) = out.write {
            access(i.width, Some(value));
        }
        let v = self.vmcb_raw_mut();
        v.save.rflags = (v.save.rflags & !ARITH_FLAGS) | out.flags;
        v.save.rip = v.save.rip.wrapping_add(i.len as u64);
        v.control.interrupt_shadow &= !1;
        Ok(())
    }
}

/// The per-CPU SVM state: EFER.SVME and the host save area (VM_HSAVE_PA).
pub struct SvmPerCpu<H: Hal> {
    cpu_id: usize,
    hsave: Option<PhysFrames<H>>,
}

impl<H: Hal> core::fmt::Debug for SvmPerCpu<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SvmPerCpu")
            .field("cpu_id", &self.cpu_id)
            .field("enabled", &self.hsave.is_some())
            .finish()
    }
}

impl<H: Hal> SvmPerCpu<H> {
    /// Turns SVM on with the given MSR and CPUID access: checks CPUID (SVM
    /// and nested paging), checks `VM_CR.SVMDIS`, allocates the host save
    /// area, sets `EFER.SVME` and `VM_HSAVE_PA`.
    pub fn enable_with(&mut self, msrs: &mut impl MsrAccess, cpuid: &impl CpuidSource) -> Result {
        if self.hsave.is_some() {
            return Err(Error::InvalidArgument("SVM already enabled on this CPU"));
        }
        let info = detect(cpuid);
        if info.kind != Some(VirtKind::Svm) {
            return Err(Error::VirtualizationUnavailable(
                "no SVM (CPUID 8000_0001h ECX bit 2)",
            ));
        }
        if !info.svm.unwrap_or_default().nested_paging {
            return Err(Error::Unsupported("SVM without nested paging"));
        }
        if msrs.read(msr::AMD_VM_CR) & msr::vm_cr::SVMDIS != 0 {
            return Err(Error::VirtualizationUnavailable(
                "SVM disabled by firmware (VM_CR.SVMDIS)",
            ));
        }
        let hsave = PhysFrames::alloc_zeroed(1, "SVM host save area")?;
        let e = msrs.read(msr::IA32_EFER);
        msrs.write(msr::IA32_EFER, e | efer::SVME);
        msrs.write(msr::AMD_VM_HSAVE_PA, hsave.paddr().as_usize() as u64);
        self.hsave = Some(hsave);
        Ok(())
    }

    /// Turns SVM off: clears `VM_HSAVE_PA` and `EFER.SVME`, frees the area.
    pub fn disable_with(&mut self, msrs: &mut impl MsrAccess) -> Result {
        if self.hsave.is_none() {
            return Err(Error::InvalidArgument("SVM not enabled on this CPU"));
        }
        msrs.write(msr::AMD_VM_HSAVE_PA, 0);
        let e = msrs.read(msr::IA32_EFER);
        msrs.write(msr::IA32_EFER, e & !efer::SVME);
        self.hsave = None;
        Ok(())
    }
}

impl<H: Hal> AxArchPerCpu for SvmPerCpu<H> {
    fn new(cpu_id: usize) -> axvcpu::Result<Self> {
        Ok(Self {
            cpu_id,
            hsave: None,
        })
    }

    fn is_enabled(&self) -> bool {
        self.hsave.is_some()
    }

    fn hardware_enable(&mut self) -> axvcpu::Result {
        #[cfg(target_os = "none")]
        {
            // SAFETY: bare metal, where `hardware_enable` runs at CPL 0 on the
            // CPU it enables (the `AxArchPerCpu` contract); EFER, VM_CR and
            // VM_HSAVE_PA exist on every processor `enable_with` accepts.
            let mut msrs = unsafe { crate::msr::HwMsr::new() };
            Ok(self.enable_with(&mut msrs, &HwCpuid)?)
        }
        #[cfg(not(target_os = "none"))]
        Err(axvcpu::Error::Unsupported(
            "enabling SVM needs bare metal (target_os = \"none\")",
        ))
    }

    fn hardware_disable(&mut self) -> axvcpu::Result {
        #[cfg(target_os = "none")]
        {
            // SAFETY: as in `hardware_enable`; SVM is on, so the MSRs exist.
            let mut msrs = unsafe { crate::msr::HwMsr::new() };
            Ok(self.disable_with(&mut msrs)?)
        }
        #[cfg(not(target_os = "none"))]
        Err(axvcpu::Error::Unsupported(
            "disabling SVM needs bare metal (target_os = \"none\")",
        ))
    }
}

#[cfg(test)]
mod tests;
