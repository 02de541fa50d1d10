//! x86_64 descriptor formats: GDT segment descriptors, the 64-bit TSS and
//! its system descriptor, IDT gate descriptors, and the pseudo-descriptor
//! that `lgdt`/`lidt` load.
//!
//! Bit positions follow the Intel SDM vol. 3A: "Segment Descriptors"
//! (section 3.4.5), and in the "Task Management" chapter "TSS Descriptor in
//! 64-bit mode" and "Task Management in 64-bit Mode" (the 64-bit TSS), in
//! the "Interrupt and Exception Handling" chapter "64-Bit Mode IDT" (gate
//! descriptors); the AMD APM vol. 2 sections 4.8 (long-mode segment
//! descriptors) and 12.2.5 (64-bit TSS) give the same layouts. Everything here is encoding only:
//! loading the tables is the binary's job.

use crate::{Error, Result};

/// Access byte (descriptor bits 40-47) of a present, accessed, DPL 0,
/// execute/read code segment: P | S | type 0xB.
pub const ACCESS_KERNEL_CODE: u8 = 0x9b;
/// Access byte of a present, accessed, DPL 0, read/write data segment:
/// P | S | type 0x3.
pub const ACCESS_KERNEL_DATA: u8 = 0x93;
/// Access byte of a present, DPL 0, available 64-bit TSS: P | type 0x9
/// (S = 0: a system descriptor).
pub const ACCESS_TSS_AVAILABLE: u8 = 0x89;

/// Descriptor flag nibble (bits 52-55): granularity, limit in 4 KiB units.
pub const FLAG_GRANULARITY: u8 = 1 << 3;
/// Descriptor flag nibble: D/B, default operation size 32 bits.
pub const FLAG_DB: u8 = 1 << 2;
/// Descriptor flag nibble: L, 64-bit code segment.
pub const FLAG_LONG: u8 = 1 << 1;

/// Encodes a code or data segment descriptor (SDM "Segment Descriptors"). `limit` is
/// 20 bits (higher bits are dropped), `flags` is the G, D/B, L, AVL nibble.
pub const fn segment_descriptor(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | ((access as u64) << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((flags & 0xf) as u64) << 52)
        | (((base >> 24) & 0xff) << 56)
}

/// The 64-bit kernel code segment: base 0, limit 4 GiB, L = 1, accessed.
/// Equals the boot GDT's entry `0x00af9b000000ffff`.
pub const KERNEL_CODE64: u64 = segment_descriptor(
    0,
    0xf_ffff,
    ACCESS_KERNEL_CODE,
    FLAG_GRANULARITY | FLAG_LONG,
);

/// The kernel data segment: base 0, limit 4 GiB, writable, accessed.
/// Equals the boot GDT's entry `0x00cf93000000ffff`.
pub const KERNEL_DATA: u64 =
    segment_descriptor(0, 0xf_ffff, ACCESS_KERNEL_DATA, FLAG_GRANULARITY | FLAG_DB);

/// Encodes the 16-byte system descriptor of an available 64-bit TSS at
/// `base` with byte-granular `limit` (SDM "TSS Descriptor in 64-bit
/// mode"): the low 8 bytes in
/// bits 0-63, `base[63:32]` in bits 64-95, bits 96-127 zero.
pub const fn tss_descriptor(base: u64, limit: u32) -> u128 {
    let low = segment_descriptor(base as u32, limit, ACCESS_TSS_AVAILABLE, 0);
    ((base >> 32) as u128) << 64 | low as u128
}

/// Splits a 16-byte system descriptor into the two GDT slots it takes,
/// lower slot first.
pub const fn split_u128(d: u128) -> [u64; 2] {
    [d as u64, (d >> 64) as u64]
}

/// The type of an IDT gate (SDM "System Descriptor Types", 64-bit mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GateType {
    /// 64-bit interrupt gate (type 0xE): clears RFLAGS.IF on entry.
    Interrupt = 0xe,
    /// 64-bit trap gate (type 0xF): leaves RFLAGS.IF alone.
    Trap = 0xf,
}

