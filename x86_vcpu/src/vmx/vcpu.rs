//! The VMX vCPU, implementing the `axvcpu` traits.
//!
//! Setup, interrupt injection and exit handling work on any [`VmcsAccess`]
//! and are tested with [`super::FakeVmcs`]; the trait methods use the real
//! VMCS (bare metal only): `run` writes the host state after each `bind`,
//! flushes stale EPT/VPID translations when needed, enters the guest with
//! VMLAUNCH (first entry after a VMCLEAR) or VMRESUME, and decodes the exit.

use axaddrspace::{AccessWidth, GuestPhysAddr, HostPhysAddr};
use axvcpu::{AxArchVCpu, AxVCpuExitReason};

use super::bitmap::{MsrAccessKind, VmxIoBitmap, VmxMsrBitmap};
use super::controls::{
    EntryControls, ProcControls, SecondaryControls, VmxCaps, adjust_cr, control_allowed, cr0, cr4,
    guest_cr0_fixed0,
};
use super::event::{InterruptionInfo, InterruptionType};
use super::exit::{
    CrAccessType, CrQualification, EntryFailure, EptViolationQualification, ExitReasonField,
    IoQualification, VmxExitReason,
};
use super::invalidate::{GuestTlbFlush, guest_tlb_flush};
use super::setup::{
    HostState, VmxControlsConfig, write_controls, write_guest_state, write_host_state,
};
use super::vmcs::{VmcsAccess, VmcsField as F};
use crate::cpuid::CpuidPolicy;
use crate::guest_msrs::{MsrSwitch, SyscallMsrs};
use crate::hal::{Hal, PAGE_SIZE, PhysFrames};
use crate::mmio_rmw::{ARITH_FLAGS, decode_mmio_rmw};
use crate::msr::{self, MsrAccess, efer};
use crate::regs::GeneralRegisters;
use crate::vcpu::{
    GuestCodeLocation, PendingInterrupts, X86VcpuCreateConfig, X86VcpuExt, X86VcpuSetupConfig,
    bitness, decode_for, hypercall_exit, mmio_exit, validate_xcr0,
};
use crate::vendor::CpuidSource;
use crate::{Error, Result};

/// MSRs passed through to the guest. FS/GS base, SYSENTER and PAT are
/// switched by the VMCS; STAR/LSTAR/CSTAR/FMASK/KERNEL_GS_BASE are not, so
/// the vCPU switches them itself ([`VMX_SWITCHED_MSRS`], `crate::guest_msrs`).
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

/// The guest MSRs a VMX vCPU switches in software (plus TSC_AUX where the
/// processor lets the guest use RDTSCP).
const VMX_SWITCHED_MSRS: [u32; 5] = [
    msr::IA32_STAR,
    msr::IA32_LSTAR,
    msr::IA32_CSTAR,
    msr::IA32_FMASK,
    msr::IA32_KERNEL_GS_BASE,
];

/// Guest interruptibility state bits 0 (blocking by STI) and 1 (by MOV SS).
const BLOCKING_STI_MOVSS: u64 = 0b11;

/// A vCPU on Intel VMX.
pub struct VmxVcpu<H: Hal> {
    id: usize,
    vmcs: PhysFrames<H>,
    io_bitmap: VmxIoBitmap<PhysFrames<H>>,
    msr_bitmap: VmxMsrBitmap<PhysFrames<H>>,
    caps: VmxCaps,
    regs: GeneralRegisters,
    rsp: u64,
    entry: Option<GuestPhysAddr>,
    ept_root: Option<HostPhysAddr>,
    vpid: u16,
    cpuid: CpuidPolicy,
    pending: PendingInterrupts,
    guest_xcr0: u64,
    ready: bool,
    /// RIP to write at the next entry (set outside an exit handler).
    pending_rip: Option<u64>,
    /// Arithmetic flags ([`ARITH_FLAGS`]) to put in RFLAGS at the next
    /// entry, after an emulated read-modify-write MMIO instruction.
    pending_flags: Option<u64>,
    /// EPTP to write at the next entry.
    pending_eptp: Option<u64>,
    /// Guest state saved at the last EPT violation, for MMIO decoding.
    fault_location: Option<(GuestCodeLocation, u64)>,
    /// Where the guest was after the last exit was handled.
    exit_location: Option<GuestCodeLocation>,
    /// The VMCS was launched since its last VMCLEAR: enter with VMRESUME.
    launched: bool,
    /// The host state was written into the VMCS since the last `bind`.
    host_state_written: bool,
    /// The host state written (for the descriptor-table reload after exits).
    host: Option<HostState>,
    /// Invalidate this vCPU's EPT and VPID translations before the next entry.
    tlb_flush_pending: bool,
    /// The last VM-entry failure reported as an exit (bit 31).
    entry_failure: Option<EntryFailure>,
    /// STAR, LSTAR, CSTAR, FMASK, KERNEL_GS_BASE (and TSC_AUX), which the
    /// VMCS does not switch.
    msrs: MsrSwitch,
}

impl<H: Hal> core::fmt::Debug for VmxVcpu<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmxVcpu")
            .field("id", &self.id)
            .field("vmcs", &self.vmcs.paddr())
            .field("vpid", &self.vpid)
            .field("ready", &self.ready)
            .finish()
    }
}

