//! SMP bring-up: the BSP finds the CPUs in the ACPI MADT and wakes each
//! application processor (AP) with INIT-SIPI-SIPI; each AP loads its own
//! GDT, TSS and IST stacks, the shared IDT and its per-CPU data, reports
//! itself online and parks (`cli; hlt`) until there is work for it.
//!
//! The BSP prepares everything an AP needs before waking it (stack, IST
//! stacks, GDT/TSS, `PerCpu`), so the AP allocates nothing. APs start one
//! at a time; the BSP waits for each with a time limit and goes on without
//! it if it does not come. Its memory is then left allocated: it may still
//! wake up late, and it would use it.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};

use hv_app::acpi::{self, Madt};
use hv_app::apic::{self, ApStart, StartTimings};
use hv_app::memory::{FRAME_SIZE, MAX_RANGES, PhysRange, RangeSet, boot_info_ranges};
use hv_app::multiboot::{BootInfo, MemoryKind, MemoryRegion};
use hv_app::percpu::{IA32_GS_BASE, PerCpu, initial_apic_id};
use hv_app::smp_plan::{CpuPlan, PREFERRED_TRAMPOLINE_PAGE, choose_trampoline_page, plan_cpus};
use hv_app::{Error, Result};

use crate::ap_boot::{self, AP_CR0, AP_CR3, AP_CR4, AP_EFER, AP_STACK_TOPS, STACK_SLOTS};
use crate::lapic::{self, XApic};
use crate::phys::{IDENTITY_MAP_END, IdentityMapped};
use crate::tsc::TscClock;
use crate::{cpu, cpu_local, gdt, mem, pio, trap};

/// Frames of each AP's stack (32 KiB).
const AP_STACK_FRAMES: usize = 8;
/// `IA32_EFER` (AMD APM vol. 2 section 3.1.7).
const IA32_EFER: u32 = 0xc000_0080;
/// EFER.LME: long mode enable.
const EFER_LME: u64 = 1 << 8;
/// EFER.NXE: no-execute enable.
const EFER_NXE: u64 = 1 << 11;
/// CR0.PE | CR0.PG: what the APs' 32-bit code needs from the CR0 it loads.
const CR0_PE_PG: u64 = (1 << 0) | (1 << 31);

/// What the BSP hands one AP: found by the AP through its APIC ID.
struct ApSlot {
    /// hv-app's number for it.
    cpu_id: u32,
    /// Its per-CPU data (leaked, never freed).
    per_cpu: &'static PerCpu,
    /// Its GDT and TSS (leaked, never freed).
    tables: *mut gdt::CpuTables,
    /// Base of its three IST stacks ([`gdt::IST_STACKS_BYTES`]).
    ist_base: u64,
    /// Set by the AP once it runs on its own tables.
    online: AtomicBool,
}

/// The slot of each AP, by APIC ID (null: not started by hv-app).
static AP_SLOTS: [AtomicPtr<ApSlot>; STACK_SLOTS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; STACK_SLOTS];

/// CPUs online, the BSP included.
static ONLINE: AtomicU32 = AtomicU32::new(1);

/// Set once an AP has logged that SVM stays off on the APs.
static SVM_NOTE_LOGGED: AtomicBool = AtomicBool::new(false);

/// How many CPUs are online (the BSP included).
pub fn online_cpus() -> u32 {
    ONLINE.load(Ordering::Acquire)
}

