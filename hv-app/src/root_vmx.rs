//! The decisions behind the Type-1.5 root VM on Intel VMX, kept apart from
//! the VMX instructions (`linux_entry::vmx` in the binary) so that they are
//! tested on the host: which controls the root VM runs with, the VMX
//! access rights of Linux's live segments, the 1:1 EPT entries, and how a
//! root VM's CR4 write, CPUID and XSETBV are answered.
//!
//! The root VM is Linux itself, resumed in VMX non-root operation. It runs
//! with as few exits as VMX allows: no interrupt or NMI exiting (Linux's
//! interrupts reach Linux's IDT directly), an all-zero MSR bitmap, no I/O
//! exiting, no CR0 mask, and a CR4 mask of VMXE only (VMX needs the bit in
//! the guest's CR4; the read shadow hides it, SDM 25.3 "Guest/Host Masks
//! and Read Shadows for CR0 and CR4"). Every instruction Linux may use
//! natively stays enabled (RDTSCP, INVPCID, XSAVES/XRSTORS, user wait and
//! pause), since with secondary controls active these raise #UD unless
//! their enable bit is set (SDM 26.3 "Changes to Instruction Behavior in
//! VMX Non-Root Operation").

use x86_vcpu::vmx::VmxCaps;
use x86_vcpu::vmx::controls::{
    EntryControls, ExitControls, ProcControls, SecondaryControls, adjust_controls, control_allowed,
    cr4,
};

use crate::Result;

/// The five VM-execution, VM-exit and VM-entry control words of the root
/// VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootControls {
    /// Pin-based controls: nothing wanted (no interrupt or NMI exiting).
    pub pin: u32,
    /// Primary processor-based controls: MSR bitmaps, secondary controls.
    pub proc: u32,
    /// Secondary controls: EPT plus every instruction-enable bit offered.
    pub proc2: u32,
    /// VM-exit controls: 64-bit host, save DR7/DEBUGCTL.
    pub exit: u32,
    /// VM-entry controls: IA-32e guest, load DR7/DEBUGCTL.
    pub entry: u32,
}

/// Primary controls whose exits the root VM's handler does not expect;
/// if the processor forces one of them on, the root VM cannot run.
const PROC_UNHANDLED: ProcControls = ProcControls::INVLPG_EXITING
    .union(ProcControls::RDTSC_EXITING)
    .union(ProcControls::RDPMC_EXITING)
    .union(ProcControls::MOV_DR_EXITING)
    .union(ProcControls::UNCOND_IO_EXITING)
    .union(ProcControls::USE_IO_BITMAPS)
    .union(ProcControls::MONITOR_EXITING)
    .union(ProcControls::PAUSE_EXITING)
    .union(ProcControls::HLT_EXITING)
    .union(ProcControls::MWAIT_EXITING);

/// Secondary controls that enable an instruction (without the bit it
/// raises #UD in the guest): set whenever the processor offers them.
const PROC2_ENABLES: SecondaryControls = SecondaryControls::ENABLE_RDTSCP
    .union(SecondaryControls::ENABLE_INVPCID)
    .union(SecondaryControls::ENABLE_XSAVES_XRSTORS)
    .union(SecondaryControls::ENABLE_USER_WAIT_PAUSE);

/// Computes the root VM's controls from the capability MSRs, or says which
/// one the processor lacks (EPT, MSR bitmaps, secondary controls, a 64-bit
/// host) or forces on (an exit the root VM does not handle).
pub fn root_controls(caps: &VmxCaps) -> Result<RootControls> {
    let pin = adjust_controls(caps.pin, 0, 0, "pin-based")?;
    let proc = adjust_controls(
        caps.proc,
        (ProcControls::USE_MSR_BITMAPS | ProcControls::ACTIVATE_SECONDARY_CONTROLS).bits(),
        PROC_UNHANDLED.bits(),
        "primary processor-based",
    )?;
    let mut want2 = SecondaryControls::ENABLE_EPT.bits();
    for bit in PROC2_ENABLES.iter() {
        if control_allowed(caps.proc2, bit.bits().trailing_zeros()) {
            want2 |= bit.bits();
        }
    }
    let proc2 = adjust_controls(
        caps.proc2,
        want2,
        (SecondaryControls::ENABLE_VPID | SecondaryControls::UNRESTRICTED_GUEST).bits(),
        "secondary processor-based",
    )?;
    let exit = adjust_controls(
        caps.exit,
        (ExitControls::HOST_ADDRESS_SPACE_SIZE | ExitControls::SAVE_DEBUG_CONTROLS).bits(),
        ExitControls::ACK_INTERRUPT_ON_EXIT.bits(),
        "VM-exit",
    )?;
    let entry = adjust_controls(
        caps.entry,
        (EntryControls::IA32E_MODE_GUEST | EntryControls::LOAD_DEBUG_CONTROLS).bits(),
        0,
        "VM-entry",
    )?;
    if !caps.ept_4level() || !caps.ept_wb() {
        return Err(crate::Error::Unsupported(
            "EPT without 4-level walks or write-back paging structures",
        ));
    }
    if caps.ept_vpid & EPT_CAP_1G == 0 {
        return Err(crate::Error::Unsupported(
            "EPT without 1 GiB pages (IA32_VMX_EPT_VPID_CAP bit 17)",
        ));
    }
    Ok(RootControls {
        pin,
        proc,
        proc2,
        exit,
        entry,
    })
}

