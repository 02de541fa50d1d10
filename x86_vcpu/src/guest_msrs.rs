//! The guest MSRs that VM entry and exit leave alone, and their switching.
//!
//! What the processor switches by itself:
//!
//! - **VMX** loads and saves guest FS/GS base, SYSENTER, PAT and EFER through
//!   the VMCS. STAR, LSTAR, CSTAR, FMASK and KERNEL_GS_BASE are *not* in the
//!   VMCS, and neither is TSC_AUX (which RDTSCP and RDPID read).
//! - **SVM**: VMRUN switches EFER and G_PAT, and this crate's entry routine
//!   switches FS/GS/TR/LDTR, KERNEL_GS_BASE, STAR/LSTAR/CSTAR/SFMASK and
//!   SYSENTER with VMSAVE/VMLOAD around it (host values kept in a per-vCPU
//!   save page). TSC_AUX is left alone.
//!
//! The rest ([`SyscallMsrs`]) is switched in software by [`MsrSwitch`],
//! lazily, the way KVM treats its "user return" MSRs: the guest values are
//! written into the processor before the first entry after the vCPU came
//! to a CPU ([`MsrSwitch::load`]), stay there across exits (the hypervisor
//! itself never executes SYSCALL, SWAPGS, RDTSCP or RDPID, so it does not
//! care what they hold), and the host values saved at that first entry are
//! written back when the vCPU leaves the CPU ([`MsrSwitch::put`], from
//! `unbind`). The hot path is one branch. The guest accesses these MSRs
//! directly (they are not intercepted), so the values in the processor
//! are the guest's own while it is loaded.
//!
//! A vCPU that enters after another vCPU on the same CPU — unbound or not —
//! writes all its own values first, so each guest sees only what it wrote
//! (or the reset value 0).

use crate::msr::{self, MsrAccess};
use crate::{Error, Result};

/// The guest MSRs switched in software, by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyscallMsrs {
    /// `IA32_STAR`: SYSCALL/SYSRET selectors (bits 63:48 and 47:32).
    pub star: u64,
    /// `IA32_LSTAR`: 64-bit SYSCALL entry.
    pub lstar: u64,
    /// `IA32_CSTAR`: compatibility-mode SYSCALL entry (AMD).
    pub cstar: u64,
    /// `IA32_FMASK` (SFMASK): RFLAGS bits SYSCALL clears.
    pub fmask: u64,
    /// `IA32_KERNEL_GS_BASE`: what SWAPGS exchanges with the GS base.
    pub kernel_gs_base: u64,
    /// `IA32_TSC_AUX`: what RDTSCP returns in ECX and RDPID reads.
    pub tsc_aux: u64,
}

/// Every MSR [`SyscallMsrs`] holds, in field order.
pub const SYSCALL_MSRS: [u32; 6] = [
    msr::IA32_STAR,
    msr::IA32_LSTAR,
    msr::IA32_CSTAR,
    msr::IA32_FMASK,
    msr::IA32_KERNEL_GS_BASE,
    msr::IA32_TSC_AUX,
];

/// Whether `v` is a canonical 48-bit virtual address (bits 63:47 equal).
pub const fn is_canonical(v: u64) -> bool {
    let top = v >> 47;
    top == 0 || top == 0x1_ffff
}

impl SyscallMsrs {
    /// The value of `msr`, if it is one of [`SYSCALL_MSRS`].
    pub fn get(&self, msr: u32) -> Option<u64> {
        Some(match msr {
            msr::IA32_STAR => self.star,
            msr::IA32_LSTAR => self.lstar,
            msr::IA32_CSTAR => self.cstar,
            msr::IA32_FMASK => self.fmask,
            msr::IA32_KERNEL_GS_BASE => self.kernel_gs_base,
            msr::IA32_TSC_AUX => self.tsc_aux,
            _ => return None,
        })
    }

    fn slot(&mut self, msr: u32) -> Option<&mut u64> {
        Some(match msr {
            msr::IA32_STAR => &mut self.star,
            msr::IA32_LSTAR => &mut self.lstar,
            msr::IA32_CSTAR => &mut self.cstar,
            msr::IA32_FMASK => &mut self.fmask,
            msr::IA32_KERNEL_GS_BASE => &mut self.kernel_gs_base,
            msr::IA32_TSC_AUX => &mut self.tsc_aux,
            _ => return None,
        })
    }

    /// Sets `msr` to `value` (unchecked, see [`Self::validate`]); an MSR
    /// outside [`SYSCALL_MSRS`] is refused.
    pub fn set(&mut self, msr: u32, value: u64) -> Result {
        *self
            .slot(msr)
            .ok_or(Error::InvalidArgument("not a software-switched guest MSR"))? = value;
        Ok(())
    }