/// Finds the CPUs and brings up every AP; logs `SMP: <k> of <n> CPUs
/// online`. Never fails: a machine whose APs cannot be started runs on the
/// BSP alone, with the reason logged. Call on the BSP after the heap,
/// per-CPU data and IDT are up, before anything else runs on the APs.
pub fn start_aps(boot: &BootInfo, mem: &IdentityMapped) {
    let bsp_apic_id =
        cpu_local::current().map_or_else(|| initial_apic_id(cpu::cpuid(1)[1]), |p| p.apic_id);
    let madt = match acpi::find_madt(mem) {
        Ok((rsdp, madt)) => {
            log::info!(
                "ACPI: RSDP at {:#x} (revision {}, {}), MADT: {} processor entries, \
                 local APIC at {:#x}",
                rsdp.addr,
                rsdp.revision,
                if rsdp.xsdt.is_some() { "XSDT" } else { "RSDT" },
                madt.cpus.len(),
                madt.local_apic_addr
            );
            madt
        }
        Err(e) => {
            log::warn!("SMP: no usable ACPI MADT ({e}); running on the BSP only");
            log::info!("SMP: 1 of 1 CPUs online");
            return;
        }
    };
    let plan = plan_cpus(&madt.enabled_apic_ids(), bsp_apic_id);
    if !plan.bsp_listed {
        log::warn!("SMP: the BSP (APIC ID {bsp_apic_id}) is not among the MADT's enabled CPUs");
    }
    for (id, why) in &plan.skipped {
        log::warn!("SMP: not starting the CPU with APIC ID {id}: {why}");
    }
    if !plan.aps.is_empty()
        && let Err(e) = bring_up(boot, mem, &madt, &plan)
    {
        log::error!("SMP: cannot start the APs: {e}");
    }
    log::info!("SMP: {} of {} CPUs online", online_cpus(), plan.total);
}

/// Sets up the local APIC, the trampoline and the clock, then starts the
/// APs of `plan` one by one.
fn bring_up(boot: &BootInfo, mem: &IdentityMapped, madt: &Madt, plan: &CpuPlan) -> Result {
    let base = lapic::apic_base();
    let apic_page = base.xapic_base()?;
    if apic_page != madt.local_apic_addr {
        log::warn!(
            "SMP: the MADT puts the local APIC at {:#x}, IA32_APIC_BASE at {apic_page:#x}; \
             using the MSR",
            madt.local_apic_addr
        );
    }
    if apic_page + apic::APIC_MMIO_SIZE > IDENTITY_MAP_END {
        return Err(Error::Unsupported(
            "the local APIC page is above 4 GiB (outside the identity map)",
        ));
    }
    // Not touching the APIC at all if its mapping is not the expected one.
    let leaf = lapic::map_uncacheable(apic_page)?;
    log::debug!(
        "local APIC page {apic_page:#x}: entry {:#x} at {:#x} ({} KiB page), uncacheable",
        leaf.entry,
        leaf.entry_addr,
        leaf.page_size >> 10
    );
    // SAFETY: the xAPIC page of this CPU (enabled, not x2APIC, checked
    // above), identity mapped and now uncacheable; only the BSP sends IPIs.
    let mut apic = unsafe { XApic::new(apic_page) };
    if apic.software_enable() {
        log::debug!("local APIC software-enabled (SVR)");
    }
    log::debug!(
        "local APIC: ID {}, version {:#x}, BSP flag {}",
        apic.id(),
        apic.version(),
        base.is_bsp()
    );

    let page = trampoline_page(boot, mem)?;
    // SAFETY: `trampoline_page` found a page of RAM below 1 MiB that the
    // memory map calls available and the loader's data does not touch; the
    // frame allocator never hands out memory below 1 MiB, so it is ours.
    unsafe { ap_boot::install(page)? };
    let vector = apic::sipi_vector(page)?;

    let mut clock = TscClock::calibrate().unwrap_or_else(|e| {
        log::warn!("SMP: {e}; assuming a 4 GHz TSC (delays are then at least as long as needed)");
        TscClock::fallback()
    });
    log::info!(
        "SMP: {} CPUs in the MADT, starting {} AP(s) from {page:#x} (STARTUP vector {vector:#04x}), \
         TSC {} MHz",
        plan.total,
        plan.aps.len(),
        clock.hz() / 1_000_000
    );

    set_boot_state()?;
    let timings = StartTimings::STANDARD;
    for (cpu_id, &apic_id) in (1u32..).zip(plan.aps.iter()) {
        let slot = match prepare(cpu_id, apic_id) {
            Ok(slot) => slot,
            Err(e) => {
                log::error!("SMP: CPU {cpu_id} (APIC ID {apic_id}): {e}");
                continue;
            }
        };
        let outcome = apic::start_ap(&mut apic, &mut clock, apic_id, vector, &timings, || {
            slot.online.load(Ordering::Acquire)
        });
        match outcome {
            ApStart::Online { waited_us } => {
                log::debug!("SMP: CPU {cpu_id} answered {waited_us} us after the STARTUP IPIs")
            }
            ApStart::NoResponse => log::error!(
                "SMP: CPU {cpu_id} (APIC ID {apic_id}) did not come up within {} ms",
                timings.online_timeout_us / 1000
            ),
            ApStart::IpiStuck { ipi } => log::error!(
                "SMP: CPU {cpu_id} (APIC ID {apic_id}) did not come up: the {ipi} IPI \
                 was not accepted (ESR {:#x})",
                apic.error_status()
            ),
        }
    }
    Ok(())
}

