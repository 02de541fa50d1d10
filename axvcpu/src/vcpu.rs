//! The vCPU wrapper: an architecture vCPU plus a checked state machine.

use axaddrspace::{AccessWidth, GuestPhysAddr, HostPhysAddr};

use crate::{AxArchVCpu, AxVCpuExitReason, Error, ExitCounters, Result, VCpuState};

/// A vCPU: an [`AxArchVCpu`] behind the state machine of [`VCpuState`].
///
/// Every method that is not allowed in the current state returns
/// [`Error::InvalidState`] naming that state and the operation; none panics.
///
/// **Failure policy.** When the architecture operation of a state *transition*
/// (`setup`, `bind`, `unbind`, `run`) fails, the vCPU becomes
/// [`VCpuState::Invalid`] and the architecture's error is returned unchanged:
/// the hardware state is unknown, so the vCPU must be destroyed. `Invalid` is
/// terminal. When an operation that is *not* a transition fails
/// (`set_entry`, `set_ept_root`, `inject_interrupt`, the `set_*_result`
/// helpers), the state is kept: those operations must leave the architecture vCPU
/// unchanged on error (the [`AxArchVCpu`] contract).
///
/// Methods take `&mut self`: exclusive access is the caller's business (a lock
/// or a per-CPU run queue), so `Running` is only ever seen inside
/// [`run`](Self::run) or between two calls of
/// [`with_state_transition`](Self::with_state_transition).
///
/// Every exit returned by [`run`](Self::run) is counted in
/// [`exit_counters`](Self::exit_counters).
#[derive(Debug)]
pub struct AxVCpu<A: AxArchVCpu> {
    id: usize,
    favor_phys_cpu: usize,
    affinity: Option<usize>,
    state: VCpuState,
    bound: bool,
    arch: A,
    exits: ExitCounters,
}

impl<A: AxArchVCpu> AxVCpu<A> {
    /// Creates vCPU `id`, preferring physical CPU `favor_phys_cpu`, allowed on the
    /// physical CPUs whose bits are set in `affinity` (`None`: any CPU).
    ///
    /// The state is [`VCpuState::Created`]. An empty affinity mask, or one that
    /// excludes `favor_phys_cpu`, is an [`Error::InvalidArgument`]; an error of
    /// [`AxArchVCpu::new`] is returned as is.
    pub fn new(
        id: usize,
        favor_phys_cpu: usize,
        affinity: Option<usize>,
        config: A::CreateConfig,
    ) -> Result<Self> {
        if let Some(mask) = affinity {
            if mask == 0 {
                return Err(Error::InvalidArgument("empty physical CPU affinity mask"));
            }
            if !mask_contains(mask, favor_phys_cpu) {
                return Err(Error::InvalidArgument(
                    "favored physical CPU is not in the affinity mask",
                ));
            }
        }
        let arch = A::new(id, config)?;
        Ok(Self {
            id,
            favor_phys_cpu,
            affinity,
            state: VCpuState::Created,
            bound: false,
            arch,
            exits: ExitCounters::new(),
        })
    }

    /// The vCPU's id.
    pub const fn id(&self) -> usize {
        self.id
    }

    /// The physical CPU this vCPU prefers to run on.
    pub const fn favor_phys_cpu(&self) -> usize {
        self.favor_phys_cpu
    }

    /// The physical CPUs this vCPU may run on, as a bit mask (`None`: any).
    pub const fn affinity(&self) -> Option<usize> {
        self.affinity
    }

    /// Whether this vCPU may run on physical CPU `cpu_id`.
    pub const fn can_run_on(&self, cpu_id: usize) -> bool {
        match self.affinity {
            None => true,
            Some(mask) => mask_contains(mask, cpu_id),
        }
    }

    /// The current state.
    pub const fn state(&self) -> VCpuState {
        self.state
    }

    /// Whether the vCPU is bound to a physical CPU (`Ready`, `Running`, or
    /// `Blocked` after being blocked while `Ready`).
    pub const fn is_bound(&self) -> bool {
        self.bound
    }

    /// The architecture vCPU.
    pub const fn arch_vcpu(&self) -> &A {
        &self.arch
    }