impl<H: Hal> VmxVcpu<H> {
    /// Creates vCPU `id` for a processor with capabilities `caps` (read from
    /// its MSRs by the trait's `new`).
    pub fn with_caps(id: usize, config: X86VcpuCreateConfig, caps: VmxCaps) -> Result<Self> {
        caps.basic.validate()?;
        if config.tag == 0 {
            return Err(Error::InvalidArgument("VPID 0 belongs to the host"));
        }
        let mut vmcs = PhysFrames::alloc_zeroed(1, "VMCS")?;
        vmcs.as_mut()[..4].copy_from_slice(&caps.basic.revision_id.to_le_bytes());
        let mut io_bitmap = VmxIoBitmap::new(
            PhysFrames::alloc_zeroed(1, "I/O bitmap A")?,
            PhysFrames::alloc_zeroed(1, "I/O bitmap B")?,
        )?;
        io_bitmap.set_all(true);
        let mut msr_bitmap = VmxMsrBitmap::new(PhysFrames::alloc_zeroed(1, "MSR bitmap")?)?;
        msr_bitmap.set_all(true);
        for m in PASSTHROUGH_MSRS {
            msr_bitmap.set_read_write(m, false)?;
        }
        msr_bitmap.set_intercept(msr::IA32_TSC, MsrAccessKind::Read, false)?;
        // TSC_AUX is switched (and passed through) when the guest gets
        // RDTSCP ("enable RDTSCP" allowed, which `write_controls` then sets):
        // the processor has the MSR, and RDTSCP reads it.
        let rdtscp = control_allowed(
            caps.proc2,
            SecondaryControls::ENABLE_RDTSCP.bits().trailing_zeros(),
        );
        let msrs = if rdtscp {
            msr_bitmap.set_read_write(msr::IA32_TSC_AUX, false)?;
            let mut list = [0; 6];
            list[..5].copy_from_slice(&VMX_SWITCHED_MSRS);
            list[5] = msr::IA32_TSC_AUX;
            MsrSwitch::new(&list)?
        } else {
            MsrSwitch::new(&VMX_SWITCHED_MSRS)?
        };
        Ok(Self {
            id,
            vmcs,
            io_bitmap,
            msr_bitmap,
            caps,
            regs: GeneralRegisters::default(),
            rsp: 0,
            entry: None,
            ept_root: None,
            vpid: config.tag,
            cpuid: config.cpuid,
            pending: PendingInterrupts::default(),
            guest_xcr0: 1,
            ready: false,
            pending_rip: None,
            pending_flags: None,
            pending_eptp: None,
            fault_location: None,
            exit_location: None,
            launched: false,
            host_state_written: false,
            host: None,
            tlb_flush_pending: true,
            entry_failure: None,
            msrs,
        })
    }

    /// The software switch of STAR, LSTAR, CSTAR, FMASK, KERNEL_GS_BASE and
    /// TSC_AUX ([`crate::guest_msrs`]).
    pub fn msr_switch(&self) -> &MsrSwitch {
        &self.msrs
    }

    /// The guest's software-switched MSRs: read from `hw`, the processor's
    /// MSRs, while the vCPU is loaded there.
    pub fn syscall_msrs(&self, hw: &impl MsrAccess) -> SyscallMsrs {
        self.msrs.guest(hw)
    }

    /// Sets the guest's software-switched MSRs; they reach the processor
    /// before the next entry (refused if WRMSR would refuse one).
    pub fn set_syscall_msrs(&mut self, values: SyscallMsrs) -> Result {
        self.msrs.set_guest(values)
    }

    /// The last VM-entry failure the processor reported as a VM exit with
    /// bit 31 of the exit reason set, with its exit qualification.
    pub fn entry_failure(&self) -> Option<EntryFailure> {
        self.entry_failure
    }

    /// Asks for the vCPU's cached guest-physical (EPT) and linear (VPID)
    /// translations to be invalidated before its next entry: needed after
    /// a mapping of its nested page table was removed or restricted.
    /// Binding and a new EPT root request it by themselves.
    pub fn flush_guest_tlb(&mut self) {
        self.tlb_flush_pending = true;
    }

    /// Whether a guest TLB flush waits for the next entry.
    pub fn guest_tlb_flush_pending(&self) -> bool {
        self.tlb_flush_pending
    }

    /// Whether the VMCS was launched since its last VMCLEAR: the next entry
    /// is then VMRESUME, else VMLAUNCH (SDM 25.11.3). A VM exit that is not
    /// a VM-entry failure sets it ([`VmxVcpu::handle_exit`]).
    pub fn launched(&self) -> bool {
        self.launched
    }

    /// The host state last written into the VMCS, if any since the last
    /// bind.
    pub fn host_state(&self) -> Option<&HostState> {
        self.host.as_ref().filter(|_| self.host_state_written)
    }

    /// Writes the host-state area from `capture()` unless it was written
    /// since the vCPU was last bound to a CPU (the host state is that
    /// CPU's: its GDT, TSS, per-CPU GS base). HOST_RSP is written by the
    /// entry routine itself.
    pub fn write_host_state_once(
        &mut self,
        vmcs: &mut impl VmcsAccess,
        capture: impl FnOnce() -> HostState,
    ) -> Result {
        if self.host_state_written {
            return Ok(());
        }
        let host = capture();
        write_host_state(vmcs, &host)?;
        self.host = Some(host);
        self.host_state_written = true;
        Ok(())
    }

    /// Bookkeeping after VMCLEAR: the launch state is "clear" and the next
    /// CPU to load the VMCS writes its own host state.
    #[cfg_attr(not(target_os = "none"), allow(dead_code))]
    fn after_vmclear(&mut self) {
        self.launched = false;
        self.host_state_written = false;
    }

    /// Bookkeeping after VMPTRLD on a CPU: that CPU's host state is written
    /// at the next entry, and translations it cached with this vCPU's tags
    /// (possibly another VM's, with the same EPT root frame or VPID) are
    /// flushed.
    #[cfg_attr(not(target_os = "none"), allow(dead_code))]
    fn after_vmptrld(&mut self) {
        self.host_state_written = false;
        self.tlb_flush_pending = true;
    }