/// Encodes a present 64-bit IDT gate (SDM "64-Bit Mode IDT"): handler `offset`,
/// code segment `selector`, interrupt stack table index `ist` (0 = no
/// stack switch, 1-7 = TSS.IST1-7) and descriptor privilege level `dpl`.
///
/// Fails with [`Error::InvalidGate`] if `ist > 7` or `dpl > 3`.
pub const fn idt_gate(
    kind: GateType,
    offset: u64,
    selector: u16,
    ist: u8,
    dpl: u8,
) -> Result<u128> {
    if ist > 7 {
        return Err(Error::InvalidGate("IST index above 7"));
    }
    if dpl > 3 {
        return Err(Error::InvalidGate("DPL above 3"));
    }
    let low = (offset & 0xffff)
        | ((selector as u64) << 16)
        | ((ist as u64) << 32)
        | ((kind as u64) << 40)
        | ((dpl as u64) << 45)
        | (1 << 47)
        | (((offset >> 16) & 0xffff) << 48);
    Ok(((offset >> 32) as u128) << 64 | low as u128)
}

/// The 64-bit task-state segment (SDM "64-Bit TSS Format"): privilege-level stacks,
/// the interrupt stack table and the I/O map base. 104 bytes, its fields
/// 4-byte aligned as the hardware lays them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C, packed(4))]
pub struct TaskStateSegment {
    reserved0: u32,
    /// RSP0-RSP2: stack pointers loaded on a privilege change to CPL 0-2.
    pub rsp: [u64; 3],
    reserved1: u64,
    /// IST1-IST7 (index 0 is IST1): stacks an IDT gate can select.
    pub ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    /// Offset of the I/O permission bitmap from the TSS base. A value at
    /// or beyond the limit means "no bitmap": every port access at CPL >
    /// IOPL faults.
    pub iomap_base: u16,
}

impl TaskStateSegment {
    /// Size of the TSS in bytes; its descriptor limit is `SIZE - 1`.
    pub const SIZE: usize = core::mem::size_of::<Self>();

    /// A TSS with no stacks and no I/O bitmap (`iomap_base` = [`Self::SIZE`]).
    pub const fn new() -> Self {
        Self {
            reserved0: 0,
            rsp: [0; 3],
            reserved1: 0,
            ist: [0; 7],
            reserved2: 0,
            reserved3: 0,
            iomap_base: Self::SIZE as u16,
        }
    }

    /// Sets ISTn (`index` 1-7) to `stack_top`; fails with
    /// [`Error::InvalidGate`] for index 0 or above 7.
    pub fn set_ist(&mut self, index: u8, stack_top: u64) -> Result {
        if !(1..=7).contains(&index) {
            return Err(Error::InvalidGate("IST index must be 1-7"));
        }
        let mut ist = self.ist;
        ist[usize::from(index - 1)] = stack_top;
        self.ist = ist;
        Ok(())
    }
}

/// The operand of `lgdt`/`lidt`/`sgdt`/`sidt` in 64-bit mode: a 16-bit
/// limit (size - 1) followed by a 64-bit linear base (SDM "Pseudo-Descriptor
/// Formats").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(2))]
pub struct DescriptorTablePointer {
    /// Size of the table in bytes, minus one.
    pub limit: u16,
    /// Linear address of the table.
    pub base: u64,
}

