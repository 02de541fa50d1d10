//! The typed configuration schema.
//!
//! Every struct denies unknown fields, so a misspelt key is an error that
//! names it. Some types are read through a private "raw" form that mirrors
//! the TOML text (`map = "linear"` plus `hpa = ...`; `port = ...` or
//! `mmio = ...`) and are then checked into their typed form; the binary form
//! uses the same raw layout.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// The most vCPUs one VM may have.
pub const MAX_VCPUS: usize = 64;
/// The highest physical CPU id that `vcpus.phys_cpu_affinity` may name.
pub const MAX_PHYS_CPU_ID: usize = 255;
/// The most memory regions one VM may have.
pub const MAX_MEMORY_REGIONS: usize = 128;
/// The most emulated devices, and the most passed-through devices, one VM
/// may have.
pub const MAX_DEVICES: usize = 128;
/// The longest VM name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// The longest kernel command line, in bytes (Linux x86's `COMMAND_LINE_SIZE`
/// is 2048 including the final NUL).
pub const MAX_CMDLINE_LEN: usize = 2047;
/// Granule of guest memory and of MMIO traps: 4 KiB.
pub const PAGE_SIZE: u64 = 0x1000;
/// Guest physical addresses must stay below this bound: 2^48, what a 4-level
/// nested page table (EPT or NPT) maps.
pub const GPA_LIMIT: u64 = 1 << 48;
/// Host physical addresses must stay below this bound: 2^52, the x86_64
/// architectural limit.
pub const HPA_LIMIT: u64 = 1 << 52;
/// The highest interrupt line a device may name: the 24 inputs of an IOAPIC
/// (the legacy PIC's 16 lines are the first 16 of them).
pub const MAX_IRQ: u32 = 23;
/// One past the last x86 I/O port.
pub const PORT_LIMIT: u64 = 0x1_0000;

/// The configuration of one virtual machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The VM's id. By convention 0 is the root VM (the Linux that loaded the
    /// hypervisor, in Type-1.5 mode).
    pub id: usize,
    /// A short name for logs and the control tool: ASCII letters, digits,
    /// `-`, `_` and `.`, at most [`MAX_NAME_LEN`] bytes.
    pub name: String,
    /// The virtual CPUs. Optional in TOML: one vCPU, no affinity.
    #[serde(default)]
    pub vcpus: VcpuConfig,
    /// The guest physical memory map, in any order. Regions must not overlap.
    #[serde(default)]
    pub memory: Vec<MemoryRegion>,
    /// The kernel to boot and how.
    pub kernel: KernelConfig,
    /// Emulated and passed-through devices. Optional in TOML: none.
    #[serde(default)]
    pub devices: DevicesConfig,
}

/// The virtual CPUs of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuConfig {
    /// How many vCPUs, 1 to [`MAX_VCPUS`]. Defaults to 1.
    #[serde(default = "one")]
    pub count: usize,
    /// The physical CPU each vCPU runs on: entry `i` is the id of the physical
    /// CPU of vCPU `i`, so the list has exactly `count` entries. Two vCPUs may
    /// share a physical CPU (the scheduler time-shares them). `None` lets the
    /// hypervisor choose.
    #[serde(default)]
    pub phys_cpu_affinity: Option<Vec<usize>>,
}

fn one() -> usize {
    1
}

impl Default for VcpuConfig {
    fn default() -> Self {
        Self {
            count: 1,
            phys_cpu_affinity: None,
        }
    }
}

/// One region of the guest physical memory map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawMemoryRegion", into = "RawMemoryRegion")]
pub struct MemoryRegion {
    /// First guest physical address, 4 KiB aligned.
    pub gpa: u64,
    /// Size in bytes, a non-zero multiple of 4 KiB.
    pub size: u64,
    /// How the region is backed by host memory.
    pub map: MapKind,
    /// What the guest may do in the region. Ignored for
    /// [`MapKind::Reserved`], and empty when read from TOML or binary.
    pub flags: MemFlags,
}

impl MemoryRegion {
    /// One past the last guest physical address (saturating at `u64::MAX`).
    pub fn end(&self) -> u64 {
        self.gpa.saturating_add(self.size)
    }

    /// Whether the guest sees RAM here (every kind but [`MapKind::Reserved`]).
    pub fn is_ram(&self) -> bool {
        self.map != MapKind::Reserved
    }

    /// Whether `gpa` lies in the region.
    pub fn contains(&self, gpa: u64) -> bool {
        gpa >= self.gpa && gpa < self.end()
    }