/// `IA32_VMX_EPT_VPID_CAP` bit 17: EPT 1 GiB pages.
const EPT_CAP_1G: u64 = 1 << 17;

/// The primary controls of a root vCPU whose CPU Linux is offlining for a
/// guest VM: HLT (and MWAIT, where it may exit) now exit, so that Linux's
/// last halt with interrupts off hands the CPU over.
pub fn offered_proc(proc: u32, caps: &VmxCaps) -> u32 {
    let mut p = proc | ProcControls::HLT_EXITING.bits();
    if control_allowed(
        caps.proc,
        ProcControls::MWAIT_EXITING.bits().trailing_zeros(),
    ) {
        p |= ProcControls::MWAIT_EXITING.bits();
    }
    p
}

/// Whether a HLT or MWAIT (`mwait`) of the root VM on a CPU offered for a
/// guest VM is Linux's last instruction there (`play_dead` after the CPU
/// went offline): interrupts are off (RFLAGS.IF clear) and, for MWAIT,
/// ECX bit 0 ("treat interrupts as break events", SDM vol. 2 MWAIT) is
/// clear, so nothing could wake it. Linux's `intel_idle` also runs MWAIT
/// with interrupts off, but always with that bit set; its idle loop then
/// simply polls until the CPU is really offline.
pub fn is_play_dead(mwait: bool, rflags: u64, ecx: u64) -> bool {
    rflags & (1 << 9) == 0 && (!mwait || ecx & 1 == 0)
}

/// VMX access rights (SDM 25.4.1, table "Format of Access Rights") of a
/// segment whose descriptor attributes are `attrib` in the packed form
/// (descriptor bits 40-47 in bits 0-7, bits 52-55 in bits 8-11), loaded
/// with `selector`. A null selector is unusable (bit 16), except for CS
/// and TR, which the caller never passes null. Usable code and data
/// segments get the accessed bit, as the processor sets it on load.
pub fn access_rights(attrib: u16, selector: u16) -> u32 {
    if selector & !3 == 0 {
        // Unusable; keep the DPL of the selector's RPL (SS.DPL is the CPL).
        return (1 << 16) | (u32::from(selector & 3) << 5);
    }
    let low = u32::from(attrib & 0xff);
    let high = u32::from((attrib >> 8) & 0xf);
    let mut ar = low | (high << 12);
    if low & 0x10 != 0 {
        ar |= 1; // code or data segment: accessed
    }
    ar
}

/// EPT entry bits: read, write, execute.
const EPT_RWX: u64 = 0b111;
/// EPT leaf memory type write-back (bits 5:3 = 6).
const EPT_WB: u64 = 6 << 3;
/// EPT leaf "page size" (a 2 MiB or 1 GiB page).
const EPT_LARGE: u64 = 1 << 7;

/// An EPT entry pointing to the next-level table at `table_pa`.
pub const fn ept_table(table_pa: u64) -> u64 {
    (table_pa & 0x000f_ffff_ffff_f000) | EPT_RWX
}

/// A write-back EPT leaf mapping the large page at `gpa` (2 MiB or 1 GiB,
/// by the level it is stored at) to the same host address. With the
/// "ignore PAT" bit clear, Linux's own PAT still makes its MMIO mappings
/// uncacheable (SDM 29.3.7.2).
pub const fn ept_large_leaf(gpa: u64) -> u64 {
    gpa | EPT_RWX | EPT_WB | EPT_LARGE
}

/// The EPTP of a 4-level, write-back EPT at `pml4_pa`, no A/D flags.
pub const fn ept_pointer(pml4_pa: u64) -> u64 {
    (pml4_pa & 0x000f_ffff_ffff_f000) | 6 | (3 << 3)
}