    /// Checks that WRMSR would take every value: LSTAR, CSTAR and
    /// KERNEL_GS_BASE canonical (Intel SDM vol. 4 table 2-2, a WRMSR of a
    /// non-canonical address raises #GP), FMASK and TSC_AUX with bits 63:32
    /// clear (reserved).
    pub fn validate(&self) -> Result {
        if !is_canonical(self.lstar) || !is_canonical(self.cstar) {
            return Err(Error::InvalidArgument(
                "LSTAR/CSTAR hold a non-canonical address",
            ));
        }
        if !is_canonical(self.kernel_gs_base) {
            return Err(Error::InvalidArgument(
                "KERNEL_GS_BASE holds a non-canonical address",
            ));
        }
        if self.fmask >> 32 != 0 || self.tsc_aux >> 32 != 0 {
            return Err(Error::InvalidArgument(
                "FMASK/TSC_AUX bits 63:32 are reserved",
            ));
        }
        Ok(())
    }
}

/// The software switch of some of the [`SYSCALL_MSRS`] for one vCPU (see
/// the module documentation).
#[derive(Debug, Clone)]
pub struct MsrSwitch {
    switched: [u32; SYSCALL_MSRS.len()],
    len: usize,
    guest: SyscallMsrs,
    host: SyscallMsrs,
    /// The guest values are in the processor; `host` holds what they
    /// replaced.
    loaded: bool,
    /// The guest values changed while loaded: write them at the next entry.
    stale: bool,
}

impl MsrSwitch {
    /// A switch of `msrs` (a subset of [`SYSCALL_MSRS`], no repeats), with
    /// guest values 0.
    pub fn new(msrs: &[u32]) -> Result<Self> {
        let mut switched = [0; SYSCALL_MSRS.len()];
        for (i, &m) in msrs.iter().enumerate() {
            if !SYSCALL_MSRS.contains(&m) {
                return Err(Error::InvalidArgument("not a software-switched guest MSR"));
            }
            if msrs[..i].contains(&m) {
                return Err(Error::InvalidArgument("guest MSR listed twice"));
            }
            switched[i] = m;
        }
        Ok(Self {
            switched,
            len: msrs.len(),
            guest: SyscallMsrs::default(),
            host: SyscallMsrs::default(),
            loaded: false,
            stale: false,
        })
    }

    /// The MSRs this switch handles.
    pub fn msrs(&self) -> &[u32] {
        &self.switched[..self.len]
    }

    /// Whether `msr` is switched here.
    pub fn switches(&self, msr: u32) -> bool {
        self.msrs().contains(&msr)
    }

    /// Whether the guest values are in the processor now.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Sets the guest values (all of them; the switched ones reach the
    /// processor at the next [`load`](Self::load)). Refused if WRMSR would
    /// refuse one ([`SyscallMsrs::validate`]).
    pub fn set_guest(&mut self, values: SyscallMsrs) -> Result {
        values.validate()?;
        self.guest = values;
        if self.loaded {
            self.stale = true;
        }
        Ok(())
    }

    /// The guest values: for the switched MSRs, read from the processor
    /// when they are loaded there (the guest writes them directly).
    pub fn guest(&self, hw: &impl MsrAccess) -> SyscallMsrs {
        let mut v = self.guest;
        if self.loaded && !self.stale {
            for &m in self.msrs() {
                // `m` comes from SYSCALL_MSRS (checked by `new`).
                let _ = v.set(m, hw.read(m));
            }
        }
        v
    }

    /// The host values saved by the last [`load`](Self::load).
    pub fn host(&self) -> SyscallMsrs {
        self.host
    }

    /// Before a VM entry: puts the guest values into the processor unless
    /// they are there already. The first time after [`put`](Self::put) (or
    /// creation) the processor's values are saved as the host's, and only
    /// the MSRs whose guest value differs are written.
    #[inline(always)]
    pub fn load(&mut self, hw: &mut impl MsrAccess) {
        if self.loaded && !self.stale {
            return;
        }
        self.load_slow(hw);
    }

    #[cold]
    #[inline(never)]
    fn load_slow(&mut self, hw: &mut impl MsrAccess) {
        for i in 0..self.len {
            let m = self.switched[i];
            let g = self.guest.get(m).unwrap_or(0);
            if self.loaded {
                hw.write(m, g);
            } else {
                let h = hw.read(m);
                let _ = self.host.set(m, h);
                if h != g {
                    hw.write(m, g);
                }
            }
        }
        self.loaded = true;
        self.stale = false;
    }