/// The trampoline's page: [`PREFERRED_TRAMPOLINE_PAGE`] unless the memory
/// map or the loader's data say otherwise.
fn trampoline_page(boot: &BootInfo, mem: &IdentityMapped) -> Result<u64> {
    let reserved: RangeSet<MAX_RANGES> = boot_info_ranges(boot, mem)?;
    let len = ap_boot::trampoline_len();
    if boot.memory_map.is_some() {
        choose_trampoline_page(
            boot.memory_map(mem),
            reserved.as_slice(),
            PREFERRED_TRAMPOLINE_PAGE,
            len,
        )
    } else {
        // No map: the loader's mem_lower, contiguous from 0.
        let lower = boot.memory.map_or(0, |m| u64::from(m.lower_kib) << 10);
        let region = MemoryRegion {
            base: 0,
            length: lower,
            kind: MemoryKind::Available,
        };
        choose_trampoline_page(
            [Ok(region)],
            reserved.as_slice(),
            PREFERRED_TRAMPOLINE_PAGE,
            len,
        )
    }
}

/// Stores the BSP's CR3, CR0, CR4 and EFER bits for the APs' boot path.
fn set_boot_state() -> Result {
    let cr = cpu::control_regs();
    let cr3 = u32::try_from(cr.cr3).map_err(|_| {
        Error::Unsupported(
            "the BSP's page tables are above 4 GiB (the AP path loads CR3 in 32-bit mode)",
        )
    })?;
    if cr.cr0 & CR0_PE_PG != CR0_PE_PG {
        return Err(Error::Unsupported("the BSP runs without paging"));
    }
    // SAFETY: IA32_EFER exists on every x86_64 CPU.
    let efer = unsafe { cpu::rdmsr(IA32_EFER) };
    AP_CR3.store(cr3, Ordering::Release);
    AP_CR0.store(cr.cr0 as u32, Ordering::Release);
    AP_EFER.store((EFER_LME | (efer & EFER_NXE)) as u32, Ordering::Release);
    AP_CR4.store(cr.cr4, Ordering::Release);
    Ok(())
}

/// Allocates what the AP with `apic_id` needs (stack, IST stacks, GDT and
/// TSS, per-CPU data) and publishes it for the AP: its slot, and its stack
/// top for the trampoline.
fn prepare(cpu_id: u32, apic_id: u8) -> Result<&'static ApSlot> {
    let stack = alloc(AP_STACK_FRAMES)?;
    let ist_frames = gdt::IST_STACKS_BYTES.div_ceil(FRAME_SIZE as usize);
    let ist_base = match alloc(ist_frames) {
        Ok(base) => base,
        Err(e) => {
            let _ = mem::dealloc_frames(stack, AP_STACK_FRAMES);
            return Err(e);
        }
    };
    let per_cpu = Box::leak(Box::new(PerCpu::new(cpu_id, u32::from(apic_id))));
    per_cpu.self_addr = core::ptr::from_mut(per_cpu) as u64;
    let tables = Box::into_raw(Box::new(gdt::CpuTables::new()));
    let slot: &'static ApSlot = Box::leak(Box::new(ApSlot {
        cpu_id,
        per_cpu,
        tables,
        ist_base,
        online: AtomicBool::new(false),
    }));
    let index = usize::from(apic_id);
    AP_SLOTS[index].store(core::ptr::from_ref(slot).cast_mut(), Ordering::Release);
    let top = stack + AP_STACK_FRAMES as u64 * FRAME_SIZE;
    AP_STACK_TOPS[index].store(top, Ordering::Release);
    log::debug!(
        "SMP: CPU {cpu_id} (APIC ID {apic_id}): stack {:#x}..{top:#x}, IST stacks at {ist_base:#x}, \
         per-CPU data at {:#x}",
        stack,
        per_cpu.self_addr
    );
    Ok(slot)
}