    /// The INVEPT/INVVPID to run before the next entry, if one is pending,
    /// for the EPT pointer in `vmcs`.
    pub fn pending_tlb_flush(&self, vmcs: &impl VmcsAccess) -> Result<Option<GuestTlbFlush>> {
        if !self.tlb_flush_pending {
            return Ok(None);
        }
        let eptp = vmcs.read(F::EPT_POINTER)?;
        guest_tlb_flush(&self.caps, eptp, Some(self.vpid)).map(Some)
    }

    /// The vCPU id.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Physical address of the VMCS region.
    pub fn vmcs_paddr(&self) -> HostPhysAddr {
        self.vmcs.paddr()
    }

    /// The I/O bitmaps (every port intercepted by default).
    pub fn io_bitmap_mut(&mut self) -> &mut VmxIoBitmap<PhysFrames<H>> {
        &mut self.io_bitmap
    }

    /// The MSR bitmap.
    pub fn msr_bitmap_mut(&mut self) -> &mut VmxMsrBitmap<PhysFrames<H>> {
        &mut self.msr_bitmap
    }

    /// The guest's XCR0 as last set by XSETBV.
    pub fn guest_xcr0(&self) -> u64 {
        self.guest_xcr0
    }

    /// Number of interrupts waiting for injection.
    pub fn pending_interrupts(&self) -> usize {
        self.pending.len()
    }

    fn get_reg(&self, reg: usize) -> Result<u64> {
        if reg == 4 {
            Ok(self.rsp)
        } else {
            self.regs.get(reg)
        }
    }

    fn set_reg(&mut self, reg: usize, val: u64) -> Result {
        if reg == 4 {
            self.rsp = val;
            Ok(())
        } else {
            self.regs.set(reg, val)
        }
    }

    fn gpr32(&self, reg: usize) -> u64 {
        self.get_reg(reg).unwrap_or(0) & 0xffff_ffff
    }

    fn eptp(&self, root: HostPhysAddr) -> Result<u64> {
        if !self.caps.ept_4level() || !self.caps.ept_wb() {
            return Err(Error::Unsupported(
                "EPT without 4-level walks or write-back structures",
            ));
        }
        super::ept::eptp(root, false)
    }

    /// Writes controls and guest state into `vmcs` (which must be current).
    pub fn setup_with(
        &mut self,
        vmcs: &mut impl VmcsAccess,
        config: &X86VcpuSetupConfig,
    ) -> Result {
        let entry = self
            .entry
            .ok_or(Error::InvalidArgument("setup before set_entry"))?;
        let root = self
            .ept_root
            .ok_or(Error::InvalidArgument("setup before set_ept_root"))?;
        let state = config.boot.state(entry)?;
        let (a, b) = self.io_bitmap.storage();
        let cfg = VmxControlsConfig {
            io_bitmap_a: a.paddr().as_usize() as u64,
            io_bitmap_b: b.paddr().as_usize() as u64,
            msr_bitmap: self.msr_bitmap.storage().paddr().as_usize() as u64,
            eptp: self.eptp(root)?,
            vpid: Some(self.vpid),
            guest_long_mode: state.is_long_mode(),
        };
        self.msrs.set_guest(state.syscall_msrs)?;
        write_controls(vmcs, &self.caps, &cfg)?;
        write_guest_state(vmcs, &self.caps, true, &state)?;
        self.regs = state.regs;
        self.rsp = state.rsp;
        self.pending_rip = None;
        self.pending_flags = None;
        self.pending_eptp = None;
        self.ready = true;
        Ok(())
    }

    fn interruptible(vmcs: &impl VmcsAccess) -> Result<bool> {
        Ok(vmcs.read(F::GUEST_RFLAGS)? & (1 << 9) != 0
            && vmcs.read(F::GUEST_INTERRUPTIBILITY_STATE)? & BLOCKING_STI_MOVSS == 0)
    }

    /// Whether an interrupt injected now is delivered at the next entry
    /// (interruptible, and no event in the entry's interruption field).
    pub fn interrupt_ready(vmcs: &impl VmcsAccess) -> Result<bool> {
        Ok(
            vmcs.read(F::VMENTRY_INTERRUPTION_INFO)? & super::event::INTR_INFO_VALID as u64 == 0
                && Self::interruptible(vmcs)?,
        )
    }

    fn set_proc_control(vmcs: &mut impl VmcsAccess, bits: ProcControls, on: bool) -> Result {
        let v = vmcs.read(F::CPU_BASED_VM_EXEC_CONTROL)?;
        let v = if on {
            v | u64::from(bits.bits())
        } else {
            v & !u64::from(bits.bits())
        };
        vmcs.write(F::CPU_BASED_VM_EXEC_CONTROL, v)
    }

    /// Work before each VM entry: flush RSP (and a RIP or EPTP changed
    /// between exits) into the VMCS, inject the oldest pending interrupt if
    /// the guest can take it, or ask for an interrupt-window exit.
    pub fn prepare_entry(&mut self, vmcs: &mut impl VmcsAccess) -> Result {
        vmcs.write(F::GUEST_RSP, self.rsp)?;
        if let Some(flags) = self.pending_flags.take() {
            let rflags = vmcs.read(F::GUEST_RFLAGS)?;
            vmcs.write(F::GUEST_RFLAGS, (rflags & !ARITH_FLAGS) | flags)?;
        }
        if let Some(rip) = self.pending_rip.take() {
            vmcs.write(F::GUEST_RIP, rip)?;
            let s = vmcs.read(F::GUEST_INTERRUPTIBILITY_STATE)?;
            vmcs.write(F::GUEST_INTERRUPTIBILITY_STATE, s & !BLOCKING_STI_MOVSS)?;
        }
        if let Some(eptp) = self.pending_eptp.take() {
            vmcs.write(F::EPT_POINTER, eptp)?;
            self.tlb_flush_pending = true;
        }
        Self::sync_ia32e_mode(vmcs)?;
        if vmcs.read(F::VMENTRY_INTERRUPTION_INFO)? & super::event::INTR_INFO_VALID as u64 != 0 {
            return Ok(()); // An event is being (re)delivered first.
        }
        let Some(vector) = self.pending.peek() else {
            return Ok(());
        };
        if Self::interruptible(vmcs)? {
            self.pending.pop();
            vmcs.write(
                F::VMENTRY_INTERRUPTION_INFO,
                InterruptionInfo::external(vector)?.to_raw().into(),
            )?;
            Self::set_proc_control(vmcs, ProcControls::INTERRUPT_WINDOW_EXITING, false)
        } else {
            Self::set_proc_control(vmcs, ProcControls::INTERRUPT_WINDOW_EXITING, true)
        }
    }