    /// The architecture vCPU, mutably, for architecture-specific work. The state
    /// machine does not see what is done through it.
    pub fn arch_vcpu_mut(&mut self) -> &mut A {
        &mut self.arch
    }

    /// Counts of the exits [`run`](Self::run) returned, per reason.
    pub const fn exit_counters(&self) -> &ExitCounters {
        &self.exits
    }

    /// Sets all exit counters back to zero.
    pub fn reset_exit_counters(&mut self) {
        self.exits.reset();
    }

    /// Moves the state from `from` to `to` around `f`, the architecture work of
    /// operation `op`.
    ///
    /// - If the state is not `from`, or `from -> to` is not an edge of the state
    ///   machine ([`VCpuState::can_transition_to`]), returns
    ///   [`Error::InvalidState`] `{ from: <current state>, op }` without calling `f`.
    /// - If `f` succeeds, the state becomes `to` and its value is returned.
    /// - If `f` fails, the state becomes [`VCpuState::Invalid`] and its error is
    ///   returned.
    ///
    /// The built-in operations use it; a scheduler may use it too, but then it must
    /// do in `f` the architecture work the edge stands for (binding for
    /// `Free -> Ready`, ...).
    pub fn with_state_transition<T>(
        &mut self,
        from: VCpuState,
        to: VCpuState,
        op: &'static str,
        f: impl FnOnce(&mut A) -> Result<T>,
    ) -> Result<T> {
        if self.state != from || !from.can_transition_to(to, self.bound) {
            return Err(self.invalid(op));
        }
        match f(&mut self.arch) {
            Ok(v) => {
                match (from, to) {
                    (VCpuState::Free, VCpuState::Ready) => self.bound = true,
                    (VCpuState::Ready, VCpuState::Free) => self.bound = false,
                    _ => {}
                }
                self.state = to;
                Ok(v)
            }
            Err(e) => {
                log::warn!("vCPU {}: {op} failed in state {from}: {e}", self.id);
                self.state = VCpuState::Invalid;
                Err(e)
            }
        }
    }

    /// Sets entry point and nested page table root, then sets the vCPU up:
    /// `Created -> Free`.
    pub fn setup(
        &mut self,
        entry: GuestPhysAddr,
        ept_root: HostPhysAddr,
        config: A::SetupConfig,
    ) -> Result {
        self.with_state_transition(VCpuState::Created, VCpuState::Free, "setup", |a| {
            a.set_entry(entry)?;
            a.set_ept_root(ept_root)?;
            a.setup(config)
        })
    }

    /// Binds the vCPU to the current physical CPU: `Free -> Ready`.
    pub fn bind(&mut self) -> Result {
        self.with_state_transition(VCpuState::Free, VCpuState::Ready, "bind", A::bind)
    }

    /// Unbinds the vCPU from the current physical CPU: `Ready -> Free`.
    pub fn unbind(&mut self) -> Result {
        self.with_state_transition(VCpuState::Ready, VCpuState::Free, "unbind", A::unbind)
    }

    /// Runs the guest until an exit: `Ready -> Running -> Ready`. The exit is
    /// counted, then returned.
    ///
    /// This is the hot path of every exit, so it does the two moves of
    /// [`with_state_transition`](Self::with_state_transition) inline: one
    /// state check before, the architecture's run, one store after.
    #[inline]
    pub fn run(&mut self) -> Result<AxVCpuExitReason> {
        if self.state != VCpuState::Ready {
            return Err(self.invalid("run"));
        }
        self.state = VCpuState::Running;
        match self.arch.run() {
            Ok(exit) => {
                self.state = VCpuState::Ready;
                self.exits.record(&exit);
                Ok(exit)
            }
            Err(e) => Err(self.run_failed(e)),
        }
    }

    /// A failed architecture `run`: the vCPU is `Invalid` from now on.
    #[cold]
    #[inline(never)]
    fn run_failed(&mut self, e: Error) -> Error {
        log::warn!("vCPU {}: run failed in state Running: {e}", self.id);
        self.state = VCpuState::Invalid;
        e
    }