impl DescriptorTablePointer {
    /// The pointer to a table of `bytes` bytes at `base`; fails with
    /// [`Error::InvalidGate`] for an empty table or one above 64 KiB.
    pub const fn new(base: u64, bytes: usize) -> Result<Self> {
        if bytes == 0 || bytes > 0x1_0000 {
            return Err(Error::InvalidGate(
                "descriptor table size must be 1..=65536 bytes",
            ));
        }
        Ok(Self {
            limit: (bytes - 1) as u16,
            base,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn flat_segments_match_the_boot_gdt() {
        // The boot GDT (entry.rs) and every long-mode tutorial use these;
        // decoding by hand: limit 0xfffff, base 0, access 0x9b / 0x93,
        // flags 0xa (G, L) / 0xc (G, D/B).
        assert_eq!(KERNEL_CODE64, 0x00af_9b00_0000_ffff);
        assert_eq!(KERNEL_DATA, 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn segment_fields_land_in_their_bits() {
        let d = segment_descriptor(0x1234_5678, 0xa_bcde, 0x9a, 0x5);
        assert_eq!(d & 0xffff, 0xbcde, "limit 15:0");
        assert_eq!((d >> 16) & 0xff_ffff, 0x34_5678, "base 23:0");
        assert_eq!((d >> 40) & 0xff, 0x9a, "access");
        assert_eq!((d >> 48) & 0xf, 0xa, "limit 19:16");
        assert_eq!((d >> 52) & 0xf, 0x5, "flags");
        assert_eq!(d >> 56, 0x12, "base 31:24");
        assert_eq!(d, 0x125a_9a34_5678_bcde);
    }

    #[test]
    fn tss_descriptor_layout() {
        let d = tss_descriptor(0xffff_8000_1234_5678, 0x67);
        // Low: limit 0x67, base 23:0 0x345678, type 9 | P, base 31:24 0x12.
        // High: base 63:32, then zero (bits 104-108 must be 0).
        assert_eq!(split_u128(d), [0x1200_8934_5678_0067, 0xffff_8000]);
        assert_eq!((d >> 40) & 0xf, 0x9, "available 64-bit TSS type");
        assert_eq!((d >> 44) & 1, 0, "S = 0, system descriptor");
        assert_eq!((d >> 47) & 1, 1, "present");
        assert_eq!(d >> 96, 0);
    }

    #[test]
    fn interrupt_gate_layout() {
        let g = idt_gate(GateType::Interrupt, 0xffff_ffff_8012_3456, 0x08, 1, 0).unwrap();
        assert_eq!(split_u128(g), [0x8012_8e01_0008_3456, 0xffff_ffff]);
        // Trap gate, DPL 3, no IST: type 0xf, byte 5 = P | DPL 3 | 0xf = 0xef.
        let t = idt_gate(GateType::Trap, 0x0010_2030, 0x10, 0, 3).unwrap();
        assert_eq!(split_u128(t), [0x0010_ef00_0010_2030, 0]);
        assert_eq!((t >> 32) & 0x7, 0, "IST");
        assert_eq!((t >> 35) & 0x1f, 0, "bits 35-39 are zero");
    }

    #[test]
    fn bad_gate_arguments_are_errors() {
        assert_res_eq!(
            idt_gate(GateType::Interrupt, 0, 8, 8, 0),
            Err(Error::InvalidGate("IST index above 7"))
        );
        assert_res_eq!(
            idt_gate(GateType::Interrupt, 0, 8, 0, 4),
            Err(Error::InvalidGate("DPL above 3"))
        );
    }

    #[test]
    fn tss_layout_matches_the_sdm() {
        // Offsets of the SDM's 64-bit TSS figure.
        assert_eq!(size_of::<TaskStateSegment>(), 104);
        assert_eq!(offset_of!(TaskStateSegment, rsp), 0x04);
        assert_eq!(offset_of!(TaskStateSegment, ist), 0x24);
        assert_eq!(offset_of!(TaskStateSegment, iomap_base), 0x66);
        let mut tss = TaskStateSegment::new();
        assert_eq!({ tss.iomap_base }, 104);
        tss.set_ist(1, 0x1000).unwrap();
        tss.set_ist(7, 0x7000).unwrap();
        assert_eq!({ tss.ist }, [0x1000, 0, 0, 0, 0, 0, 0x7000]);
        assert!(tss.set_ist(0, 1).is_err());
        assert!(tss.set_ist(8, 1).is_err());
        // IST1 is at byte 0x24 of the raw TSS.
        // SAFETY: TaskStateSegment is plain old data of 104 bytes.
        let raw: [u8; 104] = unsafe { core::mem::transmute(tss) };
        assert_eq!(&raw[0x24..0x2c], &0x1000u64.to_le_bytes());
    }

    #[test]
    fn table_pointer_is_ten_bytes() {
        assert_eq!(size_of::<DescriptorTablePointer>(), 10);
        let p = DescriptorTablePointer::new(0x1234, 256 * 16).unwrap();
        assert_eq!({ p.limit }, 4095);
        assert_eq!({ p.base }, 0x1234);
        assert!(DescriptorTablePointer::new(0, 0).is_err());
        assert!(DescriptorTablePointer::new(0, 0x1_0001).is_err());
        assert!(DescriptorTablePointer::new(0, 0x1_0000).is_ok());
    }
}