    /// Keeps the "IA-32e mode guest" entry control equal to the guest's
    /// EFER.LMA (SDM 26.3.1.1 checks it when "load IA32_EFER" is on). An
    /// unrestricted guest turns long mode on and off by itself: CR0.PG is
    /// not intercepted, the processor sets EFER.LMA and the exit saves it.
    fn sync_ia32e_mode(vmcs: &mut impl VmcsAccess) -> Result {
        let lma = vmcs.read(F::GUEST_IA32_EFER)? & efer::LMA != 0;
        let entry = vmcs.read(F::VMENTRY_CONTROLS)?;
        let ia32e = u64::from(EntryControls::IA32E_MODE_GUEST.bits());
        let want = if lma { entry | ia32e } else { entry & !ia32e };
        if want != entry {
            vmcs.write(F::VMENTRY_CONTROLS, want)?;
        }
        Ok(())
    }

    fn advance_rip(vmcs: &mut impl VmcsAccess) -> Result {
        let len = vmcs.read(F::VMEXIT_INSTRUCTION_LEN)?;
        let rip = vmcs.read(F::GUEST_RIP)?;
        vmcs.write(F::GUEST_RIP, rip.wrapping_add(len))?;
        let s = vmcs.read(F::GUEST_INTERRUPTIBILITY_STATE)?;
        vmcs.write(F::GUEST_INTERRUPTIBILITY_STATE, s & !BLOCKING_STI_MOVSS)
    }

    fn inject_exception(vmcs: &mut impl VmcsAccess, vector: u8, error_code: Option<u32>) -> Result {
        let ev = InterruptionInfo::exception(vector, error_code)?;
        vmcs.write(F::VMENTRY_INTERRUPTION_INFO, ev.to_raw().into())?;
        if let Some(ec) = error_code {
            vmcs.write(F::VMENTRY_EXCEPTION_ERROR_CODE, ec.into())?;
        }
        Ok(())
    }

    fn code_location(vmcs: &impl VmcsAccess) -> Result<(GuestCodeLocation, u64)> {
        let efer_v = vmcs.read(F::GUEST_IA32_EFER)?;
        let cr0_v = vmcs.read(F::GUEST_CR0)?;
        let cs_ar = vmcs.read(F::GUEST_CS_ACCESS_RIGHTS)? as u32;
        let rip = vmcs.read(F::GUEST_RIP)?;
        let bits = bitness(efer_v, cs_ar, cr0_v);
        let linear_rip = if bits == 64 {
            rip
        } else {
            vmcs.read(F::GUEST_CS_BASE)?.wrapping_add(rip) & 0xffff_ffff
        };
        let loc = GuestCodeLocation {
            linear_rip,
            cr0: cr0_v,
            cr3: vmcs.read(F::GUEST_CR3)?,
            cr4: vmcs.read(F::GUEST_CR4)?,
            efer: efer_v,
            bitness: bits,
        };
        Ok((loc, rip))
    }