    /// The host physical address backing `gpa`, for the kinds that fix it
    /// ([`MapKind::Identical`] and [`MapKind::Linear`]); `None` for the others
    /// or when `gpa` is outside the region.
    pub fn host_addr(&self, gpa: u64) -> Option<u64> {
        if !self.contains(gpa) {
            return None;
        }
        match self.map {
            MapKind::Identical => Some(gpa),
            MapKind::Linear { hpa } => hpa.checked_add(gpa - self.gpa),
            _ => None,
        }
    }
}

/// How a memory region is backed by host memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapKind {
    /// The hypervisor allocates host frames and maps them all when the VM is
    /// created. TOML: `map = "alloc"` (the default).
    Alloc,
    /// The hypervisor allocates each page on the guest's first access (nested
    /// page fault). TOML: `map = "alloc_lazy"`.
    AllocLazy,
    /// Guest physical address = host physical address (the root VM, or RAM
    /// given to a VM one to one). TOML: `map = "identical"`.
    Identical,
    /// The region maps the host physical range starting at `hpa`, of the same
    /// size (memory the host set aside for this VM). TOML: `map = "linear"`
    /// with `hpa = ...`.
    Linear {
        /// First host physical address, 4 KiB aligned.
        hpa: u64,
    },
    /// Not backed: the guest's memory map reports it as reserved (e820 type 2)
    /// and accesses fault, unless a device claims them. Devices may sit in a
    /// reserved region. TOML: `map = "reserved"`.
    Reserved,
}

impl MapKind {
    /// The TOML spelling (`"alloc"`, `"linear"`...).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Alloc => "alloc",
            Self::AllocLazy => "alloc_lazy",
            Self::Identical => "identical",
            Self::Linear { .. } => "linear",
            Self::Reserved => "reserved",
        }
    }
}

bitflags::bitflags! {
    /// Access rights and attributes of a memory region. In TOML a list of
    /// names: `flags = ["read", "write", "exec"]` (the default), plus
    /// `"device"` and `"uncached"`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct MemFlags: u8 {
        /// The guest may read.
        const READ = 1 << 0;
        /// The guest may write.
        const WRITE = 1 << 1;
        /// The guest may execute.
        const EXEC = 1 << 2;
        /// Device memory (strong uncacheable).
        const DEVICE = 1 << 3;
        /// Uncached normal memory.
        const UNCACHED = 1 << 4;
    }
}

/// The TOML names of the [`MemFlags`] bits, in bit order.
const FLAG_NAMES: [(&str, MemFlags); 5] = [
    ("read", MemFlags::READ),
    ("write", MemFlags::WRITE),
    ("exec", MemFlags::EXEC),
    ("device", MemFlags::DEVICE),
    ("uncached", MemFlags::UNCACHED),
];
const FLAG_NAME_LIST: &[&str] = &["read", "write", "exec", "device", "uncached"];

impl MemFlags {
    /// Read, write and execute: the default for RAM.
    pub const RWX: Self = Self::READ.union(Self::WRITE).union(Self::EXEC);

    /// The TOML names of the set bits, in bit order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        FLAG_NAMES
            .iter()
            .filter(|(_, f)| self.contains(*f))
            .map(|(n, _)| *n)
    }
}

/// One flag name in a TOML flag list; an unknown name fails here, so that
/// the error names the list element (`flags[1]`).
struct FlagName(MemFlags);

impl<'de> Deserialize<'de> for FlagName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> core::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        match FLAG_NAMES.iter().find(|(n, _)| *n == name) {
            Some((_, f)) => Ok(FlagName(*f)),
            None => Err(de::Error::unknown_variant(&name, FLAG_NAME_LIST)),
        }
    }
}

impl Default for MemFlags {
    fn default() -> Self {
        Self::RWX
    }
}

impl Serialize for MemFlags {
    fn serialize<S: Serializer>(&self, s: S) -> core::result::Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            let mut seq = s.serialize_seq(Some(self.names().count()))?;
            for name in self.names() {
                seq.serialize_element(name)?;
            }
            seq.end()
        } else {
            s.serialize_u8(self.bits())
        }
    }
}

