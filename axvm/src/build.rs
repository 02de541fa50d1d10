//! Building the parts of a VM from its configuration: the address space,
//! the loaded image with its boot information, and the devices.

use alloc::{boxed::Box, format, string::String, sync::Arc, vec::Vec};

use axaddrspace::{
    AxMmHal, DynAddrSpace, GuestPhysAddr, GuestPhysAddrRange, MappingFlags, NestedPagingKind,
};
use axdevice::{
    Clock, DebugExit, DeviceSet, Hpet, IoApic, PIC_MASTER_PORT, Pic8259, PowerOff, RamDevice,
    UART_PORTS, Uart16550, UartBackend,
};
use axvmconfig::{BootProtocol as ConfigBoot, DeviceBase, DeviceKind, MapKind, MemFlags, VmConfig};
use x86_vcpu::{BootProtocol, GuestState};

use crate::loader::{self, GuestMemory, LoadPlan, MultibootInfoBuilder};
use crate::{Error, Result};

/// Where the multiboot information goes when that spot is free: the
/// conventional low-memory area below the EBDA that boot loaders use.
pub const MULTIBOOT_INFO_GPA: usize = 0x9000;

/// Size of the boot stack a multiboot kernel gets (ESP points to its top).
/// The Multiboot specification leaves ESP undefined, but kernels such as
/// NimbOS push (`push`/`retf` into long mode) before they load a stack of
/// their own, as boot loaders leave ESP in low RAM.
pub const MULTIBOOT_STACK_SIZE: u64 = 0x1000;

/// The boot loader name given to multiboot kernels.
pub const BOOT_LOADER_NAME: &str = "axhv";

const PAGE: u64 = 0x1000;
const FOUR_GIB: u64 = 1 << 32;

/// How the guest was loaded and how its first vCPU starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSetup {
    /// Guest physical address of the first instruction.
    pub entry: GuestPhysAddr,
    /// Lowest and highest-plus-one guest physical address the image
    /// occupies (BSS included).
    pub image_extent: (GuestPhysAddr, GuestPhysAddr),
    /// Where the multiboot information structure was written (the value of
    /// EBX at entry), for a multiboot kernel.
    pub multiboot_info: Option<GuestPhysAddr>,
    /// The register state the vCPUs start with (given to their setup).
    pub protocol: BootProtocol,
}

/// The devices built from a configuration, with the handles the VM keeps.
pub(crate) struct Devices {
    pub set: DeviceSet,
    pub uart: Option<Arc<Uart16550>>,
    pub debug_exits: Vec<Arc<DebugExit>>,
    pub power_offs: Vec<Arc<PowerOff>>,
    pub pic: Option<Arc<Pic8259>>,
}

/// The nested-paging rights of a configured region.
pub(crate) fn mapping_flags(f: MemFlags) -> MappingFlags {
    let mut m = MappingFlags::empty();
    for (from, to) in [
        (MemFlags::READ, MappingFlags::READ),
        (MemFlags::WRITE, MappingFlags::WRITE),
        (MemFlags::EXEC, MappingFlags::EXECUTE),
        (MemFlags::DEVICE, MappingFlags::DEVICE),
        (MemFlags::UNCACHED, MappingFlags::UNCACHED),
    ] {
        if f.contains(from) {
            m |= to;
        }
    }
    m
}

fn gpa(a: u64) -> GuestPhysAddr {
    GuestPhysAddr::from_usize(a as usize)
}

/// An address space of format `nested` holding every RAM region of
/// `config`: `alloc` regions are allocated and mapped now, `alloc_lazy` ones
/// on first touch, `reserved` ones are left unmapped. `identical` and
/// `linear` regions map host memory the VM does not own, which needs the
/// caller's promise that the VM may have it: not supported yet.
pub(crate) fn address_space<H: AxMmHal>(
    config: &VmConfig,
    nested: NestedPagingKind,
) -> Result<DynAddrSpace<H>> {
    let limit = axaddrspace::npt::GPA_LIMIT;
    let mut aspace = DynAddrSpace::new(nested, GuestPhysAddrRange::from_start_size(gpa(0), limit))?;
    for (i, r) in config.memory.iter().enumerate() {
        let flags = mapping_flags(r.flags);
        let size = r.size as usize;
        match r.map {
            MapKind::Alloc => aspace.map_alloc(gpa(r.gpa), size, flags, true)?,
            MapKind::AllocLazy => aspace.map_alloc(gpa(r.gpa), size, flags, false)?,
            MapKind::Reserved => {}
            MapKind::Identical | MapKind::Linear { .. } => {
                return Err(Error::config(
                    format!("memory[{i}].map"),
                    format!(
                        "map = \"{}\" (host memory mapped into the guest) is not supported yet; use \"alloc\" or \"alloc_lazy\"",
                        r.map.as_str()
                    ),
                ));
            }
        }
    }
    Ok(aspace)
}