    /// Decides what a VM exit means, updating the guest state in `vmcs`
    /// (which must be current) for the exits handled here.
    pub fn handle_exit(
        &mut self,
        vmcs: &mut impl VmcsAccess,
        cpuid: &impl CpuidSource,
    ) -> Result<AxVCpuExitReason> {
        use AxVCpuExitReason as R;
        let raw = vmcs.read(F::VM_EXIT_REASON)? as u32;
        let field = ExitReasonField::from_raw(raw);
        if field.entry_failure {
            let failure = EntryFailure {
                raw_reason: raw,
                qualification: vmcs.read(F::EXIT_QUALIFICATION)?,
            };
            log::error!("VMX vCPU {}: {failure}", self.id);
            self.entry_failure = Some(failure);
            return Ok(R::FailEntry {
                hardware_entry_failure_reason: raw.into(),
            });
        }
        // Any other exit means the entry succeeded: the VMCS is launched.
        self.launched = true;
        self.rsp = vmcs.read(F::GUEST_RSP)?;
        self.fault_location = None;
        // An event whose delivery the exit interrupted is delivered again.
        let idt = vmcs.read(F::IDT_VECTORING_INFO)? as u32;
        match InterruptionInfo::from_raw(idt, 0) {
            Some(info) => {
                vmcs.write(F::VMENTRY_INTERRUPTION_INFO, u64::from(idt & !(1 << 12)))?;
                if info.error_code.is_some() {
                    let ec = vmcs.read(F::IDT_VECTORING_ERROR_CODE)?;
                    vmcs.write(F::VMENTRY_EXCEPTION_ERROR_CODE, ec)?;
                }
                if matches!(
                    info.kind,
                    InterruptionType::SoftwareInterrupt
                        | InterruptionType::PrivilegedSoftwareException
                        | InterruptionType::SoftwareException
                ) {
                    let len = vmcs.read(F::VMEXIT_INSTRUCTION_LEN)?;
                    vmcs.write(F::VMENTRY_INSTRUCTION_LEN, len)?;
                }
            }
            None => vmcs.write(F::VMENTRY_INTERRUPTION_INFO, 0)?,
        }

        Ok(match field.reason()? {
            VmxExitReason::ExceptionNmi => {
                let info = vmcs.read(F::VMEXIT_INTERRUPTION_INFO)? as u32;
                match InterruptionInfo::from_raw(info, 0) {
                    // An NMI for the host: nothing for the guest (the entry
                    // path re-raises it for the host when it is written).
                    Some(i) if i.kind == InterruptionType::Nmi => R::Nothing,
                    _ => return Err(Error::UnknownExit(raw.into())),
                }
            }
            VmxExitReason::ExternalInterrupt => {
                let info = vmcs.read(F::VMEXIT_INTERRUPTION_INFO)? as u32;
                let vector = InterruptionInfo::from_raw(info, 0)
                    .map(|i| i.vector)
                    .ok_or(Error::UnknownExit(raw.into()))?;
                R::ExternalInterrupt { vector }
            }
            VmxExitReason::TripleFault => R::TripleFault,
            VmxExitReason::InterruptWindow => {
                Self::set_proc_control(vmcs, ProcControls::INTERRUPT_WINDOW_EXITING, false)?;
                R::InterruptWindow
            }
            VmxExitReason::Cpuid => {
                let (leaf, sub) = (self.gpr32(0) as u32, self.gpr32(1) as u32);
                let guest_cr4 = vmcs.read(F::CR4_READ_SHADOW)?;
                let r = self.cpuid.answer(leaf, sub, cpuid, guest_cr4);
                self.regs.rax = r.eax.into();
                self.regs.rbx = r.ebx.into();
                self.regs.rcx = r.ecx.into();
                self.regs.rdx = r.edx.into();
                Self::advance_rip(vmcs)?;
                R::Nothing
            }
            VmxExitReason::Hlt => {
                Self::advance_rip(vmcs)?;
                R::Halt
            }
            VmxExitReason::Vmcall => {
                Self::advance_rip(vmcs)?;
                hypercall_exit(|r| self.get_reg(r).unwrap_or(0))
            }
            VmxExitReason::IoInstruction => {
                let io = IoQualification::from_raw(vmcs.read(F::EXIT_QUALIFICATION)?)?;
                if io.is_string {
                    return Err(Error::Unsupported("string port I/O (INS/OUTS)"));
                }
                Self::advance_rip(vmcs)?;
                if io.is_in {
                    R::IoRead {
                        port: io.port,
                        width: io.width,
                    }
                } else {
                    R::IoWrite {
                        port: io.port,
                        width: io.width,
                        data: self.regs.rax & io.width.mask(),
                    }
                }
            }
            VmxExitReason::Rdmsr => self.handle_msr(vmcs, false)?,
            VmxExitReason::Wrmsr => self.handle_msr(vmcs, true)?,
            VmxExitReason::CrAccess => {
                self.handle_cr(vmcs)?;
                R::Nothing
            }
            VmxExitReason::EptViolation => {
                let q = EptViolationQualification::from_raw(vmcs.read(F::EXIT_QUALIFICATION)?);
                let addr = vmcs.read(F::GUEST_PHYSICAL_ADDR)?;
                self.fault_location = Some(Self::code_location(vmcs)?);
                R::NestedPageFault {
                    addr: GuestPhysAddr::from(addr as usize),
                    access_flags: q.access,
                }
            }
            VmxExitReason::EptMisconfig => {
                return Err(Error::EptMisconfiguration(
                    vmcs.read(F::GUEST_PHYSICAL_ADDR)?,
                ));
            }
            VmxExitReason::Xsetbv => {
                let value = (self.gpr32(2) << 32) | self.gpr32(0);
                let host = cpuid.cpuid(0xd, 0);
                let supported = (u64::from(host.edx) << 32) | u64::from(host.eax);
                match validate_xcr0(value, supported) {
                    Some(v) if self.gpr32(1) == 0 => {
                        self.guest_xcr0 = v;
                        Self::advance_rip(vmcs)?;
                    }
                    _ => Self::inject_exception(vmcs, 13, Some(0))?,
                }
                R::Nothing
            }
            VmxExitReason::Invd | VmxExitReason::Wbinvd => {
                Self::advance_rip(vmcs)?;
                R::Nothing
            }
            VmxExitReason::Vmclear
            | VmxExitReason::Vmlaunch
            | VmxExitReason::Vmptrld
            | VmxExitReason::Vmptrst
            | VmxExitReason::Vmread
            | VmxExitReason::Vmresume
            | VmxExitReason::Vmwrite
            | VmxExitReason::Vmxoff
            | VmxExitReason::Vmxon
            | VmxExitReason::Invept
            | VmxExitReason::Invvpid
            | VmxExitReason::Getsec => {
                // VMX (and SMX) are hidden from the guest: #UD.
                Self::inject_exception(vmcs, 6, None)?;
                R::Nothing
            }
            VmxExitReason::Init | VmxExitReason::Sipi => R::Nothing,
            _ => return Err(Error::UnknownExit(raw.into())),
        })
    }