impl<'de> Deserialize<'de> for MemFlags {
    fn deserialize<D: Deserializer<'de>>(d: D) -> core::result::Result<Self, D::Error> {
        struct FlagsVisitor;
        impl<'de> Visitor<'de> for FlagsVisitor {
            type Value = MemFlags;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of memory flags such as [\"read\", \"write\", \"exec\"]")
            }
            fn visit_u8<E: de::Error>(self, v: u8) -> core::result::Result<MemFlags, E> {
                MemFlags::from_bits(v).ok_or_else(|| {
                    E::invalid_value(de::Unexpected::Unsigned(v.into()), &"known flag bits")
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> core::result::Result<MemFlags, A::Error> {
                let mut flags = MemFlags::empty();
                while let Some(FlagName(f)) = seq.next_element()? {
                    flags |= f;
                }
                Ok(flags)
            }
        }
        if d.is_human_readable() {
            d.deserialize_seq(FlagsVisitor)
        } else {
            d.deserialize_u8(FlagsVisitor)
        }
    }
}

/// The kernel to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelConfig {
    /// Path of the kernel image, for the std tools that load it. A relative
    /// path is resolved by the tool that reads the image (`cargo xtask`
    /// resolves it from the workspace root).
    pub image: String,
    /// How the kernel expects to be loaded and entered.
    pub protocol: BootProtocol,
    /// Guest physical address to load the image at. Required for
    /// [`BootProtocol::Raw`]; for the other protocols it overrides what the
    /// image's own header says.
    #[serde(default)]
    pub load_addr: Option<u64>,
    /// Guest physical address of the first instruction. For
    /// [`BootProtocol::Raw`] it defaults to `load_addr`; for the others it
    /// overrides the image's header.
    #[serde(default)]
    pub entry: Option<u64>,
    /// The kernel command line (multiboot `cmdline`, Linux `cmd_line_ptr`).
    #[serde(default)]
    pub cmdline: Option<String>,
    /// An initial ramdisk (Linux initrd, or the first multiboot module).
    #[serde(default)]
    pub ramdisk: Option<RamdiskConfig>,
}

/// How a kernel is loaded and entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BootProtocol {
    /// Multiboot v1: an ELF or an image with the header's address fields;
    /// entered in 32-bit protected mode with EAX = 0x2BADB002 and EBX
    /// pointing to the multiboot information. TOML: `"multiboot"`.
    #[serde(rename = "multiboot")]
    Multiboot,
    /// A flat binary copied to `load_addr` and entered at `entry`, in 32-bit
    /// protected mode with paging off. TOML: `"raw"`.
    #[serde(rename = "raw")]
    Raw,
    /// A Linux bzImage, entered through the 64-bit boot protocol with a
    /// zero page (boot params and e820 map). TOML: `"bzimage"`.
    #[serde(rename = "bzimage")]
    LinuxBzImage,
}

impl BootProtocol {
    /// The TOML spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Multiboot => "multiboot",
            Self::Raw => "raw",
            Self::LinuxBzImage => "bzimage",
        }
    }
}

/// An initial ramdisk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RamdiskConfig {
    /// Path of the ramdisk file (same rules as [`KernelConfig::image`]).
    pub path: String,
    /// Guest physical address to load it at, 4 KiB aligned. `None` lets the
    /// loader place it (as high in RAM as the protocol allows).
    #[serde(default)]
    pub load_addr: Option<u64>,
}

/// The devices of a VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesConfig {
    /// Devices the hypervisor emulates. TOML: `[[devices.emulated]]` tables.
    #[serde(default)]
    pub emulated: Vec<EmulatedDevice>,
    /// Host devices (MMIO ranges or I/O ports) given to the guest directly.
    /// TOML: `[[devices.passthrough]]` tables.
    #[serde(default)]
    pub passthrough: Vec<PassthroughDevice>,
}