/// Moves every segment (and the entry) of `plan` so that its lowest segment
/// starts at `load_addr`.
fn relocate(plan: &mut LoadPlan, load_addr: u64) -> Result {
    let Some((start, _)) = plan.extent() else {
        return Ok(());
    };
    let delta = load_addr as i128 - start.as_usize() as i128;
    let moved = |a: GuestPhysAddr| -> Result<GuestPhysAddr> {
        let v = a.as_usize() as i128 + delta;
        usize::try_from(v)
            .map(GuestPhysAddr::from_usize)
            .map_err(|_| {
                Error::config(
                    "kernel.load_addr",
                    "moves the image out of the address space",
                )
            })
    };
    for s in &mut plan.segments {
        s.gpa = moved(s.gpa)?;
    }
    plan.entry = moved(plan.entry)?;
    Ok(())
}

/// Whether `[a, a + len)` overlaps a segment of `plan`.
fn overlaps_image(plan: &LoadPlan, a: u64, len: u64) -> bool {
    plan.segments.iter().any(|s| {
        let (s0, s1) = (s.gpa.as_usize() as u64, s.end().as_usize() as u64);
        a < s1 && s0 < a.saturating_add(len)
    })
}

/// A page-aligned spot of `len` bytes of RAM below 4 GiB that no segment of
/// `plan` uses: [`MULTIBOOT_INFO_GPA`] if free, else the first fitting spot
/// at the start of a RAM region (never page 0) or right after a segment.
fn place_info(config: &VmConfig, plan: &LoadPlan, len: u64) -> Option<u64> {
    let mut candidates: Vec<u64> = alloc::vec![MULTIBOOT_INFO_GPA as u64];
    candidates.extend(config.ram_regions().map(|r| r.gpa.max(PAGE)));
    candidates.extend(
        plan.segments
            .iter()
            .map(|s| (s.end().as_usize() as u64).next_multiple_of(PAGE)),
    );
    candidates.into_iter().find(|&a| {
        a.checked_add(len).is_some_and(|end| end <= FOUR_GIB)
            && config.is_ram_range(a, len)
            && !overlaps_image(plan, a, len)
    })
}

/// The top of a [`MULTIBOOT_STACK_SIZE`] boot stack in RAM below 4 GiB that
/// neither the image nor the information area `[info, info + info_len)`
/// uses: right below the information area when free, else right after it,
/// else the first free spot [`place_info`] would pick.
fn place_stack(config: &VmConfig, plan: &LoadPlan, info: u64, info_len: u64) -> Option<u64> {
    let info_end = (info + info_len).next_multiple_of(PAGE);
    let free = |a: u64| {
        a >= PAGE
            && a.checked_add(MULTIBOOT_STACK_SIZE)
                .is_some_and(|end| end <= FOUR_GIB)
            && config.is_ram_range(a, MULTIBOOT_STACK_SIZE)
            && !overlaps_image(plan, a, MULTIBOOT_STACK_SIZE)
            && (a + MULTIBOOT_STACK_SIZE <= info || info_end <= a)
    };
    let mut candidates: Vec<u64> = alloc::vec![info.saturating_sub(MULTIBOOT_STACK_SIZE), info_end];
    candidates.extend(config.ram_regions().map(|r| r.gpa.max(PAGE)));
    candidates.extend(
        plan.segments
            .iter()
            .map(|s| (s.end().as_usize() as u64).next_multiple_of(PAGE)),
    );
    candidates
        .into_iter()
        .find(|&a| free(a))
        .map(|a| a + MULTIBOOT_STACK_SIZE)
}