    fn handle_msr(&mut self, vmcs: &mut impl VmcsAccess, write: bool) -> Result<AxVCpuExitReason> {
        let msr = self.gpr32(1) as u32;
        let value = (self.gpr32(2) << 32) | self.gpr32(0);
        let exit = match (msr, write) {
            (msr::IA32_EFER, false) => {
                let v = vmcs.read(F::GUEST_IA32_EFER)?;
                self.regs.rax = v & 0xffff_ffff;
                self.regs.rdx = v >> 32;
                AxVCpuExitReason::Nothing
            }
            (msr::IA32_EFER, true) => {
                let old = vmcs.read(F::GUEST_IA32_EFER)?;
                let paging = vmcs.read(F::CR0_READ_SHADOW)? & cr0::PG != 0;
                let bad_bits = value & !(efer::SCE | efer::LME | efer::LMA | efer::NXE) != 0;
                if bad_bits || (paging && (value ^ old) & efer::LME != 0) {
                    Self::inject_exception(vmcs, 13, Some(0))?;
                    return Ok(AxVCpuExitReason::Nothing);
                }
                vmcs.write(F::GUEST_IA32_EFER, (value & !efer::LMA) | (old & efer::LMA))?;
                AxVCpuExitReason::Nothing
            }
            (msr, false) => AxVCpuExitReason::MsrRead { msr },
            (msr, true) => AxVCpuExitReason::MsrWrite { msr, value },
        };
        Self::advance_rip(vmcs)?;
        Ok(exit)
    }

    /// A MOV to CR0/CR4, CLTS or LMSW that touched a host-owned bit (or,
    /// without TRUE controls, a CR3 access).
    fn handle_cr(&mut self, vmcs: &mut impl VmcsAccess) -> Result {
        let q = CrQualification::from_raw(vmcs.read(F::EXIT_QUALIFICATION)?);
        let value = match (q.cr, q.access) {
            (3, CrAccessType::MovToCr { gpr }) => {
                vmcs.write(F::GUEST_CR3, self.get_reg(gpr)? & !(1 << 63))?;
                return Self::advance_rip(vmcs);
            }
            (3, CrAccessType::MovFromCr { gpr }) => {
                let v = vmcs.read(F::GUEST_CR3)?;
                self.set_reg(gpr, v)?;
                return Self::advance_rip(vmcs);
            }
            (0 | 4, CrAccessType::MovToCr { gpr }) => self.get_reg(gpr)?,
            (0, CrAccessType::Clts) => vmcs.read(F::CR0_READ_SHADOW)? & !(1 << 3),
            (0, CrAccessType::Lmsw { source, .. }) => {
                let old = vmcs.read(F::CR0_READ_SHADOW)?;
                // LMSW sets PE but never clears it.
                (old & !0xe) | (u64::from(source) & 0xf) | (old & cr0::PE)
            }
            _ => {
                return Err(Error::Unsupported(
                    "this control-register access is not intercepted by design",
                ));
            }
        };
        if q.cr == 4 {
            let fixed1 = self.caps.cr4_fixed1 & !cr4::VMXE;
            if value & cr4::VMXE != 0 || value & !fixed1 != 0 {
                return Self::inject_exception(vmcs, 13, Some(0));
            }
            vmcs.write(
                F::GUEST_CR4,
                adjust_cr(value, self.caps.cr4_fixed0, self.caps.cr4_fixed1),
            )?;
            vmcs.write(F::CR4_READ_SHADOW, value)?;
            return Self::advance_rip(vmcs);
        }
        // CR0.
        let old = vmcs.read(F::CR0_READ_SHADOW)?;
        let bad = value >> 32 != 0
            || (value & cr0::PG != 0 && value & cr0::PE == 0)
            || (value & cr0::NW != 0 && value & cr0::CD == 0);
        let mut efer_v = vmcs.read(F::GUEST_IA32_EFER)?;
        let enabling_long = value & cr0::PG != 0 && old & cr0::PG == 0 && efer_v & efer::LME != 0;
        // CR4 as the guest sees it: its own bits from GUEST_CR4, the ones
        // the hypervisor owns (the mask) from the read shadow. A guest's
        // MOV to CR4 that touches no owned bit does not exit, so the shadow
        // alone misses it (NimbOS sets PAE that way).
        let cr4_mask = vmcs.read(F::CR4_GUEST_HOST_MASK)?;
        let guest_cr4 =
            (vmcs.read(F::GUEST_CR4)? & !cr4_mask) | (vmcs.read(F::CR4_READ_SHADOW)? & cr4_mask);
        if bad || (enabling_long && guest_cr4 & cr4::PAE == 0) {
            return Self::inject_exception(vmcs, 13, Some(0));
        }
        let mut entry = vmcs.read(F::VMENTRY_CONTROLS)?;
        let ia32e = u64::from(EntryControls::IA32E_MODE_GUEST.bits());
        if enabling_long {
            efer_v |= efer::LMA;
            entry |= ia32e;
        } else if value & cr0::PG == 0 && old & cr0::PG != 0 {
            efer_v &= !efer::LMA;
            entry &= !ia32e;
        }
        vmcs.write(F::GUEST_IA32_EFER, efer_v)?;
        vmcs.write(F::VMENTRY_CONTROLS, entry)?;
        let fixed0 = guest_cr0_fixed0(&self.caps, true);
        vmcs.write(F::GUEST_CR0, adjust_cr(value, fixed0, self.caps.cr0_fixed1))?;
        vmcs.write(F::CR0_READ_SHADOW, value)?;
        Self::advance_rip(vmcs)
    }
}