/// The kinds of emulated device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeviceKind {
    /// 16550 UART. Default: port 0x3F8 (COM1), 8 ports.
    #[serde(rename = "uart16550")]
    Uart16550,
    /// QEMU's `isa-debug-exit`: a write ends the run. Default: port 0xF4, 4 ports.
    #[serde(rename = "debug_exit")]
    DebugExit,
    /// The 8259 PIC pair. `port` is the master's base (default 0x20, 2 ports);
    /// the slave at 0xA0 comes with it.
    #[serde(rename = "pic8259")]
    Pic8259,
    /// 8254 PIT. Default: port 0x40, 4 ports.
    #[serde(rename = "pit8254")]
    Pit8254,
    /// CMOS real-time clock. Default: port 0x70, 2 ports.
    #[serde(rename = "rtc")]
    Rtc,
    /// HPET. Default: MMIO 0xFED0_0000, one page.
    #[serde(rename = "hpet")]
    Hpet,
    /// I/O APIC. Default: MMIO 0xFEC0_0000, one page.
    #[serde(rename = "ioapic")]
    IoApic,
    /// The local APIC of every vCPU (xAPIC page; x2APIC MSRs come with it).
    /// Default: MMIO 0xFEE0_0000, one page.
    #[serde(rename = "lapic")]
    Lapic,
    /// Power-off port: a 16-bit write of 0x2000 powers the VM off (QEMU's
    /// ACPI PM1a control). Default: port 0x604, 2 ports.
    #[serde(rename = "power_off")]
    PowerOff,
    /// PCI configuration mechanism #1 (CONFIG_ADDRESS/CONFIG_DATA). Default:
    /// port 0xCF8, 8 ports.
    #[serde(rename = "pci_host")]
    PciHost,
    /// A RAM-like MMIO test window: writes store bytes, reads return them,
    /// fresh memory reads 0 (the project's `mmio` test guest checks MMIO
    /// emulation with it). Default: MMIO 0xFEB0_0000, one page.
    #[serde(rename = "test_mmio")]
    TestMmio,
}

impl DeviceKind {
    /// Every kind, in declaration order.
    pub const ALL: [DeviceKind; 11] = [
        Self::Uart16550,
        Self::DebugExit,
        Self::Pic8259,
        Self::Pit8254,
        Self::Rtc,
        Self::Hpet,
        Self::IoApic,
        Self::Lapic,
        Self::PowerOff,
        Self::PciHost,
        Self::TestMmio,
    ];

    /// The TOML spelling (`"uart16550"`, `"debug_exit"`...).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Uart16550 => "uart16550",
            Self::DebugExit => "debug_exit",
            Self::Pic8259 => "pic8259",
            Self::Pit8254 => "pit8254",
            Self::Rtc => "rtc",
            Self::Hpet => "hpet",
            Self::IoApic => "ioapic",
            Self::Lapic => "lapic",
            Self::PowerOff => "power_off",
            Self::PciHost => "pci_host",
            Self::TestMmio => "test_mmio",
        }
    }

    /// Where the device sits when the config gives neither `port` nor `mmio`:
    /// its standard PC address.
    pub fn default_base(&self) -> DeviceBase {
        match self {
            Self::Uart16550 => DeviceBase::Port(0x3f8),
            Self::DebugExit => DeviceBase::Port(0xf4),
            Self::Pic8259 => DeviceBase::Port(0x20),
            Self::Pit8254 => DeviceBase::Port(0x40),
            Self::Rtc => DeviceBase::Port(0x70),
            Self::Hpet => DeviceBase::Mmio(0xfed0_0000),
            Self::IoApic => DeviceBase::Mmio(0xfec0_0000),
            Self::Lapic => DeviceBase::Mmio(0xfee0_0000),
            Self::PowerOff => DeviceBase::Port(0x604),
            Self::PciHost => DeviceBase::Port(0xcf8),
            Self::TestMmio => DeviceBase::Mmio(0xfeb0_0000),
        }
    }

    /// The size of the device's range when the config gives none: ports for
    /// a port device, bytes for an MMIO one.
    pub fn default_size(&self) -> u64 {
        match self {
            Self::Uart16550 | Self::PciHost => 8,
            Self::DebugExit | Self::Pit8254 => 4,
            Self::Pic8259 | Self::Rtc | Self::PowerOff => 2,
            Self::Hpet | Self::IoApic | Self::Lapic | Self::TestMmio => PAGE_SIZE,
        }
    }

    /// Whether the device is reached through MMIO (else through I/O ports).
    pub fn is_mmio(&self) -> bool {
        matches!(
            self,
            Self::Hpet | Self::IoApic | Self::Lapic | Self::TestMmio
        )
    }

    /// Whether the device can raise an interrupt through a line named by `irq`.
    pub fn has_irq_line(&self) -> bool {
        matches!(
            self,
            Self::Uart16550 | Self::Pic8259 | Self::Pit8254 | Self::Rtc | Self::Hpet
        )
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a device sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceBase {
    /// First I/O port. TOML: `port = 0x3f8`.
    Port(u16),
    /// First guest physical address of its MMIO range. TOML: `mmio = 0xfed0_0000`.
    Mmio(u64),
}

/// A device the hypervisor emulates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawEmulatedDevice", into = "RawEmulatedDevice")]
pub struct EmulatedDevice {
    /// What it is.
    pub kind: DeviceKind,
    /// Where it is. TOML: `port = ...` or `mmio = ...`; when both are left
    /// out, [`DeviceKind::default_base`].
    pub base: DeviceBase,
    /// How many ports, or bytes of MMIO. TOML: `size`, default
    /// [`DeviceKind::default_size`].
    pub size: u64,
    /// The interrupt line (GSI: IOAPIC input, equal to the ISA IRQ for the
    /// first 16) the device raises, if it raises one.
    pub irq: Option<u32>,
}

impl EmulatedDevice {
    /// A device of `kind` at its standard address and size, with no IRQ line.
    pub fn new(kind: DeviceKind) -> Self {
        Self {
            kind,
            base: kind.default_base(),
            size: kind.default_size(),
            irq: None,
        }
    }

    /// The covered range `[start, end)`, in ports or guest physical
    /// addresses (`end` saturates).
    pub fn range(&self) -> (u64, u64) {
        let start = match self.base {
            DeviceBase::Port(p) => u64::from(p),
            DeviceBase::Mmio(a) => a,
        };
        (start, start.saturating_add(self.size))
    }
}

/// A host device given to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawPassthroughDevice", into = "RawPassthroughDevice")]
pub struct PassthroughDevice {
    /// A name for logs.
    pub name: String,
    /// What is passed through.
    pub resource: PassthroughResource,
}

/// What a passed-through device is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PassthroughResource {
    /// An MMIO range: guest `[gpa, gpa + size)` maps host `[hpa, hpa + size)`
    /// as device memory. TOML: `gpa`, `hpa` (default: same as `gpa`), `size`.
    Mmio {
        /// First guest physical address, 4 KiB aligned.
        gpa: u64,
        /// First host physical address, 4 KiB aligned.
        hpa: u64,
        /// Size in bytes, a non-zero multiple of 4 KiB.
        size: u64,
    },
    /// I/O ports `[base, base + count)` the guest reaches directly. TOML:
    /// `port`, `size`.
    Ports {
        /// First port.
        base: u16,
        /// Number of ports.
        count: u64,
    },
}