/// `count` zeroed frames.
fn alloc(count: usize) -> Result<u64> {
    let bytes = count as u64 * FRAME_SIZE;
    let addr = mem::alloc_frames(count, 1).ok_or(Error::OutOfMemory { bytes })?;
    let range = PhysRange::with_len(addr, bytes)?;
    // SAFETY: freshly allocated, identity-mapped frames that nothing else
    // uses.
    unsafe { core::ptr::write_bytes(range.start as *mut u8, 0, bytes as usize) };
    Ok(addr)
}

/// Turning SVM on on an AP: not done yet. The per-CPU enable
/// (`x86_vcpu::X86PerCpu`: EFER.SVME and the host save area) is driven by
/// the VM runner, which runs VMs on the BSP only.
fn enable_svm_on_ap() -> Result {
    Err(Error::Unsupported(
        "SVM enable on APs: later (the VM runner enables SVM on the BSP only)",
    ))
}

/// The first Rust code of an AP, on its own stack, called by the
/// trampoline with its initial APIC ID.
pub extern "C" fn ap_entry(apic_id: u32) -> ! {
    let slot = AP_SLOTS
        .get(apic_id as usize)
        .map_or(core::ptr::null_mut(), |s| s.load(Ordering::Acquire));
    if slot.is_null() {
        // Not a CPU hv-app started (the trampoline found a stack, so this
        // cannot happen unless the tables disagree): stay parked.
        pio::halt_forever();
    }
    // SAFETY: the BSP leaked the slot before starting this AP and never
    // frees or changes it; only `online` is shared, and it is atomic.
    let slot = unsafe { &*slot };
    // SAFETY: the tables and IST stacks were allocated for this AP alone
    // and are never freed.
    unsafe { gdt::init_ap(slot.tables, slot.ist_base) };
    trap::load();
    // SAFETY: IA32_GS_BASE exists on every x86_64 CPU; the value is the
    // canonical address of this AP's leaked PerCpu (after the GDT load,
    // which nulls GS and may clear its base).
    unsafe { cpu::wrmsr(IA32_GS_BASE, slot.per_cpu.self_addr) };
    let cpu_id = slot.cpu_id;
    if !cpu_local::current().is_some_and(|p| core::ptr::eq(p, slot.per_cpu)) {
        log::error!("CPU {cpu_id}: per-CPU data: GS base does not lead back to its data");
        pio::halt_forever();
    }
    // AMD SVM: CPUID 8000_0001h ECX bit 2.
    if cpu::cpuid(0x8000_0001)[2] & (1 << 2) != 0
        && let Err(e) = enable_svm_on_ap()
    {
        // Once at info level, not once per AP.
        if SVM_NOTE_LOGGED.swap(true, Ordering::AcqRel) {
            log::debug!("CPU {cpu_id}: {e}");
        } else {
            log::info!("CPU {cpu_id}: {e}");
        }
    }
    log::info!("CPU {cpu_id} online (APIC ID {apic_id})");
    ONLINE.fetch_add(1, Ordering::AcqRel);
    slot.online.store(true, Ordering::Release);
    // Parked, interrupts off, until there is work for APs.
    pio::halt_forever()
}
