//! The rules a configuration must follow beyond its schema.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::error::{ConfigError, Error, Result};
use crate::schema::*;

/// Collects problems.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigError::new(field, reason));
    }
}

/// `[start, end)` in hex.
fn range(start: u64, end: u64) -> String {
    format!("[{start:#x}, {end:#x})")
}

fn aligned(x: u64) -> bool {
    x % PAGE_SIZE == 0
}

/// Port space or guest physical address space.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Space {
    Port,
    Mmio,
}

/// A range a device claims, for the overlap checks.
struct Claim {
    space: Space,
    start: u64,
    end: u64,
    /// `devices.emulated[2]`
    path: String,
    /// `uart16550`, or the passthrough name.
    what: String,
}

impl VmConfig {
    /// Checks the configuration and returns every problem found, in the order
    /// of the fields. An empty list means the configuration is valid.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut p = Problems::default();
        // The checks below compare regions and devices pairwise: bound their
        // numbers first, so that even a hostile blob is checked quickly.
        let counts = [
            ("memory", self.memory.len(), MAX_MEMORY_REGIONS),
            ("devices.emulated", self.devices.emulated.len(), MAX_DEVICES),
            (
                "devices.passthrough",
                self.devices.passthrough.len(),
                MAX_DEVICES,
            ),
        ];
        for (field, n, max) in counts {
            if n > max {
                p.push(
                    field,
                    format!("has {n} entries; at most {max} are supported"),
                );
            }
        }
        if !p.0.is_empty() {
            return p.0;
        }
        self.check_name(&mut p);
        self.check_vcpus(&mut p);
        self.check_memory(&mut p);
        self.check_kernel(&mut p);
        self.check_devices(&mut p);
        p.0
    }

    /// Checks the configuration: `Ok` when it is valid, else
    /// [`Error::Invalid`] with every problem found.
    pub fn validate(&self) -> Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(problems))
        }
    }

    /// Checks that a kernel image of `len` bytes fits in RAM at
    /// `kernel.load_addr` (when one is given), now that its size is known.
    pub fn check_kernel_size(&self, len: u64) -> Result<()> {
        match self.kernel.load_addr {
            Some(addr) => self.check_fits("kernel.image", "kernel.load_addr", addr, len),
            None => Ok(()),
        }
    }

    /// Checks that a ramdisk of `len` bytes fits in RAM at
    /// `kernel.ramdisk.load_addr` (when one is given), now that its size is
    /// known.
    pub fn check_ramdisk_size(&self, len: u64) -> Result<()> {
        match self.kernel.ramdisk.as_ref().and_then(|r| r.load_addr) {
            Some(addr) => {
                self.check_fits("kernel.ramdisk.path", "kernel.ramdisk.load_addr", addr, len)
            }
            None => Ok(()),
        }
    }

    fn check_fits(&self, field: &str, addr_field: &str, addr: u64, len: u64) -> Result<()> {
        if self.is_ram_range(addr, len) {
            return Ok(());
        }
        Err(Error::Invalid(alloc::vec![ConfigError::new(
            field,
            format!(
                "{len} bytes loaded at {addr_field} = {addr:#x} would span {}, which is not all RAM",
                range(addr, addr.saturating_add(len))
            ),
        )]))
    }

    fn check_name(&self, p: &mut Problems) {
        let name = &self.name;
        if name.is_empty() {
            p.push("name", "must not be empty");
        } else if name.len() > MAX_NAME_LEN {
            p.push(
                "name",
                format!("is {} bytes long; the limit is {MAX_NAME_LEN}", name.len()),
            );
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            p.push(
                "name",
                format!(
                    "\"{}\" may only contain ASCII letters, digits, `-`, `_` and `.`",
                    name.escape_debug()
                ),
            );
        }
    }

    fn check_vcpus(&self, p: &mut Problems) {
        let count = self.vcpus.count;
        if count == 0 {
            p.push("vcpus.count", "is 0; a VM needs at least one vCPU");
        } else if count > MAX_VCPUS {
            p.push(
                "vcpus.count",
                format!("is {count}; at most {MAX_VCPUS} vCPUs are supported"),
            );
        }
        if let Some(ids) = &self.vcpus.phys_cpu_affinity {
            if ids.len() != count {
                p.push(
                    "vcpus.phys_cpu_affinity",
                    format!(
                        "has {} entries for {count} vCPUs; give one physical CPU id per vCPU",
                        ids.len()
                    ),
                );
            }
            for (i, &id) in ids.iter().enumerate() {
                if id > MAX_PHYS_CPU_ID {
                    p.push(
                        format!("vcpus.phys_cpu_affinity[{i}]"),
                        format!(
                            "physical CPU {id} is beyond the highest supported id {MAX_PHYS_CPU_ID}"
                        ),
                    );
                }
            }
        }
    }

    fn check_memory(&self, p: &mut Problems) {
        if self.memory.is_empty() {
            p.push(
                "memory",
                "no memory regions; add at least one [[memory]] table",
            );
            return;
        }
        for (i, r) in self.memory.iter().enumerate() {
            let at = |f: &str| format!("memory[{i}].{f}");
            if r.size == 0 {
                p.push(at("size"), "is 0");
            } else if !aligned(r.size) {
                p.push(
                    at("size"),
                    format!("{:#x} is not a multiple of 4 KiB ({PAGE_SIZE:#x})", r.size),
                );
            }
            if !aligned(r.gpa) {
                p.push(at("gpa"), format!("{:#x} is not 4 KiB aligned", r.gpa));
            }
            match r.gpa.checked_add(r.size) {
                Some(end) if end <= GPA_LIMIT => {}
                _ => p.push(
                    format!("memory[{i}]"),
                    format!(
                        "gpa {:#x} + size {:#x} goes beyond the 48-bit guest physical address space ({GPA_LIMIT:#x})",
                        r.gpa, r.size
                    ),
                ),
            }
            if let MapKind::Linear { hpa } = r.map {
                if !aligned(hpa) {
                    p.push(at("hpa"), format!("{hpa:#x} is not 4 KiB aligned"));
                }
                match hpa.checked_add(r.size) {
                    Some(end) if end <= HPA_LIMIT => {}
                    _ => p.push(
                        at("hpa"),
                        format!(
                            "{hpa:#x} + size {:#x} goes beyond the 52-bit host physical address space",
                            r.size
                        ),
                    ),
                }
            }
            if r.is_ram() && !r.flags.contains(MemFlags::READ) {
                p.push(
                    at("flags"),
                    "lacks \"read\"; the guest could not use the region (use map = \"reserved\" for a hole)",
                );
            }
        }
        for (j, b) in self.memory.iter().enumerate() {
            for (i, a) in self.memory.iter().enumerate().take(j) {
                if a.size != 0 && b.size != 0 && a.gpa < b.end() && b.gpa < a.end() {
                    p.push(
                        format!("memory[{j}]"),
                        format!(
                            "{} overlaps memory[{i}] {}",
                            range(b.gpa, b.end()),
                            range(a.gpa, a.end())
                        ),
                    );
                }
            }
        }
        if self.ram_regions().next().is_none() {
            p.push("memory", "every region is reserved; the VM has no RAM");
        }
    }

    fn check_kernel(&self, p: &mut Problems) {
        let k = &self.kernel;
        if k.image.is_empty() {
            p.push("kernel.image", "must not be empty");
        }
        if k.protocol == BootProtocol::Raw && k.load_addr.is_none() {
            p.push(
                "kernel.load_addr",
                "is required with protocol = \"raw\" (a flat binary has no header saying where it goes)",
            );
        }
        if let Some(addr) = k.load_addr {
            if !self.is_ram_range(addr, 1) {
                p.push(
                    "kernel.load_addr",
                    format!("{addr:#x} is outside every RAM region"),
                );
            }
        }
        if let Some(entry) = k.entry {
            match self.ram_region_at(entry) {
                None => p.push(
                    "kernel.entry",
                    format!("{entry:#x} is outside every RAM region"),
                ),
                Some((i, r)) if !r.flags.contains(MemFlags::EXEC) => p.push(
                    "kernel.entry",
                    format!("{entry:#x} lies in memory[{i}], whose flags lack \"exec\""),
                ),
                Some(_) => {}
            }
        }
        if let Some(cmdline) = &k.cmdline {
            if cmdline.len() > MAX_CMDLINE_LEN {
                p.push(
                    "kernel.cmdline",
                    format!(
                        "is {} bytes long; the limit is {MAX_CMDLINE_LEN}",
                        cmdline.len()
                    ),
                );
            }
            if cmdline.contains('\0') {
                p.push("kernel.cmdline", "contains a NUL character");
            }
        }
        if let Some(rd) = &k.ramdisk {
            if k.protocol == BootProtocol::Raw {
                p.push(
                    "kernel.ramdisk",
                    "protocol = \"raw\" has no way to tell the guest about a ramdisk",
                );
            }
            if rd.path.is_empty() {
                p.push("kernel.ramdisk.path", "must not be empty");
            }
            if let Some(addr) = rd.load_addr {
                if !aligned(addr) {
                    p.push(
                        "kernel.ramdisk.load_addr",
                        format!("{addr:#x} is not 4 KiB aligned"),
                    );
                }
                if !self.is_ram_range(addr, 1) {
                    p.push(
                        "kernel.ramdisk.load_addr",
                        format!("{addr:#x} is outside every RAM region"),
                    );
                } else if k.load_addr == Some(addr) {
                    p.push(
                        "kernel.ramdisk.load_addr",
                        format!("{addr:#x} is also kernel.load_addr"),
                    );
                }
            }
        }
    }

    fn check_devices(&self, p: &mut Problems) {
        let mut claims: Vec<Claim> = Vec::new();
        let mut lapic: Option<usize> = None;
        for (i, d) in self.devices.emulated.iter().enumerate() {
            let path = format!("devices.emulated[{i}]");
            let (start, end) = d.range();
            let base_field = match d.base {
                DeviceBase::Port(_) => format!("{path}.port"),
                DeviceBase::Mmio(_) => format!("{path}.mmio"),
            };
            match (d.kind.is_mmio(), d.base) {
                (true, DeviceBase::Port(_)) => {
                    p.push(
                        &base_field,
                        format!("a {} is memory-mapped; give `mmio`, not `port`", d.kind),
                    );
                    // Its range means nothing: no further checks on it.
                    continue;
                }
                (false, DeviceBase::Mmio(_)) => {
                    p.push(
                        &base_field,
                        format!(
                            "a {} is reached through I/O ports; give `port`, not `mmio`",
                            d.kind
                        ),
                    );
                    continue;
                }
                _ => {}
            }
            if d.size == 0 {
                p.push(format!("{path}.size"), "is 0");
            }
            let space = match d.base {
                DeviceBase::Port(_) => {
                    if start.saturating_add(d.size) > PORT_LIMIT {
                        p.push(
                            format!("{path}.size"),
                            format!(
                                "ports {} run past the last I/O port 0xffff",
                                range(start, end)
                            ),
                        );
                    }
                    Space::Port
                }
                DeviceBase::Mmio(addr) => {
                    if !aligned(addr) {
                        p.push(
                            &base_field,
                            format!("{addr:#x} is not 4 KiB aligned (MMIO is trapped per page)"),
                        );
                    }
                    if addr.checked_add(d.size).is_none_or(|e| e > GPA_LIMIT) {
                        p.push(
                            format!("{path}.size"),
                            format!(
                                "mmio {addr:#x} + size {:#x} goes beyond the guest physical address space",
                                d.size
                            ),
                        );
                    }
                    self.check_not_ram(p, &base_field, start, end);
                    Space::Mmio
                }
            };
            if let Some(irq) = d.irq {
                if !d.kind.has_irq_line() {
                    p.push(
                        format!("{path}.irq"),
                        format!("a {} raises no interrupt through an IRQ line", d.kind),
                    );
                } else if irq > MAX_IRQ {
                    p.push(
                        format!("{path}.irq"),
                        format!("{irq} is beyond the last IOAPIC input {MAX_IRQ}"),
                    );
                }
            }
            if d.kind == DeviceKind::Lapic {
                if let Some(first) = lapic {
                    p.push(
                        path.clone(),
                        format!(
                            "a second lapic (the first is devices.emulated[{first}]); the local APIC is per vCPU, list it once"
                        ),
                    );
                }
                lapic.get_or_insert(i);
            }
            claims.push(Claim {
                space,
                start,
                end,
                what: String::from(d.kind.as_str()),
                path,
            });
        }
        for (i, d) in self.devices.passthrough.iter().enumerate() {
            let path = format!("devices.passthrough[{i}]");
            if d.name.is_empty() {
                p.push(format!("{path}.name"), "must not be empty");
            }
            match d.resource {
                PassthroughResource::Mmio { gpa, hpa, size } => {
                    if size == 0 {
                        p.push(format!("{path}.size"), "is 0");
                    } else if !aligned(size) {
                        p.push(
                            format!("{path}.size"),
                            format!("{size:#x} is not a multiple of 4 KiB ({PAGE_SIZE:#x})"),
                        );
                    }
                    if !aligned(gpa) {
                        p.push(
                            format!("{path}.gpa"),
                            format!("{gpa:#x} is not 4 KiB aligned"),
                        );
                    }
                    if !aligned(hpa) {
                        p.push(
                            format!("{path}.hpa"),
                            format!("{hpa:#x} is not 4 KiB aligned"),
                        );
                    }
                    if gpa.checked_add(size).is_none_or(|e| e > GPA_LIMIT) {
                        p.push(
                            format!("{path}.gpa"),
                            format!(
                                "{gpa:#x} + size {size:#x} goes beyond the guest physical address space"
                            ),
                        );
                    }
                    if hpa.checked_add(size).is_none_or(|e| e > HPA_LIMIT) {
                        p.push(
                            format!("{path}.hpa"),
                            format!(
                                "{hpa:#x} + size {size:#x} goes beyond the host physical address space"
                            ),
                        );
                    }
                    let end = gpa.saturating_add(size);
                    self.check_not_ram(p, &format!("{path}.gpa"), gpa, end);
                    claims.push(Claim {
                        space: Space::Mmio,
                        start: gpa,
                        end,
                        path,
                        what: d.name.clone(),
                    });
                }
                PassthroughResource::Ports { base, count } => {
                    let start = u64::from(base);
                    let end = start.saturating_add(count);
                    if count == 0 {
                        p.push(format!("{path}.size"), "is 0");
                    } else if end > PORT_LIMIT {
                        p.push(
                            format!("{path}.size"),
                            format!(
                                "ports {} run past the last I/O port 0xffff",
                                range(start, end)
                            ),
                        );
                    }
                    claims.push(Claim {
                        space: Space::Port,
                        start,
                        end,
                        path,
                        what: d.name.clone(),
                    });
                }
            }
        }
        for (j, b) in claims.iter().enumerate() {
            for a in claims.iter().take(j) {
                // Empty ranges are reported as such and overlap nothing.
                let overlap = a.space == b.space
                    && a.start < a.end
                    && b.start < b.end
                    && a.start < b.end
                    && b.start < a.end;
                if overlap {
                    let unit = match b.space {
                        Space::Port => "ports",
                        Space::Mmio => "mmio",
                    };
                    p.push(
                        b.path.clone(),
                        format!(
                            "{unit} {} overlap {} ({}) at {}",
                            range(b.start, b.end),
                            a.path,
                            a.what,
                            range(a.start, a.end)
                        ),
                    );
                }
            }
        }
    }

    /// A device's MMIO range must not overlap RAM (reserved regions are fine).
    fn check_not_ram(&self, p: &mut Problems, field: &str, start: u64, end: u64) {
        for (i, r) in self.memory.iter().enumerate() {
            if r.is_ram() && start < r.end() && r.gpa < end {
                p.push(
                    field,
                    format!(
                        "mmio {} overlaps RAM of memory[{i}] {}",
                        range(start, end),
                        range(r.gpa, r.end())
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn base() -> VmConfig {
        let mut c = VmConfig::new(1, "vm", 16 << 20, "guests/hello", BootProtocol::Multiboot);
        c.devices
            .emulated
            .push(EmulatedDevice::new(DeviceKind::Uart16550));
        c
    }

    /// The problems of `c`, as `field: reason` lines.
    fn problems(c: &VmConfig) -> Vec<String> {
        c.problems().iter().map(|e| format!("{e}")).collect()
    }

    fn region(gpa: u64, size: u64, map: MapKind) -> MemoryRegion {
        MemoryRegion {
            gpa,
            size,
            map,
            flags: MemFlags::RWX,
        }
    }

    #[test]
    fn entry_counts_are_bounded() {
        let mut c = base();
        let r = c.memory[0].clone();
        c.memory = vec![r; MAX_MEMORY_REGIONS + 1];
        c.devices.passthrough = vec![
            PassthroughDevice {
                name: "p".into(),
                resource: PassthroughResource::Ports { base: 0, count: 1 },
            };
            MAX_DEVICES + 1
        ];
        // Only the counts are reported, not thousands of overlaps.
        assert_eq!(
            problems(&c),
            [
                "memory: has 129 entries; at most 128 are supported",
                "devices.passthrough: has 129 entries; at most 128 are supported",
            ]
        );
    }

    #[test]
    fn base_is_valid() {
        assert_eq!(problems(&base()), Vec::<String>::new());
        assert!(base().validate().is_ok());
    }

    #[test]
    fn name_rules() {
        let mut c = base();
        c.name.clear();
        assert_eq!(problems(&c), ["name: must not be empty"]);
        c.name = "x".repeat(65);
        assert_eq!(problems(&c), ["name: is 65 bytes long; the limit is 64"]);
        c.name = "x".repeat(64);
        assert!(problems(&c).is_empty());
        c.name = "my vm".into();
        assert_eq!(
            problems(&c),
            ["name: \"my vm\" may only contain ASCII letters, digits, `-`, `_` and `.`"]
        );
    }

    #[test]
    fn vcpu_count_limits() {
        let mut c = base();
        c.vcpus.count = 0;
        assert_eq!(
            problems(&c),
            ["vcpus.count: is 0; a VM needs at least one vCPU"]
        );
        c.vcpus.count = 65;
        assert_eq!(
            problems(&c),
            ["vcpus.count: is 65; at most 64 vCPUs are supported"]
        );
        c.vcpus.count = 64;
        assert!(problems(&c).is_empty());
    }

    #[test]
    fn affinity_needs_one_valid_id_per_vcpu() {
        let mut c = base();
        c.vcpus.count = 2;
        c.vcpus.phys_cpu_affinity = Some(vec![1, 1]);
        assert!(
            problems(&c).is_empty(),
            "two vCPUs may share a physical CPU"
        );
        c.vcpus.phys_cpu_affinity = Some(vec![1]);
        assert_eq!(
            problems(&c),
            [
                "vcpus.phys_cpu_affinity: has 1 entries for 2 vCPUs; give one physical CPU id per vCPU"
            ]
        );
        c.vcpus.phys_cpu_affinity = Some(vec![0, 256]);
        assert_eq!(
            problems(&c),
            ["vcpus.phys_cpu_affinity[1]: physical CPU 256 is beyond the highest supported id 255"]
        );
    }

    #[test]
    fn memory_must_exist_and_be_ram() {
        let mut c = base();
        c.memory.clear();
        assert_eq!(
            problems(&c),
            ["memory: no memory regions; add at least one [[memory]] table"]
        );
        c.memory = vec![region(0, 0x1000, MapKind::Reserved)];
        assert_eq!(
            problems(&c),
            ["memory: every region is reserved; the VM has no RAM"]
        );
    }

    #[test]
    fn region_alignment_and_size() {
        let mut c = base();
        c.memory.push(region(0x100_0800, 0, MapKind::Alloc));
        c.memory
            .push(region(0x200_0000, 0x1800, MapKind::Linear { hpa: 0x123 }));
        assert_eq!(
            problems(&c),
            [
                "memory[1].size: is 0",
                "memory[1].gpa: 0x1000800 is not 4 KiB aligned",
                "memory[2].size: 0x1800 is not a multiple of 4 KiB (0x1000)",
                "memory[2].hpa: 0x123 is not 4 KiB aligned",
            ]
        );
    }

    #[test]
    fn regions_stay_in_the_address_spaces() {
        let mut c = base();
        c.memory
            .push(region(GPA_LIMIT - 0x1000, 0x2000, MapKind::Alloc));
        c.memory.push(region(
            0x4000_0000,
            0x1000,
            MapKind::Linear { hpa: HPA_LIMIT },
        ));
        c.memory
            .push(region(u64::MAX - 0xfff, 0x2000, MapKind::Alloc));
        let p = problems(&c);
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!(
            p[0],
            "memory[1]: gpa 0xfffffffff000 + size 0x2000 goes beyond the 48-bit guest physical address space (0x1000000000000)"
        );
        assert_eq!(
            p[1],
            "memory[2].hpa: 0x10000000000000 + size 0x1000 goes beyond the 52-bit host physical address space"
        );
        // Overflowing u64 is a problem, not a panic.
        assert!(p[2].starts_with("memory[3]: gpa 0xfffffffffffff000 + size 0x2000 goes beyond"));
    }

    #[test]
    fn overlapping_regions_name_both() {
        let mut c = base();
        c.memory
            .push(region(0x80_0000, 0x100_0000, MapKind::AllocLazy));
        assert_eq!(
            problems(&c),
            ["memory[1]: [0x800000, 0x1800000) overlaps memory[0] [0x0, 0x1000000)"]
        );
        // Adjacent is fine.
        c.memory[1].gpa = 0x100_0000;
        assert!(problems(&c).is_empty());
    }

    #[test]
    fn ram_needs_read() {
        let mut c = base();
        c.memory[0].flags = MemFlags::WRITE;
        assert_eq!(
            problems(&c),
            [
                "memory[0].flags: lacks \"read\"; the guest could not use the region (use map = \"reserved\" for a hole)"
            ]
        );
    }

    #[test]
    fn kernel_addresses_must_be_in_ram() {
        let mut c = base();
        c.kernel.load_addr = Some(0x100_0000); // one past the end of RAM
        c.kernel.entry = Some(0xff_ffff); // last byte of RAM
        assert_eq!(
            problems(&c),
            ["kernel.load_addr: 0x1000000 is outside every RAM region"]
        );
        c.kernel.load_addr = Some(0x20_0000);
        c.memory[0].flags = MemFlags::READ | MemFlags::WRITE;
        assert_eq!(
            problems(&c),
            ["kernel.entry: 0xffffff lies in memory[0], whose flags lack \"exec\""]
        );
        c.kernel.entry = Some(0x1_0000_0000);
        assert_eq!(
            problems(&c),
            ["kernel.entry: 0x100000000 is outside every RAM region"]
        );
    }

    #[test]
    fn raw_kernels_need_a_load_address_and_no_ramdisk() {
        let mut c = base();
        c.kernel.protocol = BootProtocol::Raw;
        assert_eq!(
            problems(&c),
            [
                "kernel.load_addr: is required with protocol = \"raw\" (a flat binary has no header saying where it goes)"
            ]
        );
        c.kernel.load_addr = Some(0x10_0000);
        c.kernel.ramdisk = Some(RamdiskConfig {
            path: "initrd".into(),
            load_addr: None,
        });
        assert_eq!(
            problems(&c),
            ["kernel.ramdisk: protocol = \"raw\" has no way to tell the guest about a ramdisk"]
        );
    }

    #[test]
    fn ramdisk_rules() {
        let mut c = base();
        c.kernel.protocol = BootProtocol::LinuxBzImage;
        c.kernel.load_addr = Some(0x10_0000);
        c.kernel.ramdisk = Some(RamdiskConfig {
            path: String::new(),
            load_addr: Some(0x10_0000),
        });
        assert_eq!(
            problems(&c),
            [
                "kernel.ramdisk.path: must not be empty",
                "kernel.ramdisk.load_addr: 0x100000 is also kernel.load_addr",
            ]
        );
        c.kernel.ramdisk = Some(RamdiskConfig {
            path: "initrd".into(),
            load_addr: Some(0x200_0800),
        });
        assert_eq!(
            problems(&c),
            [
                "kernel.ramdisk.load_addr: 0x2000800 is not 4 KiB aligned",
                "kernel.ramdisk.load_addr: 0x2000800 is outside every RAM region",
            ]
        );
    }

    #[test]
    fn cmdline_rules() {
        let mut c = base();
        c.kernel.cmdline = Some("a".repeat(2047));
        assert!(problems(&c).is_empty());
        c.kernel.cmdline = Some("a".repeat(2048));
        assert_eq!(
            problems(&c),
            ["kernel.cmdline: is 2048 bytes long; the limit is 2047"]
        );
        c.kernel.cmdline = Some("a\0b".into());
        assert_eq!(problems(&c), ["kernel.cmdline: contains a NUL character"]);
        c.kernel.image.clear();
        assert_eq!(problems(&c)[0], "kernel.image: must not be empty");
    }

    #[test]
    fn image_size_checks_once_the_size_is_known() {
        let mut c = base();
        c.kernel.load_addr = Some(0x20_0000);
        assert!(c.check_kernel_size(0xe0_0000).is_ok()); // ends exactly at 16 MiB
        let err = c.check_kernel_size(0xe0_0001).unwrap_err();
        assert_eq!(
            format!("{err}"),
            "kernel.image: 14680065 bytes loaded at kernel.load_addr = 0x200000 would span [0x200000, 0x1000001), which is not all RAM"
        );
        // Adjacent regions count as one stretch of RAM.
        c.memory
            .push(region(0x100_0000, 0x1000, MapKind::AllocLazy));
        assert!(c.check_kernel_size(0xe0_0001).is_ok());
        c.kernel.ramdisk = Some(RamdiskConfig {
            path: "i".into(),
            load_addr: Some(0xff_f000),
        });
        assert!(c.check_ramdisk_size(0x2000).is_ok());
        assert!(c.check_ramdisk_size(0x2001).is_err());
    }

    #[test]
    fn device_base_must_match_its_kind() {
        let mut c = base();
        c.devices.emulated.push(EmulatedDevice {
            kind: DeviceKind::Lapic,
            base: DeviceBase::Port(0x3f8),
            size: 0x1000,
            irq: None,
        });
        c.devices.emulated.push(EmulatedDevice {
            kind: DeviceKind::Rtc,
            base: DeviceBase::Mmio(0x1000_0000),
            size: 2,
            irq: None,
        });
        // No overlap noise from the misplaced lapic.
        assert_eq!(
            problems(&c),
            [
                "devices.emulated[1].port: a lapic is memory-mapped; give `mmio`, not `port`",
                "devices.emulated[2].mmio: a rtc is reached through I/O ports; give `port`, not `mmio`",
            ]
        );
    }

    #[test]
    fn device_ranges() {
        let mut c = base();
        let mut d = EmulatedDevice::new(DeviceKind::DebugExit);
        d.base = DeviceBase::Port(0xfffe);
        c.devices.emulated.push(d);
        let mut d = EmulatedDevice::new(DeviceKind::Hpet);
        d.base = DeviceBase::Mmio(0xfed0_0400);
        c.devices.emulated.push(d);
        let mut d = EmulatedDevice::new(DeviceKind::PciHost);
        d.size = 0;
        c.devices.emulated.push(d);
        assert_eq!(
            problems(&c),
            [
                "devices.emulated[1].size: ports [0xfffe, 0x10002) run past the last I/O port 0xffff",
                "devices.emulated[2].mmio: 0xfed00400 is not 4 KiB aligned (MMIO is trapped per page)",
                "devices.emulated[3].size: is 0",
            ]
        );
    }

    #[test]
    fn device_mmio_must_not_hit_ram_but_may_sit_in_reserved() {
        let mut c = base();
        c.devices
            .emulated
            .push(EmulatedDevice::new(DeviceKind::Hpet));
        c.memory
            .push(region(0xfec0_0000, 0x140_0000, MapKind::Reserved));
        assert!(problems(&c).is_empty());
        c.memory[1].map = MapKind::Alloc;
        assert_eq!(
            problems(&c),
            [
                "devices.emulated[1].mmio: mmio [0xfed00000, 0xfed01000) overlaps RAM of memory[1] [0xfec00000, 0x100000000)"
            ]
        );
    }

    #[test]
    fn duplicate_devices_are_refused() {
        let mut c = base();
        c.devices
            .emulated
            .push(EmulatedDevice::new(DeviceKind::Uart16550));
        c.devices
            .emulated
            .push(EmulatedDevice::new(DeviceKind::Lapic));
        let mut second = EmulatedDevice::new(DeviceKind::Lapic);
        second.base = DeviceBase::Mmio(0xfee1_0000);
        c.devices.emulated.push(second);
        assert_eq!(
            problems(&c),
            [
                "devices.emulated[3]: a second lapic (the first is devices.emulated[2]); the local APIC is per vCPU, list it once",
                "devices.emulated[1]: ports [0x3f8, 0x400) overlap devices.emulated[0] (uart16550) at [0x3f8, 0x400)",
            ]
        );
        // A port range and an MMIO range with the same numbers do not collide.
        let mut c = base();
        let mut d = EmulatedDevice::new(DeviceKind::IoApic);
        d.base = DeviceBase::Mmio(0x1000_0000);
        c.devices.emulated.push(d);
        let mut d = EmulatedDevice::new(DeviceKind::PowerOff);
        d.base = DeviceBase::Port(0x1000);
        c.devices.emulated.push(d);
        assert!(problems(&c).is_empty());
    }

    #[test]
    fn irq_rules() {
        let mut c = base();
        c.devices.emulated[0].irq = Some(23);
        assert!(problems(&c).is_empty());
        c.devices.emulated[0].irq = Some(24);
        assert_eq!(
            problems(&c),
            ["devices.emulated[0].irq: 24 is beyond the last IOAPIC input 23"]
        );
        c.devices.emulated[0].irq = None;
        let mut d = EmulatedDevice::new(DeviceKind::DebugExit);
        d.irq = Some(1);
        c.devices.emulated.push(d);
        assert_eq!(
            problems(&c),
            ["devices.emulated[1].irq: a debug_exit raises no interrupt through an IRQ line"]
        );
    }

    #[test]
    fn passthrough_rules() {
        let mut c = base();
        c.devices.passthrough.push(PassthroughDevice {
            name: "fb".into(),
            resource: PassthroughResource::Mmio {
                gpa: 0xe000_0000,
                hpa: 0xc000_0800,
                size: 0x1800,
            },
        });
        c.devices.passthrough.push(PassthroughDevice {
            name: String::new(),
            resource: PassthroughResource::Ports {
                base: 0x3fc,
                count: 2,
            },
        });
        c.devices.passthrough.push(PassthroughDevice {
            name: "ram-hit".into(),
            resource: PassthroughResource::Mmio {
                gpa: 0xff_f000,
                hpa: 0xff_f000,
                size: 0x2000,
            },
        });
        c.devices.passthrough.push(PassthroughDevice {
            name: "none".into(),
            resource: PassthroughResource::Ports {
                base: 0x80,
                count: 0,
            },
        });
        assert_eq!(
            problems(&c),
            [
                "devices.passthrough[0].size: 0x1800 is not a multiple of 4 KiB (0x1000)",
                "devices.passthrough[0].hpa: 0xc0000800 is not 4 KiB aligned",
                "devices.passthrough[1].name: must not be empty",
                "devices.passthrough[2].gpa: mmio [0xfff000, 0x1001000) overlaps RAM of memory[0] [0x0, 0x1000000)",
                "devices.passthrough[3].size: is 0",
                "devices.passthrough[1]: ports [0x3fc, 0x3fe) overlap devices.emulated[0] (uart16550) at [0x3f8, 0x400)",
            ]
        );
    }

    #[test]
    fn all_problems_are_reported_together() {
        let mut c = base();
        c.name.clear();
        c.vcpus.count = 0;
        c.memory[0].size = 3;
        match c.validate() {
            Err(Error::Invalid(list)) => {
                let fields: Vec<&str> = list.iter().map(|e| e.field.as_str()).collect();
                assert_eq!(fields, ["name", "vcpus.count", "memory[0].size"]);
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
}