    /// When the vCPU leaves the CPU (unbind): keeps the guest values the
    /// processor holds and writes the saved host values back (only those
    /// that differ). Nothing to do when not loaded.
    pub fn put(&mut self, hw: &mut impl MsrAccess) {
        if !self.loaded {
            return;
        }
        for i in 0..self.len {
            let m = self.switched[i];
            let g = if self.stale {
                self.guest.get(m).unwrap_or(0)
            } else {
                let g = hw.read(m);
                let _ = self.guest.set(m, g);
                g
            };
            let h = self.host.get(m).unwrap_or(0);
            if g != h {
                hw.write(m, h);
            }
        }
        self.loaded = false;
        self.stale = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msr::FakeMsrs;

    const VMX_SET: [u32; 6] = SYSCALL_MSRS;

    /// A guest's WRMSR of a passed-through MSR: straight into the processor.
    fn guest_wrmsr(hw: &mut FakeMsrs, msr: u32, value: u64) {
        hw.preset(msr, value);
    }

    #[test]
    fn msr_numbers_match_the_sdm() {
        // Intel SDM vol. 4 table 2-2.
        assert_eq!(
            SYSCALL_MSRS,
            [
                0xC000_0081,
                0xC000_0082,
                0xC000_0083,
                0xC000_0084,
                0xC000_0102,
                0xC000_0103
            ]
        );
    }

    #[test]
    fn canonical_addresses() {
        assert!(is_canonical(0));
        assert!(is_canonical(0x0000_7fff_ffff_ffff));
        assert!(is_canonical(0xffff_8000_0000_0000));
        assert!(!is_canonical(0x0000_8000_0000_0000));
        assert!(!is_canonical(0xffff_7fff_ffff_ffff));
    }

    #[test]
    fn new_refuses_other_and_repeated_msrs() {
        assert!(MsrSwitch::new(&[msr::IA32_EFER]).is_err());
        assert!(MsrSwitch::new(&[msr::IA32_STAR, msr::IA32_STAR]).is_err());
        let s = MsrSwitch::new(&[msr::IA32_TSC_AUX]).unwrap();
        assert_eq!(s.msrs(), [0xC000_0103]);
        assert!(s.switches(msr::IA32_TSC_AUX));
        assert!(!s.switches(msr::IA32_STAR));
    }

    #[test]
    fn values_are_validated_like_wrmsr() {
        let mut s = MsrSwitch::new(&VMX_SET).unwrap();
        let bad_lstar = SyscallMsrs {
            lstar: 0x0000_8000_0000_0000,
            ..Default::default()
        };
        assert!(s.set_guest(bad_lstar).is_err());
        let bad_kgs = SyscallMsrs {
            kernel_gs_base: 0x1234_0000_0000_0000,
            ..Default::default()
        };
        assert!(s.set_guest(bad_kgs).is_err());
        let bad_aux = SyscallMsrs {
            tsc_aux: 1 << 32,
            ..Default::default()
        };
        assert!(s.set_guest(bad_aux).is_err());
        let good = SyscallMsrs {
            star: 0x001b_0008_0000_0000,
            lstar: 0xffff_ffff_8100_0000,
            fmask: 0x4_7700,
            tsc_aux: 3,
            ..Default::default()
        };
        assert_eq!(s.set_guest(good), Ok(()));
        let mut v = SyscallMsrs::default();
        assert!(v.set(msr::IA32_EFER, 1).is_err());
        assert_eq!(v.get(msr::IA32_PAT), None);
    }

    #[test]
    fn first_load_saves_the_host_and_writes_only_what_differs() {
        let mut hw = FakeMsrs::new()
            .with(msr::IA32_LSTAR, 0xffff_ffff_8160_0000)
            .with(msr::IA32_STAR, 0x0023_0010_0000_0000);
        let mut s = MsrSwitch::new(&VMX_SET).unwrap();
        s.set_guest(SyscallMsrs {
            lstar: 0x20_1000,
            fmask: 0x4_7700,
            ..Default::default()
        })
        .unwrap();
        s.load(&mut hw);
        assert!(s.is_loaded());
        // STAR differs (host value, guest 0), LSTAR and FMASK differ; CSTAR,
        // KERNEL_GS_BASE and TSC_AUX are 0 on both sides.
        assert_eq!(
            hw.writes,
            [
                (msr::IA32_STAR, 0),
                (msr::IA32_LSTAR, 0x20_1000),
                (msr::IA32_FMASK, 0x4_7700)
            ]
        );
        assert_eq!(s.host().lstar, 0xffff_ffff_8160_0000);
        assert_eq!(s.host().star, 0x0023_0010_0000_0000);
        // Loaded: the next entries touch nothing.
        hw.writes.clear();
        s.load(&mut hw);
        s.load(&mut hw);
        assert!(hw.writes.is_empty());
    }

    #[test]
    fn put_keeps_what_the_guest_wrote_and_restores_the_host() {
        let mut hw = FakeMsrs::new().with(msr::IA32_KERNEL_GS_BASE, 0xffff_8880_0000_0000);
        let mut s = MsrSwitch::new(&VMX_SET).unwrap();
        s.load(&mut hw);
        assert_eq!(hw.read(msr::IA32_KERNEL_GS_BASE), 0);
        guest_wrmsr(&mut hw, msr::IA32_KERNEL_GS_BASE, 0x30_0000);
        guest_wrmsr(&mut hw, msr::IA32_STAR, 0x001b_0008_0000_0000);
        assert_eq!(s.guest(&hw).kernel_gs_base, 0x30_0000);
        hw.writes.clear();
        s.put(&mut hw);
        assert!(!s.is_loaded());
        assert_eq!(hw.read(msr::IA32_KERNEL_GS_BASE), 0xffff_8880_0000_0000);
        assert_eq!(hw.read(msr::IA32_STAR), 0);
        assert_eq!(
            hw.writes,
            [
                (msr::IA32_STAR, 0),
                (msr::IA32_KERNEL_GS_BASE, 0xffff_8880_0000_0000)
            ]
        );
        // Kept in the vCPU while it is away.
        let g = s.guest(&hw);
        assert_eq!(g.kernel_gs_base, 0x30_0000);
        assert_eq!(g.star, 0x001b_0008_0000_0000);
        // A second put does nothing.
        hw.writes.clear();
        s.put(&mut hw);
        assert!(hw.writes.is_empty());
    }

    /// Two VMs' vCPUs take turns on one CPU; each sees only its own values
    /// and the host gets its own back.
    #[test]
    fn two_vcpus_on_one_cpu_keep_their_own_values() {
        let host_lstar = 0xffff_ffff_8100_0000;
        let mut hw = FakeMsrs::new()
            .with(msr::IA32_LSTAR, host_lstar)
            .with(msr::IA32_TSC_AUX, 1);
        let mut a = MsrSwitch::new(&VMX_SET).unwrap();
        let mut b = MsrSwitch::new(&VMX_SET).unwrap();

        a.load(&mut hw);
        assert_eq!(hw.read(msr::IA32_LSTAR), 0, "A starts from reset values");
        guest_wrmsr(&mut hw, msr::IA32_LSTAR, 0x20_2000);
        guest_wrmsr(&mut hw, msr::IA32_TSC_AUX, 0xa);
        a.put(&mut hw);
        assert_eq!(hw.read(msr::IA32_LSTAR), host_lstar);
        assert_eq!(hw.read(msr::IA32_TSC_AUX), 1);

        b.load(&mut hw);
        assert_eq!(hw.read(msr::IA32_LSTAR), 0, "B does not see A's LSTAR");
        assert_eq!(hw.read(msr::IA32_TSC_AUX), 0);
        guest_wrmsr(&mut hw, msr::IA32_LSTAR, 0x40_3000);
        b.put(&mut hw);

        a.load(&mut hw);
        assert_eq!(hw.read(msr::IA32_LSTAR), 0x20_2000, "A gets its own back");
        assert_eq!(hw.read(msr::IA32_TSC_AUX), 0xa);
        a.put(&mut hw);
        assert_eq!(hw.read(msr::IA32_LSTAR), host_lstar);
        assert_eq!(b.guest(&hw).lstar, 0x40_3000);
    }

    /// hv-app's way today: one VM after the other, the first one never
    /// unbound. The second still starts from its own (reset) values.
    #[test]
    fn a_later_vcpu_does_not_inherit_a_never_unbound_one() {
        let mut hw = FakeMsrs::new();
        {
            let mut a = MsrSwitch::new(&VMX_SET).unwrap();
            a.load(&mut hw);
            guest_wrmsr(&mut hw, msr::IA32_STAR, 0x001b_0008_0000_0000);
            guest_wrmsr(&mut hw, msr::IA32_FMASK, 0x4_7700);
        }
        let mut b = MsrSwitch::new(&VMX_SET).unwrap();
        b.load(&mut hw);
        assert_eq!(hw.read(msr::IA32_STAR), 0);
        assert_eq!(hw.read(msr::IA32_FMASK), 0);
    }

    #[test]
    fn values_set_while_loaded_reach_the_processor_at_the_next_entry() {
        let mut hw = FakeMsrs::new();
        let mut s = MsrSwitch::new(&[msr::IA32_TSC_AUX]).unwrap();
        s.load(&mut hw);
        s.set_guest(SyscallMsrs {
            tsc_aux: 7,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.guest(&hw).tsc_aux, 7, "the new value, not the stale one");
        s.load(&mut hw);
        assert_eq!(hw.read(msr::IA32_TSC_AUX), 7);
        // Only the switched MSR is touched.
        assert_eq!(hw.writes, [(msr::IA32_TSC_AUX, 7)]);
        s.put(&mut hw);
        assert_eq!(hw.read(msr::IA32_TSC_AUX), 0);
    }
}