    /// Blocks the vCPU (for example on a guest `HLT`): `Free` or `Ready` ->
    /// `Blocked`. A vCPU blocked while `Ready` stays bound.
    pub fn block(&mut self) -> Result {
        let from = match self.state {
            s @ (VCpuState::Free | VCpuState::Ready) => s,
            _ => return Err(self.invalid("block")),
        };
        self.with_state_transition(from, VCpuState::Blocked, "block", |_| Ok(()))
    }

    /// Unblocks the vCPU: `Blocked` -> the state it was blocked from (`Ready` if
    /// bound, `Free` if not).
    pub fn unblock(&mut self) -> Result {
        let to = if self.bound {
            VCpuState::Ready
        } else {
            VCpuState::Free
        };
        self.with_state_transition(VCpuState::Blocked, to, "unblock", |_| Ok(()))
    }

    /// Changes the entry point (for example for a start-up IPI). Allowed in
    /// `Created`, `Free`, `Ready` and `Blocked`; the state is kept even on error.
    pub fn set_entry(&mut self, entry: GuestPhysAddr) -> Result {
        self.require_idle("set entry of")?;
        self.arch.set_entry(entry)
    }

    /// Changes the nested page table root. Allowed in `Created`, `Free`, `Ready`
    /// and `Blocked`; the state is kept even on error.
    pub fn set_ept_root(&mut self, ept_root: HostPhysAddr) -> Result {
        self.require_idle("set nested page table root of")?;
        self.arch.set_ept_root(ept_root)
    }

    /// Queues interrupt `vector` for the guest. Refused only in `Invalid` and
    /// `Running`; the state is kept even on error.
    pub fn inject_interrupt(&mut self, vector: u8) -> Result {
        self.require_idle("inject an interrupt into")?;
        self.arch.inject_interrupt(vector)
    }

    /// Sets general purpose register `reg` (architecture numbering).
    #[inline]
    pub fn set_gpr(&mut self, reg: usize, val: u64) {
        self.arch.set_gpr(reg, val);
    }

    /// Reads general purpose register `reg` (architecture numbering).
    #[inline]
    pub fn gpr(&self, reg: usize) -> u64 {
        self.arch.gpr(reg)
    }

    /// Sets the register that returns a value to the guest (x86: RAX).
    #[inline]
    pub fn set_return_value(&mut self, val: u64) {
        self.arch.set_return_value(val);
    }

    /// Completes an [`AxVCpuExitReason::IoRead`] with `value`
    /// (see [`AxArchVCpu::set_io_result`]).
    #[inline]
    pub fn set_io_result(&mut self, width: AccessWidth, value: u64) -> Result {
        self.require_idle("complete a port read of")?;
        self.arch.set_io_result(width, value)
    }

    /// Completes an [`AxVCpuExitReason::MmioRead`] with `value`: pass the exit's
    /// `reg`, `width`, `reg_width` and `signed_ext` (see
    /// [`AxArchVCpu::set_mmio_read_result`]).
    #[inline]
    pub fn set_mmio_read_result(
        &mut self,
        reg: usize,
        width: AccessWidth,
        reg_width: AccessWidth,
        signed_ext: bool,
        value: u64,
    ) -> Result {
        self.require_idle("complete an MMIO read of")?;
        self.arch
            .set_mmio_read_result(reg, width, reg_width, signed_ext, value)
    }

    /// Completes an [`AxVCpuExitReason::MsrRead`] with `value`
    /// (see [`AxArchVCpu::set_msr_result`]).
    #[inline]
    pub fn set_msr_result(&mut self, value: u64) -> Result {
        self.require_idle("complete an MSR read of")?;
        self.arch.set_msr_result(value);
        Ok(())
    }

    #[cold]
    fn invalid(&self, op: &'static str) -> Error {
        Error::InvalidState {
            from: self.state,
            op,
        }
    }

    /// Refuses `Invalid` (unusable) and `Running` (the guest owns the state).
    #[inline]
    fn require_idle(&self, op: &'static str) -> Result {
        match self.state {
            VCpuState::Invalid | VCpuState::Running => Err(self.invalid(op)),
            _ => Ok(()),
        }
    }
}

const fn mask_contains(mask: usize, cpu_id: usize) -> bool {
    cpu_id < usize::BITS as usize && mask & (1 << cpu_id) != 0
}