/// Loads `image` into `mem` as `config.kernel` says and returns how the
/// guest starts.
///
/// - `multiboot`: the image's Multiboot header (or ELF headers) place it;
///   `kernel.load_addr` moves it, `kernel.entry` replaces the entry. The
///   Multiboot information (memory map from the configured regions, command
///   line, boot loader name) is written to a free spot of low RAM
///   ([`MULTIBOOT_INFO_GPA`] when the image leaves it free); the vCPU
///   starts in 32-bit protected mode with EAX = `0x2BADB002`, EBX = its
///   address, and ESP at the top of a free [`MULTIBOOT_STACK_SIZE`] page of
///   low RAM (right below the information when free), for kernels that
///   push before they set up a stack.
/// - `raw`: the whole file at `kernel.load_addr`, entered at `kernel.entry`
///   (default: the load address) in 32-bit protected mode, paging off,
///   flat segments, general registers 0.
/// - `bzimage`, and any ramdisk: [`Error::Unsupported`].
pub(crate) fn load_image<M: GuestMemory + ?Sized>(
    config: &VmConfig,
    image: &[u8],
    mem: &mut M,
) -> Result<BootSetup> {
    if config.kernel.ramdisk.is_some() {
        return Err(Error::Unsupported(
            "kernel.ramdisk: loading a ramdisk (initrd or multiboot module) is not implemented yet",
        ));
    }
    match config.kernel.protocol {
        ConfigBoot::Multiboot => load_multiboot(config, image, mem),
        ConfigBoot::Raw => {
            let load = config
                .kernel
                .load_addr
                .ok_or_else(|| Error::config("kernel.load_addr", "required for protocol raw"))?;
            let entry = config.kernel.entry.unwrap_or(load);
            let plan = loader::plan_raw(image, gpa(load), gpa(entry))?;
            plan.apply(image, mem)?;
            let mut state = GuestState::multiboot(0, 0);
            state.regs.rax = 0;
            Ok(BootSetup {
                entry: plan.entry,
                image_extent: plan.extent().unwrap_or((plan.entry, plan.entry)),
                multiboot_info: None,
                protocol: BootProtocol::Custom(Box::new(state)),
            })
        }
        ConfigBoot::LinuxBzImage => Err(Error::Unsupported(
            "Linux bzImage boot (boot_params/e820) not implemented yet",
        )),
    }
}

fn load_multiboot<M: GuestMemory + ?Sized>(
    config: &VmConfig,
    image: &[u8],
    mem: &mut M,
) -> Result<BootSetup> {
    let mut plan = loader::plan_multiboot(image)?;
    if let Some(load) = config.kernel.load_addr {
        relocate(&mut plan, load)?;
    }
    if let Some(entry) = config.kernel.entry {
        plan.entry = gpa(entry);
    }
    if plan.entry.as_usize() as u64 >= FOUR_GIB {
        return Err(Error::AddressAbove4GiB {
            what: "multiboot entry",
            addr: plan.entry.as_usize() as u64,
        });
    }
    plan.apply(image, mem)?;

    let mut builder = MultibootInfoBuilder::new().boot_loader_name(BOOT_LOADER_NAME);
    for r in &config.memory {
        builder = if r.is_ram() {
            builder.ram(gpa(r.gpa), r.size as usize)
        } else {
            builder.reserved(gpa(r.gpa), r.size as usize)
        };
    }
    if let Some(cmdline) = &config.kernel.cmdline {
        builder = builder.cmdline(cmdline);
    }
    // The size does not depend on the (8-aligned) address: lay it out once
    // to learn it.
    let len = builder.build(gpa(MULTIBOOT_INFO_GPA as u64))?.bytes.len() as u64;
    let at = place_info(config, &plan, len).ok_or(Error::Unsupported(
        "no free RAM below 4 GiB for the multiboot information",
    ))?;
    let info = builder.build(gpa(at))?;
    let ebx = info.write_to(mem)?;
    let (lo, hi) = plan.extent().unwrap_or((plan.entry, plan.entry));
    let entry = u32::try_from(plan.entry.as_usize()).map_err(|_| Error::AddressAbove4GiB {
        what: "multiboot entry",
        addr: plan.entry.as_usize() as u64,
    })?;
    let mut state = GuestState::multiboot(entry, ebx);
    state.rsp = place_stack(config, &plan, at, len).unwrap_or(0);
    Ok(BootSetup {
        entry: plan.entry,
        image_extent: (lo, hi),
        multiboot_info: Some(info.gpa),
        protocol: BootProtocol::Custom(Box::new(state)),
    })
}

