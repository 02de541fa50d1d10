//! Hardware virtualization on/off for one physical CPU.

use crate::{AxArchPerCpu, Error, Result};

/// The virtualization state of one physical CPU: an [`AxArchPerCpu`] with checks.
///
/// It starts uninitialized so that it can live in a `static` per-CPU area
/// ([`new_uninit`](Self::new_uninit) is `const`); [`init`](Self::init) creates the
/// architecture state. Enabling twice, disabling while off, or using it before
/// `init` returns an error, never panics.
///
/// Dropping it while enabled turns virtualization off first (a failure is logged),
/// so that the memory the hardware uses (x86: the VMXON region) is not freed
/// under it. Drop it on its own CPU.
#[derive(Debug)]
pub struct AxPerCpu<A: AxArchPerCpu> {
    cpu_id: usize,
    arch: Option<A>,
}

impl<A: AxArchPerCpu> AxPerCpu<A> {
    /// An uninitialized per-CPU state.
    pub const fn new_uninit() -> Self {
        Self {
            cpu_id: 0,
            arch: None,
        }
    }

    /// A per-CPU state initialized for `cpu_id`.
    pub fn new(cpu_id: usize) -> Result<Self> {
        let mut s = Self::new_uninit();
        s.init(cpu_id)?;
        Ok(s)
    }

    /// Creates the architecture state of physical CPU `cpu_id`.
    /// A second call is an [`Error::PerCpuAlreadyInit`].
    pub fn init(&mut self, cpu_id: usize) -> Result {
        if self.arch.is_some() {
            return Err(Error::PerCpuAlreadyInit {
                cpu_id: self.cpu_id,
            });
        }
        self.arch = Some(A::new(cpu_id)?);
        self.cpu_id = cpu_id;
        Ok(())
    }

    /// Whether [`init`](Self::init) succeeded.
    pub const fn is_initialized(&self) -> bool {
        self.arch.is_some()
    }

    /// The physical CPU, once initialized.
    pub const fn cpu_id(&self) -> Option<usize> {
        match self.arch {
            Some(_) => Some(self.cpu_id),
            None => None,
        }
    }

    /// Whether virtualization is on (false before `init`).
    pub fn is_enabled(&self) -> bool {
        self.arch.as_ref().is_some_and(A::is_enabled)
    }

    /// The architecture state, once initialized.
    pub fn arch(&self) -> Option<&A> {
        self.arch.as_ref()
    }

    /// The architecture state, mutably, once initialized.
    pub fn arch_mut(&mut self) -> Option<&mut A> {
        self.arch.as_mut()
    }

    /// Turns virtualization on on the current CPU.
    ///
    /// Errors: [`Error::PerCpuUninit`], [`Error::AlreadyEnabled`], the
    /// architecture's error, or [`Error::BadState`] if the architecture reported
    /// success but is still off.
    pub fn hardware_enable(&mut self) -> Result {
        let cpu_id = self.cpu_id;
        let arch = self.arch.as_mut().ok_or(Error::PerCpuUninit)?;
        if arch.is_enabled() {
            return Err(Error::AlreadyEnabled { cpu_id });
        }
        arch.hardware_enable()?;
        if arch.is_enabled() {
            Ok(())
        } else {
            Err(Error::BadState)
        }
    }

    /// Turns virtualization off on the current CPU.
    ///
    /// Errors: [`Error::PerCpuUninit`], [`Error::NotEnabled`], the architecture's
    /// error, or [`Error::BadState`] if the architecture reported success but is
    /// still on.
    pub fn hardware_disable(&mut self) -> Result {
        let cpu_id = self.cpu_id;
        let arch = self.arch.as_mut().ok_or(Error::PerCpuUninit)?;
        if !arch.is_enabled() {
            return Err(Error::NotEnabled { cpu_id });
        }
        arch.hardware_disable()?;
        if arch.is_enabled() {
            Err(Error::BadState)
        } else {
            Ok(())
        }
    }
}

impl<A: AxArchPerCpu> Default for AxPerCpu<A> {
    fn default() -> Self {
        Self::new_uninit()
    }
}

impl<A: AxArchPerCpu> Drop for AxPerCpu<A> {
    fn drop(&mut self) {
        if !self.is_enabled() {
            return;
        }
        if let Err(e) = self.hardware_disable() {
            log::error!(
                "CPU {}: disabling virtualization on drop failed: {e}",
                self.cpu_id
            );
        }
    }
}