// ---------------------------------------------------------------------------
// Raw forms: the TOML layout (and the binary one), checked into typed values.
// ---------------------------------------------------------------------------

/// A size in bytes: an integer, or in TOML also a string with a binary unit
/// (`"16M"`, `"4 KiB"`, `"0x1000"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size(pub(crate) u64);

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> core::result::Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> core::result::Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: an integer, or a string such as \"16M\" or \"4 KiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> core::result::Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> core::result::Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> core::result::Result<Size, E> {
                parse_size(v).map(Size).map_err(|why| {
                    E::custom(format!("invalid size \"{}\": {why}", v.escape_debug()))
                })
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(SizeVisitor)
        } else {
            d.deserialize_u64(SizeVisitor)
        }
    }
}

/// Parses a size: a decimal or `0x` hexadecimal number (underscores allowed),
/// optionally followed by a binary unit `K`/`KiB`, `M`/`MiB`, `G`/`GiB` or `B`.
///
/// ```
/// assert_eq!(axvmconfig::parse_size("16M"), Ok(16 << 20));
/// assert_eq!(axvmconfig::parse_size("4 KiB"), Ok(4096));
/// assert_eq!(axvmconfig::parse_size("0x1000"), Ok(4096));
/// assert!(axvmconfig::parse_size("4KB").is_err());
/// ```
pub fn parse_size(text: &str) -> core::result::Result<u64, &'static str> {
    let text = text.trim();
    let (digits, radix, rest) = match text.strip_prefix("0x").or(text.strip_prefix("0X")) {
        Some(hex) => {
            let n = hex
                .find(|c: char| !(c.is_ascii_hexdigit() || c == '_'))
                .unwrap_or(hex.len());
            (&hex[..n], 16, &hex[n..])
        }
        None => {
            let n = text
                .find(|c: char| !(c.is_ascii_digit() || c == '_'))
                .unwrap_or(text.len());
            (&text[..n], 10, &text[n..])
        }
    };
    if digits.is_empty() || digits.starts_with('_') {
        return Err("expected a number first");
    }
    let mut value: u64 = 0;
    for c in digits.chars().filter(|&c| c != '_') {
        let d = u64::from(c.to_digit(radix).ok_or("not a digit")?);
        value = value
            .checked_mul(radix.into())
            .and_then(|v| v.checked_add(d))
            .ok_or("too large")?;
    }
    let shift = match rest.trim_start() {
        "" | "B" => 0,
        "K" | "k" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "KB" | "kB" | "MB" | "GB" => {
            return Err("units are binary: write K, M, G (or KiB, MiB, GiB)");
        }
        _ => return Err("unknown unit (expected K, M, G, KiB, MiB, GiB or B)"),
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or("too large for 64 bits")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawMapKind {
    Alloc,
    AllocLazy,
    Identical,
    Linear,
    Reserved,
}

fn default_map() -> RawMapKind {
    RawMapKind::Alloc
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMemoryRegion {
    gpa: u64,
    size: Size,
    #[serde(default = "default_map")]
    map: RawMapKind,
    #[serde(default)]
    hpa: Option<u64>,
    #[serde(default)]
    flags: MemFlags,
}

impl TryFrom<RawMemoryRegion> for MemoryRegion {
    type Error = String;

    fn try_from(raw: RawMemoryRegion) -> core::result::Result<Self, String> {
        let map = match (raw.map, raw.hpa) {
            (RawMapKind::Linear, Some(hpa)) => MapKind::Linear { hpa },
            (RawMapKind::Linear, None) => {
                return Err(
                    "map = \"linear\" needs `hpa`, the host physical address it maps".into(),
                );
            }
            (other, Some(_)) => {
                return Err(format!(
                    "`hpa` is only meaningful with map = \"linear\" (this region has map = \"{}\")",
                    raw_map_name(other)
                ));
            }
            (RawMapKind::Alloc, None) => MapKind::Alloc,
            (RawMapKind::AllocLazy, None) => MapKind::AllocLazy,
            (RawMapKind::Identical, None) => MapKind::Identical,
            (RawMapKind::Reserved, None) => MapKind::Reserved,
        };
        // A reserved region has no access rights: clear them so that equal
        // regions compare equal however they were written.
        let flags = if map == MapKind::Reserved {
            MemFlags::empty()
        } else {
            raw.flags
        };
        Ok(Self {
            gpa: raw.gpa,
            size: raw.size.0,
            map,
            flags,
        })
    }
}

fn raw_map_name(m: RawMapKind) -> &'static str {
    match m {
        RawMapKind::Alloc => "alloc",
        RawMapKind::AllocLazy => "alloc_lazy",
        RawMapKind::Identical => "identical",
        RawMapKind::Linear => "linear",
        RawMapKind::Reserved => "reserved",
    }
}

impl From<MemoryRegion> for RawMemoryRegion {
    fn from(r: MemoryRegion) -> Self {
        let (map, hpa) = match r.map {
            MapKind::Alloc => (RawMapKind::Alloc, None),
            MapKind::AllocLazy => (RawMapKind::AllocLazy, None),
            MapKind::Identical => (RawMapKind::Identical, None),
            MapKind::Linear { hpa } => (RawMapKind::Linear, Some(hpa)),
            MapKind::Reserved => (RawMapKind::Reserved, None),
        };
        Self {
            gpa: r.gpa,
            size: Size(r.size),
            map,
            hpa,
            flags: r.flags,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmulatedDevice {
    kind: DeviceKind,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    mmio: Option<u64>,
    #[serde(default)]
    size: Option<Size>,
    #[serde(default)]
    irq: Option<u32>,
}

impl TryFrom<RawEmulatedDevice> for EmulatedDevice {
    type Error = String;

    fn try_from(raw: RawEmulatedDevice) -> core::result::Result<Self, String> {
        let base = match (raw.port, raw.mmio) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "a {} has either `port` or `mmio`, not both",
                    raw.kind
                ));
            }
            (Some(p), None) => DeviceBase::Port(p),
            (None, Some(a)) => DeviceBase::Mmio(a),
            (None, None) => raw.kind.default_base(),
        };
        Ok(Self {
            kind: raw.kind,
            base,
            size: raw.size.map_or(raw.kind.default_size(), |s| s.0),
            irq: raw.irq,
        })
    }
}