/// Fills the root VM's EPT as the NPT is filled for SVM: entry 0 of
/// `pml4` points to `pdpt`; `pdpt` entry 0 points to `pd`, whose 2 MiB
/// pages map the first GiB except those touching
/// `[region, region + size)` (the hypervisor's memory); entries 1-511 map
/// 1 GiB pages 1:1.
pub fn fill_root_ept(
    pml4: &mut [u64; 512],
    pdpt: &mut [u64; 512],
    pd: &mut [u64; 512],
    pdpt_pa: u64,
    pd_pa: u64,
    region: u64,
    size: u64,
) {
    for (j, e) in pd.iter_mut().enumerate() {
        let gpa = (j as u64) << 21;
        let inside = gpa + (1 << 21) > region && gpa < region + size;
        *e = if inside { 0 } else { ept_large_leaf(gpa) };
    }
    pdpt[0] = ept_table(pd_pa);
    for (i, e) in pdpt.iter_mut().enumerate().skip(1) {
        *e = ept_large_leaf((i as u64) << 30);
    }
    pml4.fill(0);
    pml4[0] = ept_table(pdpt_pa);
}

/// A root VM's `mov cr4` that exited (it changes the masked VMXE bit from
/// its shadow): the (guest CR4, read shadow) to install, or `None` for #GP
/// — setting VMXE (VMX is hidden from Linux, CPUID says it has none) or a
/// bit the processor does not allow in VMX operation (`fixed1`).
pub fn root_cr4_write(value: u64, fixed0: u64, fixed1: u64) -> Option<(u64, u64)> {
    if value & cr4::VMXE != 0 {
        return None;
    }
    let guest = value | cr4::VMXE;
    if guest & !fixed1 != 0 || (guest & fixed0) != fixed0 {
        return None;
    }
    Some((guest, value))
}