/// The emulated devices of `config`. A kind this crate does not emulate yet
/// is [`Error::DeviceNotEmulated`]; passed-through devices are
/// [`Error::Unsupported`]. An `hpet` needs `clock`.
pub(crate) fn devices(
    config: &VmConfig,
    console: &Arc<dyn UartBackend>,
    clock: Option<&Arc<dyn Clock>>,
) -> Result<Devices> {
    if !config.devices.passthrough.is_empty() {
        return Err(Error::Unsupported(
            "devices.passthrough: passing host devices through is not implemented yet",
        ));
    }
    let mut out = Devices {
        set: DeviceSet::new(),
        uart: None,
        debug_exits: Vec::new(),
        power_offs: Vec::new(),
        pic: None,
    };
    for (index, d) in config.devices.emulated.iter().enumerate() {
        let field = |f: &str| format!("devices.emulated[{index}].{f}");
        let wrong_space = || {
            Error::config(
                field(if d.kind.is_mmio() { "port" } else { "mmio" }),
                format!(
                    "a {} sits in {} space",
                    d.kind,
                    if d.kind.is_mmio() { "MMIO" } else { "port" }
                ),
            )
        };
        let size_must_be = |n: u64| -> Result {
            if d.size == n {
                Ok(())
            } else {
                Err(Error::config(
                    field("size"),
                    format!("a {} occupies exactly {n} ports, not {}", d.kind, d.size),
                ))
            }
        };
        match (d.kind, d.base) {
            (DeviceKind::Uart16550, DeviceBase::Port(port)) => {
                size_must_be(u64::from(UART_PORTS))?;
                if let Some(irq) = d.irq {
                    log::debug!(
                        "uart16550@{port:#x}: IRQ {irq} not wired yet (no interrupt controller)"
                    );
                }
                let uart = Arc::new(Uart16550::new(port, console.clone()));
                out.set.add_port(uart.clone())?;
                out.uart.get_or_insert(uart);
            }
            (DeviceKind::DebugExit, DeviceBase::Port(port)) => {
                let len = u16::try_from(d.size).map_err(|_| {
                    Error::config(field("size"), "a debug_exit spans at most 0xffff ports")
                })?;
                let dev = Arc::new(DebugExit::new(port, len));
                out.set.add_port(dev.clone())?;
                out.debug_exits.push(dev);
            }
            (DeviceKind::PowerOff, DeviceBase::Port(port)) => {
                size_must_be(2)?;
                let dev = Arc::new(PowerOff::new(port));
                out.set.add_port(dev.clone())?;
                out.power_offs.push(dev);
            }
            (DeviceKind::TestMmio, DeviceBase::Mmio(base)) => {
                let dev = RamDevice::new(gpa(base), d.size as usize)?;
                out.set.add_mmio(Arc::new(dev))?;
            }
            (DeviceKind::Hpet, DeviceBase::Mmio(base)) => {
                let Some(clock) = clock else {
                    return Err(Error::config(
                        field("kind"),
                        "an hpet needs a time source: build the VM with Vm::new_with_clock",
                    ));
                };
                if (d.size as usize) < Hpet::SIZE {
                    return Err(Error::config(
                        field("size"),
                        format!("an hpet needs at least {:#x} bytes", Hpet::SIZE),
                    ));
                }
                out.set
                    .add_mmio(Arc::new(Hpet::new(gpa(base), clock.clone())))?;
            }
            (DeviceKind::IoApic, DeviceBase::Mmio(base)) => {
                // The first I/O APIC gets ID 0; the local APICs are 0..vCPUs,
                // but the two ID spaces are separate on the APIC bus model
                // the guests see (they never program it).
                let dev = IoApic::new(gpa(base), 0);
                out.set.add_mmio(Arc::new(dev))?;
            }
            (DeviceKind::Pic8259, DeviceBase::Port(port)) => {
                if port != PIC_MASTER_PORT || out.pic.is_some() {
                    return Err(Error::config(
                        field("port"),
                        "the pic8259 pair sits at port 0x20 (master) and 0xa0 (slave), once",
                    ));
                }
                size_must_be(2)?;
                let pic = Arc::new(Pic8259::new());
                for dev in pic.port_devices() {
                    out.set.add_port(dev)?;
                }
                out.pic = Some(pic);
            }
            (
                DeviceKind::Uart16550
                | DeviceKind::DebugExit
                | DeviceKind::PowerOff
                | DeviceKind::Pic8259,
                DeviceBase::Mmio(_),
            )
            | (DeviceKind::TestMmio | DeviceKind::Hpet | DeviceKind::IoApic, DeviceBase::Port(_)) =>
            {
                return Err(wrong_space());
            }
            // Per vCPU: built by `lapics`.
            (DeviceKind::Lapic, _) => {}
            (kind, _) => return Err(Error::DeviceNotEmulated { index, kind }),
        }
    }
    Ok(out)
}

