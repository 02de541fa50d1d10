//! The plan of SMP bring-up: which CPUs to start (from the MADT's local
//! APIC IDs) and where the real-mode trampoline goes (a free page of
//! conventional memory that a STARTUP IPI can point at).

use alloc::vec::Vec;

use crate::apic::{MIN_START_PAGE, START_PAGE_END};
use crate::memory::{FRAME_SIZE, MAX_RANGES, PhysRange, RangeSet};
use crate::multiboot::{MemoryKind, MemoryRegion};
use crate::{Error, Result};

/// Most CPUs hv-app brings up (the BSP included); more are reported and
/// left alone.
pub const MAX_CPUS: usize = 64;
/// Highest APIC ID an xAPIC IPI can address physically (0xFF is the
/// broadcast destination).
pub const XAPIC_MAX_ID: u32 = 0xfe;
/// The page the trampoline prefers (STARTUP vector 0x08), a customary
/// choice that QEMU/SeaBIOS and GRUB leave free.
pub const PREFERRED_TRAMPOLINE_PAGE: u64 = 0x8000;

/// Which CPUs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuPlan {
    /// CPUs the firmware reports as enabled, the BSP included (counted even
    /// if the firmware forgot it).
    pub total: usize,
    /// Whether the BSP's APIC ID is among the enabled MADT entries.
    pub bsp_listed: bool,
    /// APIC IDs of the APs to start, in table order.
    pub aps: Vec<u8>,
    /// Enabled CPUs that will not be started, with the reason.
    pub skipped: Vec<(u32, &'static str)>,
}

/// The plan for the enabled local APIC IDs `enabled` (each once, see
/// [`crate::acpi::Madt::enabled_apic_ids`]) when the BSP has
/// `bsp_apic_id`: every other ID up to [`XAPIC_MAX_ID`] becomes an AP to
/// start, at most [`MAX_CPUS`] CPUs in all.
pub fn plan_cpus(enabled: &[u32], bsp_apic_id: u32) -> CpuPlan {
    let bsp_listed = enabled.contains(&bsp_apic_id);
    let mut plan = CpuPlan {
        total: enabled.len() + usize::from(!bsp_listed),
        bsp_listed,
        aps: Vec::new(),
        skipped: Vec::new(),
    };
    for &id in enabled.iter().filter(|&&id| id != bsp_apic_id) {
        if id > XAPIC_MAX_ID {
            plan.skipped.push((
                id,
                "APIC ID above 254 needs x2APIC mode, which hv-app does not drive",
            ));
        } else if plan.aps.len() + 1 >= MAX_CPUS {
            plan.skipped
                .push((id, "more CPUs than hv-app's limit of 64"));
        } else {
            plan.aps.push(id as u8);
        }
    }
    plan
}