/// CPUID as the root VM sees it: the processor's answer with the VMX bit
/// (leaf 1 ECX bit 5) cleared, so that Linux does not try to use VMX
/// itself. `r` is EAX, EBX, ECX, EDX.
pub fn root_cpuid(leaf: u32, mut r: [u32; 4]) -> [u32; 4] {
    if leaf == 1 {
        r[2] &= !(1 << 5);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use x86_vcpu::vmx::VmxBasic;

    /// Capability MSRs like Bochs's Skylake-X: TRUE controls, EPT with
    /// 4-level walks, WB, 2 MiB and 1 GiB pages.
    fn caps() -> VmxCaps {
        let any = |must: u32| (0xffff_ffffu64 << 32) | u64::from(must);
        VmxCaps {
            basic: VmxBasic::from_raw((1 << 55) | (6 << 50) | (0x1000 << 32) | 1),
            pin: any(0x16),
            proc: any(0x0401_e172 & !(1 << 15 | 1 << 16)),
            proc2: (0x0000_0000_07ff_ffffu64 << 32),
            exit: any(0x0003_6dfb & !(1 << 2)),
            entry: any(0x11fb & !(1 << 2)),
            ept_vpid: (1 << 6) | (1 << 14) | (1 << 16) | (1 << 17),
            cr0_fixed0: 0x8000_0021,
            cr0_fixed1: 0xffff_ffff,
            cr4_fixed0: 0x2000,
            cr4_fixed1: 0x003f_f7ff,
        }
    }

    #[test]
    fn controls_enable_ept_and_the_native_instructions() {
        let c = root_controls(&caps()).expect("controls");
        assert_eq!(c.proc & (1 << 28), 1 << 28, "MSR bitmaps");
        assert_eq!(c.proc & (1 << 31), 1 << 31, "secondary controls");
        assert_eq!(c.proc & (1 << 7), 0, "no HLT exiting");
        assert_eq!(c.proc & (1 << 24 | 1 << 25), 0, "no I/O exiting");
        // EPT, RDTSCP, INVPCID, XSAVES, user wait/pause; no VPID.
        assert_eq!(
            c.proc2,
            (1 << 1) | (1 << 3) | (1 << 12) | (1 << 20) | (1 << 26)
        );
        assert_eq!(c.pin & 1, 0, "no external-interrupt exiting");
        assert_eq!(c.exit & (1 << 9 | 1 << 2), 1 << 9 | 1 << 2);
        assert_eq!(c.exit & (1 << 15), 0);
        assert_eq!(c.entry & (1 << 9 | 1 << 2), 1 << 9 | 1 << 2);
    }

    #[test]
    fn controls_name_what_is_missing() {
        let mut c = caps();
        c.proc2 = 0; // no EPT allowed
        let e = root_controls(&c).expect_err("no EPT");
        assert!(format!("{e}").contains("secondary processor-based"), "{e}");
        let mut c = caps();
        c.proc |= 1 << 16; // CR3-store exiting forced? not in the list: fine
        c.proc |= 1 << 12; // RDTSC exiting forced: refused
        let e = root_controls(&c).expect_err("RDTSC exiting forced");
        assert!(format!("{e}").contains("bit 12"), "{e}");
        let mut c = caps();
        c.ept_vpid &= !(1 << 17);
        let e = root_controls(&c).expect_err("no 1 GiB pages");
        assert!(format!("{e}").contains("1 GiB"), "{e}");
    }

    #[test]
    fn offered_cpu_exits_on_hlt_and_mwait() {
        let c = caps();
        let p = root_controls(&c).expect("controls").proc;
        assert_eq!(offered_proc(p, &c) & (1 << 7 | 1 << 10), 1 << 7 | 1 << 10);
        let mut no_mwait = c;
        no_mwait.proc &= !(1 << (32 + 10));
        assert_eq!(offered_proc(p, &no_mwait) & (1 << 7 | 1 << 10), 1 << 7);
    }

    #[test]
    fn only_an_unwakeable_halt_hands_the_cpu_over() {
        // hlt_play_dead: HLT with IF = 0.
        assert!(is_play_dead(false, 0x2, 0));
        // default_idle: STI; HLT.
        assert!(!is_play_dead(false, 0x202, 0));
        // mwait_play_dead: MWAIT(hint, 0) with IF = 0.
        assert!(is_play_dead(true, 0x46, 0));
        // intel_idle: MWAIT(hint, 1) with IF = 0 wakes on interrupts.
        assert!(!is_play_dead(true, 0x46, 1));
        assert!(!is_play_dead(true, 0x246, 0));
    }

    #[test]
    fn access_rights_of_linux_segments() {
        // __KERNEL_CS 0x10: descriptor 0x00af9b000000ffff -> attrib 0xa9b.
        assert_eq!(access_rights(0xa9b, 0x10), 0xa09b);
        // __KERNEL_DS 0x18: 0x00cf93000000ffff; accessed bit forced on a
        // descriptor that lacks it (0x92 -> 0x93).
        assert_eq!(access_rights(0xc92, 0x18), 0xc093);
        // 64-bit busy TSS (type 11, present): no accessed bit added (S=0).
        assert_eq!(access_rights(0x08b, 0x40), 0x8b);
        // Null selectors: unusable, DPL from the RPL.
        assert_eq!(access_rights(0, 0), 1 << 16);
        assert_eq!(access_rights(0, 3), (1 << 16) | (3 << 5));
    }

    #[test]
    fn ept_leaves_tables_and_pointer() {
        assert_eq!(ept_large_leaf(0x4000_0000), 0x4000_0000 | 0xb7);
        assert_eq!(ept_table(0x1234_5000), 0x1234_5007);
        assert_eq!(ept_pointer(0x9000), 0x901e);
        let (mut l4, mut l3, mut l2) = ([1u64; 512], [0u64; 512], [0u64; 512]);
        fill_root_ept(
            &mut l4,
            &mut l3,
            &mut l2,
            0x3000,
            0x4000,
            0x2000_0000,
            0x1000_0000,
        );
        assert_eq!(l4[0], 0x3007);
        assert_eq!(l4[1], 0);
        assert_eq!(l3[0], 0x4007);
        assert_eq!(l3[3], (3 << 30) | 0xb7);
        assert_eq!(l2[0], 0xb7);
        assert_eq!(l2[255], (255 << 21) | 0xb7);
        // 0x2000_0000..0x3000_0000 is the hypervisor's: PD entries 256-383.
        assert_eq!(l2[256], 0);
        assert_eq!(l2[383], 0);
        assert_eq!(l2[384], (384 << 21) | 0xb7);
    }

    #[test]
    fn cr4_writes_keep_vmxe_hidden() {
        let (f0, f1) = (0x2000, 0x003f_f7ff);
        assert_eq!(root_cr4_write(0x3606f0, f0, f1), Some((0x3626f0, 0x3606f0)));
        assert_eq!(root_cr4_write(0x2000, f0, f1), None, "VMXE itself");
        assert_eq!(root_cr4_write(1 << 23, f0, f1), None, "beyond fixed1");
    }

    #[test]
    fn cpuid_hides_vmx_only() {
        assert_eq!(root_cpuid(1, [1, 2, 0xffff_ffff, 4]), [1, 2, !(1 << 5), 4]);
        assert_eq!(
            root_cpuid(7, [1, 2, 0xffff_ffff, 4]),
            [1, 2, 0xffff_ffff, 4]
        );
    }
}