#[cfg(target_os = "none")]
impl<H: Hal> VmxVcpu<H> {
    /// One VM entry and the handling of the exit that ends it, on the real
    /// VMCS (current since `bind`).
    fn run_on_hardware(&mut self) -> Result<AxVCpuExitReason> {
        use super::hw;

        // SAFETY: `bind` made this vCPU's VMCS current on this CPU (the
        // `AxVCpu` state machine only runs a bound vCPU) and VMX is on.
        let mut vmcs = unsafe { hw::HwVmcs::new() };
        self.write_host_state_once(&mut vmcs, || {
            // SAFETY: CPL 0 in 64-bit mode on the host's own GDT and TSS.
            unsafe { hw::host_state() }
        })?;
        self.prepare_entry(&mut vmcs)?;
        if let Some(flush) = self.pending_tlb_flush(&vmcs)? {
            // SAFETY: VMX root operation; `guest_tlb_flush` chose types the
            // capability MSR offers.
            unsafe {
                hw::invept(flush.invept.0, &flush.invept.1)?;
                if let Some((kind, desc)) = flush.invvpid {
                    hw::invvpid(kind, &desc)?;
                }
            }
            self.tlb_flush_pending = false;
        }
        self.entry_failure = None;
        self.fault_location = None;
        // SAFETY: CPL 0; the switched MSRs exist on every processor with
        // VMX in 64-bit mode (TSC_AUX only when RDTSCP is offered, checked
        // in `with_caps`); the values were checked by `set_guest` or read
        // back from the processor.
        self.msrs.load(&mut unsafe { crate::msr::HwMsr::new() });
        // SAFETY: the VMCS is current with controls and guest state from
        // `setup` and the host state just checked; `launched` tracks the
        // launch state since the last VMCLEAR; XCR0 was validated by the
        // XSETBV exit handler (or is the initial 1).
        let entered = unsafe { hw::vmenter(&mut self.regs, self.launched, self.guest_xcr0) };
        if let Some(host) = &self.host {
            // SAFETY: the tables captured with the host state, on this CPU.
            unsafe { hw::reload_descriptor_tables(host) };
        }
        if let Err(e) = entered {
            let ctl = |f| vmcs.read(f).unwrap_or(u64::MAX);
            log::error!(
                "VMX vCPU {}: {} failed: {e}; pin {:#x} proc {:#x} proc2 {:#x} exit {:#x} \
                 entry {:#x}, guest CR0 {:#x} CR4 {:#x} EFER {:#x} RIP {:#x}",
                self.id,
                if self.launched {
                    "VMRESUME"
                } else {
                    "VMLAUNCH"
                },
                ctl(F::PIN_BASED_VM_EXEC_CONTROL),
                ctl(F::CPU_BASED_VM_EXEC_CONTROL),
                ctl(F::SECONDARY_VM_EXEC_CONTROL),
                ctl(F::VMEXIT_CONTROLS),
                ctl(F::VMENTRY_CONTROLS),
                ctl(F::GUEST_CR0),
                ctl(F::GUEST_CR4),
                ctl(F::GUEST_IA32_EFER),
                ctl(F::GUEST_RIP),
            );
            return Err(e);
        }
        let raw = vmcs.read(F::VM_EXIT_REASON)? as u32;
        let exit = self.handle_exit(&mut vmcs, &crate::vendor::HwCpuid)?;
        self.exit_location = Self::code_location(&vmcs).ok().map(|(l, _)| l);
        if ExitReasonField::from_raw(raw).basic == VmxExitReason::ExceptionNmi as u16 {
            // An NMI meant for the host made the exit (handle_exit refuses
            // any other exception, none being intercepted).
            // SAFETY: CPL 0 with the host IDT loaded again.
            unsafe { hw::raise_host_nmi() };
        }
        Ok(exit)
    }
}

impl<H: Hal> AxArchVCpu for VmxVcpu<H> {
    type CreateConfig = X86VcpuCreateConfig;
    type SetupConfig = X86VcpuSetupConfig;

    fn new(vcpu_id: usize, config: Self::CreateConfig) -> axvcpu::Result<Self> {
        #[cfg(target_os = "none")]
        {
            if crate::vendor::detect(&crate::vendor::HwCpuid).kind
                != Some(crate::vendor::VirtKind::Vmx)
            {
                return Err(Error::VirtualizationUnavailable("this processor has no VMX").into());
            }
            // SAFETY: bare metal at CPL 0, and CPUID reports VMX, so the
            // capability MSRs exist (`VmxCaps::read` reads the optional
            // ones only when the capability bits announce them).
            let caps = VmxCaps::read(&unsafe { crate::msr::HwMsr::new() });
            Ok(Self::with_caps(vcpu_id, config, caps)?)
        }
        #[cfg(not(target_os = "none"))]
        {
            let _ = (vcpu_id, config);
            Err(axvcpu::Error::Unsupported(
                "reading VMX capabilities needs bare metal; use VmxVcpu::with_caps",
            ))
        }
    }

    fn set_entry(&mut self, entry: GuestPhysAddr) -> axvcpu::Result {
        self.entry = Some(entry);
        if self.ready {
            self.pending_rip = Some(entry.as_usize() as u64);
        }
        Ok(())
    }

    fn set_ept_root(&mut self, ept_root: HostPhysAddr) -> axvcpu::Result {
        if ept_root.as_usize() % PAGE_SIZE != 0 {
            return Err(axvcpu::Error::InvalidArgument("EPT root not page aligned"));
        }
        if self.ready {
            self.pending_eptp = Some(self.eptp(ept_root)?);
        }
        self.ept_root = Some(ept_root);
        Ok(())
    }

    fn setup(&mut self, config: Self::SetupConfig) -> axvcpu::Result {
        #[cfg(target_os = "none")]
        {
            let pa = self.vmcs.paddr();
            // SAFETY: VMX is on (the caller enabled this CPU's `VmxPerCpu`,
            // as the `axvcpu` contract requires); the VMCS region belongs to
            // this vCPU and holds the revision id. VMCLEAR initializes it,
            // VMPTRLD makes it current for the writes, the last VMCLEAR
            // flushes it to memory so `bind` can load it on any CPU.
            unsafe {
                super::hw::vmclear(pa)?;
                super::hw::vmptrld(pa)?;
                let r = self.setup_with(&mut super::hw::HwVmcs::new(), &config);
                super::hw::vmclear(pa)?;
                self.after_vmclear();
                self.tlb_flush_pending = true;
                Ok(r?)
            }
        }
        #[cfg(not(target_os = "none"))]
        {
            let _ = config;
            Err(axvcpu::Error::Unsupported(
                "VMCS access needs bare metal; use VmxVcpu::setup_with",
            ))
        }
    }