/// A page for the AP trampoline of `len` bytes: `preferred` if it is free,
/// else the lowest free one. Free means inside an available region of the
/// memory map, in no region of another kind, outside `reserved` (the boot
/// loader's data), and within `[MIN_START_PAGE, START_PAGE_END)` so that a
/// STARTUP vector can reach it. Fails with [`Error::OutOfMemory`] if no
/// page qualifies, or with the memory map's error.
pub fn choose_trampoline_page<I>(
    regions: I,
    reserved: &[PhysRange],
    preferred: u64,
    len: u64,
) -> Result<u64>
where
    I: IntoIterator<Item = Result<MemoryRegion>>,
{
    let span = len.max(1).next_multiple_of(FRAME_SIZE);
    let mut free = RangeSet::<MAX_RANGES>::new();
    let mut not_ram = RangeSet::<MAX_RANGES>::new();
    for region in regions {
        let region = region?;
        let end = region.end().ok_or(Error::RegionOverflow {
            base: region.base,
            length: region.length,
        })?;
        let r = PhysRange::new(region.base, end)?;
        if region.kind == MemoryKind::Available {
            free.insert(r)?;
        } else {
            not_ram.insert(r)?;
        }
    }
    for r in not_ram.as_slice() {
        free.remove(*r)?;
    }
    for r in reserved {
        free.remove(*r)?;
    }
    free.remove(PhysRange::new(0, MIN_START_PAGE)?)?;
    free.remove(PhysRange::new(START_PAGE_END, u64::MAX)?)?;
    let fits = |page: u64| {
        page % FRAME_SIZE == 0 && PhysRange::with_len(page, span).is_ok_and(|r| free.contains(&r))
    };
    if fits(preferred) {
        return Ok(preferred);
    }
    (MIN_START_PAGE..START_PAGE_END)
        .step_by(FRAME_SIZE as usize)
        .find(|&p| fits(p))
        .ok_or(Error::OutOfMemory { bytes: span })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(base: u64, end: u64, kind: MemoryKind) -> Result<MemoryRegion> {
        Ok(MemoryRegion {
            base,
            length: end - base,
            kind,
        })
    }

    /// QEMU's map under SeaBIOS with 256 MiB.
    fn qemu_map() -> [Result<MemoryRegion>; 4] {
        [
            region(0, 0x9_fc00, MemoryKind::Available),
            region(0x9_fc00, 0xa_0000, MemoryKind::Reserved(2)),
            region(0xf_0000, 0x10_0000, MemoryKind::Reserved(2)),
            region(0x10_0000, 0xffe_0000, MemoryKind::Available),
        ]
    }

    #[test]
    fn qemu_leaves_0x8000_free() {
        // QEMU's multiboot information at 0x9000 and 0x9500.
        let reserved = [
            PhysRange::new(0x9000, 0x90a8).unwrap(),
            PhysRange::new(0x9500, 0x9574).unwrap(),
        ];
        let page = choose_trampoline_page(qemu_map(), &reserved, 0x8000, 200).unwrap();
        assert_eq!(page, 0x8000);
    }

    #[test]
    fn a_busy_preferred_page_gives_the_lowest_free_one() {
        // The loader's data covers 0x1000-0x80ff.
        let reserved = [PhysRange::new(0x1000, 0x8100).unwrap()];
        let page = choose_trampoline_page(qemu_map(), &reserved, 0x8000, 200).unwrap();
        assert_eq!(page, 0x9000);
        // A two-page trampoline does not straddle a reserved byte.
        let reserved = [PhysRange::new(0x2000, 0x2001).unwrap()];
        let page = choose_trampoline_page(
            [region(0, 0x4000, MemoryKind::Available)],
            &reserved,
            0x1000,
            0x1001,
        );
        assert_res_eq!(page, Err::<u64, _>(Error::OutOfMemory { bytes: 0x2000 }));
        // A misaligned preference is not taken.
        let page = choose_trampoline_page(qemu_map(), &[], 0x8800, 200).unwrap();
        assert_eq!(page, 0x1000);
    }

    #[test]
    fn no_conventional_memory_is_an_error() {
        // Only a reserved region and RAM above 1 MiB.
        let map = [
            region(0, 0xa_0000, MemoryKind::Reserved(2)),
            region(0x10_0000, 0x200_0000, MemoryKind::Available),
        ];
        assert_res_eq!(
            choose_trampoline_page(map, &[], 0x8000, 4096),
            Err::<u64, _>(Error::OutOfMemory { bytes: 4096 })
        );
        // A reserved region overlapping RAM wins.
        let map = [
            region(0, 0x9_fc00, MemoryKind::Available),
            region(0x1000, 0x9_e000, MemoryKind::Reserved(2)),
        ];
        assert_eq!(
            choose_trampoline_page(map, &[], 0x8000, 4096).unwrap(),
            0x9_e000
        );
        // A broken memory map entry is passed on.
        let map = [Ok(MemoryRegion {
            base: u64::MAX,
            length: 2,
            kind: MemoryKind::Available,
        })];
        assert!(matches!(
            choose_trampoline_page(map, &[], 0x8000, 4096),
            Err(Error::RegionOverflow { .. })
        ));
    }

    #[test]
    fn plan_starts_every_other_enabled_cpu() {
        let plan = plan_cpus(&[0, 1, 2, 3], 0);
        assert_eq!(plan.total, 4);
        assert!(plan.bsp_listed);
        assert_eq!(plan.aps, [1, 2, 3]);
        assert!(plan.skipped.is_empty());
        // -smp 1: nothing to start.
        let plan = plan_cpus(&[0], 0);
        assert_eq!((plan.total, plan.aps.len()), (1, 0));
        // The BSP need not be first, nor listed.
        let plan = plan_cpus(&[4, 2], 2);
        assert_eq!((plan.total, plan.aps.as_slice()), (2, &[4u8][..]));
        let plan = plan_cpus(&[1, 2], 0);
        assert_eq!(plan.total, 3);
        assert!(!plan.bsp_listed);
        assert_eq!(plan.aps, [1, 2]);
    }

    #[test]
    fn plan_skips_x2apic_ids_and_caps_the_count() {
        let plan = plan_cpus(&[0, 255, 300, 7], 0);
        assert_eq!(plan.aps, [7]);
        assert_eq!(
            plan.skipped.iter().map(|s| s.0).collect::<Vec<_>>(),
            [255, 300]
        );
        let ids: Vec<u32> = (0..100).collect();
        let plan = plan_cpus(&ids, 0);
        assert_eq!(plan.total, 100);
        assert_eq!(plan.aps.len(), MAX_CPUS - 1);
        assert_eq!(plan.aps[62], 63);
        assert_eq!(plan.skipped.len(), 100 - MAX_CPUS);
        assert_eq!(plan.skipped[0], (64, "more CPUs than hv-app's limit of 64"));
    }
}