/// One virtual local APIC per vCPU if `config` has a `lapic` device (at
/// the architectural base 0xFEE0_0000; vCPU 0 is the BSP), none otherwise.
/// The APIC timer needs a clock.
pub(crate) fn lapics(config: &VmConfig, has_clock: bool) -> Result<Vec<x86_vlapic::VLocalApic>> {
    let Some(index) = config
        .devices
        .emulated
        .iter()
        .position(|d| d.kind == DeviceKind::Lapic)
    else {
        return Ok(Vec::new());
    };
    let field = format!("devices.emulated[{index}]");
    if config.devices.emulated[index].base != DeviceBase::Mmio(0xfee0_0000) {
        return Err(Error::config(
            format!("{field}.mmio"),
            "the local APIC sits at 0xfee00000 (its reset base)",
        ));
    }
    if !has_clock {
        return Err(Error::config(
            format!("{field}.kind"),
            "a lapic needs a time source: build the VM with Vm::new_with_clock",
        ));
    }
    (0..config.vcpus.count)
        .map(|id| {
            let cfg = x86_vlapic::VLocalApicConfig::new(id as u32, id == 0);
            Ok(x86_vlapic::VLocalApic::new(cfg)?)
        })
        .collect()
}

/// A one-line description of the devices, for the log.
pub(crate) fn describe(set: &DeviceSet) -> String {
    let mut s = String::new();
    for name in set
        .port_devices()
        .map(|d| d.name())
        .chain(set.mmio_devices().map(|d| d.name()))
        .chain(set.msr_devices().map(|d| d.name()))
    {
        if !s.is_empty() {
            s.push_str(", ");
        }
        s.push_str(name);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::Segment;

    #[test]
    fn flags_map_one_to_one() {
        assert_eq!(
            mapping_flags(MemFlags::RWX),
            MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE
        );
        assert_eq!(
            mapping_flags(MemFlags::READ | MemFlags::DEVICE | MemFlags::UNCACHED),
            MappingFlags::READ | MappingFlags::DEVICE | MappingFlags::UNCACHED
        );
        assert_eq!(mapping_flags(MemFlags::empty()), MappingFlags::empty());
    }

    fn plan(segments: &[(u64, usize)]) -> LoadPlan {
        LoadPlan {
            segments: segments
                .iter()
                .map(|&(a, len)| Segment {
                    gpa: gpa(a),
                    file_offset: 0,
                    file_len: 0,
                    mem_len: len,
                })
                .collect(),
            entry: gpa(segments[0].0),
            mb_flags: None,
        }
    }

    #[test]
    fn info_goes_to_0x9000_or_the_first_free_ram() {
        let c = VmConfig::new(1, "t", 16 << 20, "k", ConfigBoot::Multiboot);
        assert_eq!(
            place_info(&c, &plan(&[(0x20_0000, 0x1000)]), 0x200),
            Some(0x9000)
        );
        // Covering 0x9000 and 0x1000: right after the first segment.
        assert_eq!(
            place_info(&c, &plan(&[(0x1000, 0x9000), (0x2_0000, 0x100)]), 0x200),
            Some(0xa000)
        );
        // Everything below 16 MiB taken: nowhere.
        assert_eq!(place_info(&c, &plan(&[(0, 16 << 20)]), 0x200), None);
        // RAM only above 4 GiB: nowhere either.
        let mut high = c.clone();
        high.memory[0].gpa = 1 << 32;
        assert_eq!(place_info(&high, &plan(&[(1 << 32, 0x1000)]), 0x200), None);
    }

    #[test]
    fn relocation_moves_segments_and_entry() {
        let mut p = plan(&[(0x20_0000, 0x1000), (0x20_2000, 0x10)]);
        p.entry = gpa(0x20_0020);
        relocate(&mut p, 0x10_0000).unwrap();
        assert_eq!(p.segments[0].gpa, gpa(0x10_0000));
        assert_eq!(p.segments[1].gpa, gpa(0x10_2000));
        assert_eq!(p.entry, gpa(0x10_0020));
    }
}