    fn run(&mut self) -> axvcpu::Result<AxVCpuExitReason> {
        if !self.ready {
            return Err(axvcpu::Error::BadState);
        }
        #[cfg(target_os = "none")]
        {
            self.run_on_hardware().map_err(|e| {
                log::error!("VMX vCPU {}: {e}", self.id);
                e.into()
            })
        }
        #[cfg(not(target_os = "none"))]
        Err(axvcpu::Error::Unsupported(
            "VMX VM entry is only built for bare metal (target_os = \"none\")",
        ))
    }

    fn bind(&mut self) -> axvcpu::Result {
        #[cfg(target_os = "none")]
        {
            // SAFETY: VMX is on and the VMCS was cleared by `setup`/`unbind`.
            unsafe { super::hw::vmptrld(self.vmcs.paddr())? };
            self.after_vmptrld();
            Ok(())
        }
        #[cfg(not(target_os = "none"))]
        Err(axvcpu::Error::Unsupported("VMPTRLD needs bare metal"))
    }

    fn unbind(&mut self) -> axvcpu::Result {
        #[cfg(target_os = "none")]
        {
            // SAFETY: VMX is on and this VMCS is current on this CPU.
            unsafe { super::hw::vmclear(self.vmcs.paddr())? };
            self.after_vmclear();
            // SAFETY: as in `run_on_hardware`: CPL 0 and MSRs that exist.
            self.msrs.put(&mut unsafe { crate::msr::HwMsr::new() });
            Ok(())
        }
        #[cfg(not(target_os = "none"))]
        Err(axvcpu::Error::Unsupported("VMCLEAR needs bare metal"))
    }

    fn set_gpr(&mut self, reg: usize, val: u64) {
        if self.set_reg(reg, val).is_err() {
            log::warn!("VMX vCPU {}: set_gpr of invalid register {reg}", self.id);
        }
    }

    fn gpr(&self, reg: usize) -> u64 {
        self.get_reg(reg).unwrap_or_else(|_| {
            log::warn!("VMX vCPU {}: gpr of invalid register {reg}", self.id);
            0
        })
    }

    fn inject_interrupt(&mut self, vector: u8) -> axvcpu::Result {
        Ok(self.pending.push(vector)?)
    }

    fn set_return_value(&mut self, val: u64) {
        self.regs.rax = val;
    }
}

impl<H: Hal> X86VcpuExt for VmxVcpu<H> {
    fn ready_for_interrupt(&self) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        #[cfg(target_os = "none")]
        {
            // SAFETY: the VM runs this vCPU bound: its VMCS is current on
            // this CPU and VMX is on; only reads.
            let vmcs = unsafe { super::hw::HwVmcs::new() };
            Self::interrupt_ready(&vmcs).unwrap_or(false)
        }
        #[cfg(not(target_os = "none"))]
        true
    }

    fn interrupts_enabled(&self) -> bool {
        #[cfg(target_os = "none")]
        {
            // SAFETY: as in `ready_for_interrupt`; one read.
            let vmcs = unsafe { super::hw::HwVmcs::new() };
            vmcs.read(F::GUEST_RFLAGS)
                .map_or(true, |f| f & (1 << 9) != 0)
        }
        #[cfg(not(target_os = "none"))]
        true
    }

    fn request_interrupt_window(&mut self) -> Result<()> {
        #[cfg(target_os = "none")]
        {
            // SAFETY: as in `ready_for_interrupt`, for one control bit.
            let mut vmcs = unsafe { super::hw::HwVmcs::new() };
            Self::set_proc_control(&mut vmcs, ProcControls::INTERRUPT_WINDOW_EXITING, true)
        }
        #[cfg(not(target_os = "none"))]
        Ok(())
    }

    /// The location saved at the last EPT violation, else where the guest
    /// was after the last exit was handled (all zero before any exit).
    fn guest_code_location(&self) -> GuestCodeLocation {
        self.fault_location
            .map(|(l, _)| l)
            .or(self.exit_location)
            .unwrap_or(GuestCodeLocation {
                linear_rip: 0,
                cr0: 0,
                cr3: 0,
                cr4: 0,
                efer: 0,
                bitness: 64,
            })
    }

    fn decode_mmio(&mut self, addr: GuestPhysAddr, insn: &[u8]) -> Result<AxVCpuExitReason> {
        let (loc, rip) = self.fault_location.ok_or(Error::InvalidArgument(
            "decode_mmio without a preceding EPT violation",
        ))?;
        let i = decode_for(&loc, insn)?;
        let exit = mmio_exit(addr, &i, |r| self.get_reg(r).unwrap_or(0));
        self.pending_rip = Some(rip.wrapping_add(i.len as u64));
        self.fault_location = None;
        Ok(exit)
    }

    fn emulate_mmio_rmw(
        &mut self,
        insn: &[u8],
        access: &mut dyn FnMut(AccessWidth, Option<u64>) -> u64,
    ) -> Result<()> {
        let (loc, rip) = self.fault_location.ok_or(Error::InvalidArgument(
            "emulate_mmio_rmw without a preceding EPT violation",
        ))?;
        let i = decode_mmio_rmw(insn, loc.bitness)?;
        let src = i.source(|r| self.get_reg(r).unwrap_or(0));
        let out = i.apply(access(i.width, None), src);
        if let Some(value) = out.write {
            access(i.width, Some(value));
        }
        self.pending_flags = Some(out.flags);
        self.pending_rip = Some(rip.wrapping_add(i.len as u64));
        self.fault_location = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