impl From<EmulatedDevice> for RawEmulatedDevice {
    fn from(d: EmulatedDevice) -> Self {
        let (port, mmio) = match d.base {
            DeviceBase::Port(p) => (Some(p), None),
            DeviceBase::Mmio(a) => (None, Some(a)),
        };
        Self {
            kind: d.kind,
            port,
            mmio,
            size: Some(Size(d.size)),
            irq: d.irq,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPassthroughDevice {
    name: String,
    #[serde(default)]
    gpa: Option<u64>,
    #[serde(default)]
    hpa: Option<u64>,
    #[serde(default)]
    port: Option<u16>,
    size: Size,
}

impl TryFrom<RawPassthroughDevice> for PassthroughDevice {
    type Error = String;

    fn try_from(raw: RawPassthroughDevice) -> core::result::Result<Self, String> {
        let resource = match (raw.port, raw.gpa, raw.hpa) {
            (Some(base), None, None) => PassthroughResource::Ports {
                base,
                count: raw.size.0,
            },
            (Some(_), _, _) => {
                return Err(
                    "a passthrough device has either `port` (I/O ports) or `gpa`/`hpa` (MMIO), not both"
                        .to_string(),
                );
            }
            (None, Some(gpa), hpa) => PassthroughResource::Mmio {
                gpa,
                hpa: hpa.unwrap_or(gpa),
                size: raw.size.0,
            },
            (None, None, _) => {
                return Err(
                    "a passthrough device needs `gpa` (an MMIO range) or `port` (I/O ports)"
                        .to_string(),
                );
            }
        };
        Ok(Self {
            name: raw.name,
            resource,
        })
    }
}

impl From<PassthroughDevice> for RawPassthroughDevice {
    fn from(d: PassthroughDevice) -> Self {
        match d.resource {
            PassthroughResource::Mmio { gpa, hpa, size } => Self {
                name: d.name,
                gpa: Some(gpa),
                hpa: Some(hpa),
                port: None,
                size: Size(size),
            },
            PassthroughResource::Ports { base, count } => Self {
                name: d.name,
                gpa: None,
                hpa: None,
                port: Some(base),
                size: Size(count),
            },
        }
    }
}

impl VmConfig {
    /// A minimal configuration: one vCPU, `mem_size` bytes of RAM at guest
    /// physical address 0 (allocated, read/write/execute), the kernel `image`
    /// booted with `protocol`, and no devices. Check it with
    /// [`VmConfig::validate`] after changing it.
    pub fn new(
        id: usize,
        name: impl Into<String>,
        mem_size: u64,
        image: impl Into<String>,
        protocol: BootProtocol,
    ) -> Self {
        Self {
            id,
            name: name.into(),
            vcpus: VcpuConfig::default(),
            memory: alloc::vec![MemoryRegion {
                gpa: 0,
                size: mem_size,
                map: MapKind::Alloc,
                flags: MemFlags::RWX,
            }],
            kernel: KernelConfig {
                image: image.into(),
                protocol,
                load_addr: None,
                entry: None,
                cmdline: None,
                ramdisk: None,
            },
            devices: DevicesConfig::default(),
        }
    }

    /// The regions the guest sees as RAM (all but the reserved ones).
    pub fn ram_regions(&self) -> impl Iterator<Item = &MemoryRegion> + '_ {
        self.memory.iter().filter(|r| r.is_ram())
    }

    /// Total bytes of RAM.
    pub fn ram_size(&self) -> u64 {
        self.ram_regions()
            .fold(0u64, |acc, r| acc.saturating_add(r.size))
    }

    /// The RAM region holding `gpa`, with its index in [`VmConfig::memory`].
    pub fn ram_region_at(&self, gpa: u64) -> Option<(usize, &MemoryRegion)> {
        self.memory
            .iter()
            .enumerate()
            .find(|(_, r)| r.is_ram() && r.contains(gpa))
    }

    /// Whether `[gpa, gpa + len)` lies entirely in RAM (possibly across
    /// adjacent RAM regions). A zero `len` asks about `gpa` alone.
    pub fn is_ram_range(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len.max(1)) else {
            return false;
        };
        let mut cur = gpa;
        // Each step moves `cur` to the end of a region, so at most one step
        // per region is needed.
        for _ in 0..=self.memory.len() {
            if cur >= end {
                return true;
            }
            match self.ram_region_at(cur) {
                Some((_, r)) => cur = r.end(),
                None => return false,
            }
        }
        cur >= end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn sizes_in_words() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0x1000"), Ok(0x1000));
        assert_eq!(parse_size("0X10_00"), Ok(0x1000));
        assert_eq!(parse_size("1_000"), Ok(1000));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("640 KiB"), Ok(640 << 10));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size(" 128 MiB "), Ok(128 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("0x10M"), Ok(16 << 20));
        assert_eq!(parse_size("7B"), Ok(7));
        assert_eq!(
            parse_size("16MB"),
            Err("units are binary: write K, M, G (or KiB, MiB, GiB)")
        );
        assert_eq!(
            parse_size("16 furlongs"),
            Err("unknown unit (expected K, M, G, KiB, MiB, GiB or B)")
        );
        assert_eq!(parse_size("M"), Err("expected a number first"));
        assert_eq!(parse_size(""), Err("expected a number first"));
        assert_eq!(parse_size("_1"), Err("expected a number first"));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_size("18446744073709551616"), Err("too large"));
        assert_eq!(
            parse_size("16777216T"),
            Err("unknown unit (expected K, M, G, KiB, MiB, GiB or B)")
        );
        assert_eq!(parse_size("17179869184G"), Err("too large for 64 bits"));
    }

    #[test]
    fn flag_names_in_bit_order() {
        let names: Vec<&str> = (MemFlags::EXEC | MemFlags::READ | MemFlags::UNCACHED)
            .names()
            .collect();
        assert_eq!(names, ["read", "exec", "uncached"]);
        assert_eq!(MemFlags::default(), MemFlags::RWX);
        assert_eq!(MemFlags::RWX.bits(), 0b111);
    }

    #[test]
    fn device_defaults_are_the_pc_addresses() {
        let d = EmulatedDevice::new(DeviceKind::Uart16550);
        assert_eq!(
            (d.base, d.range()),
            (DeviceBase::Port(0x3f8), (0x3f8, 0x400))
        );
        let d = EmulatedDevice::new(DeviceKind::Lapic);
        assert_eq!(d.range(), (0xfee0_0000, 0xfee0_1000));
        assert_eq!(
            DeviceKind::Hpet.default_base(),
            DeviceBase::Mmio(0xfed0_0000)
        );
        assert_eq!(
            DeviceKind::IoApic.default_base(),
            DeviceBase::Mmio(0xfec0_0000)
        );
        assert_eq!(DeviceKind::PowerOff.default_base(), DeviceBase::Port(0x604));
        assert_eq!(DeviceKind::DebugExit.default_base(), DeviceBase::Port(0xf4));
        let d = EmulatedDevice::new(DeviceKind::TestMmio);
        assert_eq!(d.range(), (0xfeb0_0000, 0xfeb0_1000));
        assert!(!DeviceKind::TestMmio.has_irq_line());
        assert_eq!(DeviceKind::TestMmio.as_str(), "test_mmio");
        for kind in DeviceKind::ALL {
            assert_eq!(
                kind.is_mmio(),
                matches!(kind.default_base(), DeviceBase::Mmio(_)),
                "{kind}"
            );
        }
    }

    #[test]
    fn ram_ranges_span_adjacent_regions_but_not_holes() {
        let mut c = VmConfig::new(1, "t", 0x10_0000, "k", BootProtocol::Multiboot);
        c.memory.push(MemoryRegion {
            gpa: 0x10_0000,
            size: 0x10_0000,
            map: MapKind::Linear { hpa: 0x4000_0000 },
            flags: MemFlags::RWX,
        });
        c.memory.push(MemoryRegion {
            gpa: 0x20_0000,
            size: 0x1000,
            map: MapKind::Reserved,
            flags: MemFlags::empty(),
        });
        assert_eq!(c.ram_size(), 0x20_0000);
        assert!(c.is_ram_range(0, 0x20_0000));
        assert!(c.is_ram_range(0xf_f000, 0x2000));
        assert!(!c.is_ram_range(0x1f_f000, 0x2000), "reserved is not RAM");
        assert!(!c.is_ram_range(u64::MAX, 2), "no overflow panic");
        assert!(
            c.is_ram_range(0x1f_ffff, 0),
            "zero length asks about one byte"
        );
        assert_eq!(c.ram_region_at(0x18_0000).map(|(i, _)| i), Some(1));
        assert_eq!(c.memory[1].host_addr(0x18_0000), Some(0x4008_0000));
        assert_eq!(c.memory[1].host_addr(0x20_0000), None);
        assert_eq!(
            c.memory[0].host_addr(0x1000),
            None,
            "alloc has no fixed hpa"
        );
        let ident = MemoryRegion {
            gpa: 0x1000,
            size: 0x1000,
            map: MapKind::Identical,
            flags: MemFlags::RWX,
        };
        assert_eq!(ident.host_addr(0x1234), Some(0x1234));
        assert_eq!(
            vec![MapKind::Alloc.as_str(), MapKind::Linear { hpa: 0 }.as_str()],
            ["alloc", "linear"]
        );
    }
}
