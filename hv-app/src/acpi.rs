//! Finding the CPUs in the ACPI tables: the RSDP, the RSDT or XSDT, and the
//! local APIC entries of the MADT.
//!
//! Everything reads physical memory through a [`PhysReader`] and checks what
//! it reads (signature, length, checksum, entry sizes) before trusting it:
//! firmware tables are input, and a broken one gives an
//! [`Error::BadAcpiTable`], never a panic. References: ACPI 6.5 sections
//! 5.2.5 (RSDP), 5.2.6 (table header), 5.2.7/5.2.8 (RSDT/XSDT) and 5.2.12
//! (MADT).

use alloc::vec;
use alloc::vec::Vec;

use crate::multiboot::PhysReader;
use crate::{Error, Result};

/// The RSDP signature, `"RSD PTR "` (ACPI 6.5 table 5.3).
pub const RSDP_SIGNATURE: [u8; 8] = *b"RSD PTR ";
/// Bytes of the ACPI 1.0 RSDP, covered by its first checksum.
pub const RSDP_V1_LEN: usize = 20;
/// Bytes of the ACPI 2.0+ RSDP, covered by its extended checksum.
pub const RSDP_V2_LEN: usize = 36;
/// Where the BIOS data area keeps the EBDA's real-mode segment (a 16-bit
/// word; ACPI 6.5 section 5.2.5.1).
pub const EBDA_SEGMENT_PTR: u64 = 0x40e;
/// Bytes of the EBDA searched for the RSDP: its first KiB.
pub const EBDA_SEARCH_LEN: u64 = 1024;
/// The BIOS read-only area searched for the RSDP, `[0xE0000, 0x100000)`.
pub const BIOS_AREA: (u64, u64) = (0xe_0000, 0x10_0000);
/// Bytes of the header every system description table starts with.
pub const SDT_HEADER_LEN: usize = 36;
/// Largest table hv-app reads (a larger length field is taken as garbage).
pub const MAX_TABLE_LEN: u32 = 1 << 20;
/// The MADT's signature.
pub const MADT_SIGNATURE: [u8; 4] = *b"APIC";

/// MADT entry type: Processor Local APIC (ACPI 6.5 section 5.2.12.2).
pub const MADT_LOCAL_APIC: u8 = 0;
/// MADT entry type: Local APIC Address Override (section 5.2.12.8).
pub const MADT_LOCAL_APIC_OVERRIDE: u8 = 5;
/// MADT entry type: Processor Local x2APIC (section 5.2.12.12).
pub const MADT_LOCAL_X2APIC: u8 = 9;
/// Local APIC flags bit 0: the processor is usable.
pub const LAPIC_ENABLED: u32 = 1 << 0;
/// Local APIC flags bit 1 (ACPI 6.3+): the processor can be brought online
/// later (only meaningful when `Enabled` is clear).
pub const LAPIC_ONLINE_CAPABLE: u32 = 1 << 1;

/// The Root System Description Pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rsdp {
    /// Where it was found.
    pub addr: u64,
    /// 0 for ACPI 1.0, 2 for ACPI 2.0 and later.
    pub revision: u8,
    /// The OEM ID.
    pub oem_id: [u8; 6],
    /// Physical address of the RSDT (32-bit entries).
    pub rsdt: u32,
    /// Physical address of the XSDT (64-bit entries), revision 2 and later,
    /// when not zero.
    pub xsdt: Option<u64>,
}

/// The 36-byte header of a system description table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdtHeader {
    /// The table's signature, for example `APIC`.
    pub signature: [u8; 4],
    /// Length of the whole table, header included.
    pub length: u32,
    /// The table's revision.
    pub revision: u8,
    /// The OEM ID.
    pub oem_id: [u8; 6],
}

/// One processor from the MADT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MadtCpu {
    /// Its local APIC ID (8 bits from a type 0 entry, 32 from type 9).
    pub apic_id: u32,
    /// The ACPI processor UID.
    pub uid: u32,
    /// `Enabled`: usable now.
    pub enabled: bool,
    /// `Online Capable`: absent now, may be hot-added.
    pub online_capable: bool,
    /// Whether it came from a Processor Local x2APIC entry (type 9).
    pub x2apic: bool,
}

/// What hv-app uses from the MADT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Madt {
    /// Physical address of the local APICs: the 32-bit field, or the
    /// Local APIC Address Override if there is one.
    pub local_apic_addr: u64,
    /// `PCAT_COMPAT`: the machine also has dual 8259 PICs.
    pub pcat_compat: bool,
    /// Every processor entry, in table order.
    pub cpus: Vec<MadtCpu>,
}

impl Madt {
    /// The enabled processors, each local APIC ID once (a firmware may
    /// list a CPU both as a type 0 and a type 9 entry), in table order.
    pub fn enabled_apic_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = Vec::new();
        for cpu in self.cpus.iter().filter(|c| c.enabled) {
            if !ids.contains(&cpu.apic_id) {
                ids.push(cpu.apic_id);
            }
        }
        ids
    }
}

fn bad(table: &'static str, addr: u64, problem: &'static str) -> Error {
    Error::BadAcpiTable {
        table,
        addr,
        problem,
    }
}

/// The 8-bit sum of `bytes`; a valid ACPI structure sums to 0.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

/// Parses and checks the RSDP at `addr`: signature, the ACPI 1.0 checksum
/// over 20 bytes and, from revision 2, the length (at least 36) and the
/// extended checksum over it.
pub fn parse_rsdp<R: PhysReader + ?Sized>(mem: &R, addr: u64) -> Result<Rsdp> {
    let mut b = [0u8; RSDP_V2_LEN];
    mem.read(addr, &mut b[..RSDP_V1_LEN])?;
    if b[..8] != RSDP_SIGNATURE {
        return Err(bad("RSDP", addr, "no \"RSD PTR \" signature"));
    }
    if checksum(&b[..RSDP_V1_LEN]) != 0 {
        return Err(bad("RSDP", addr, "checksum of the first 20 bytes is not 0"));
    }
    let mut oem_id = [0u8; 6];
    oem_id.copy_from_slice(&b[9..15]);
    let mut rsdp = Rsdp {
        addr,
        revision: b[15],
        oem_id,
        rsdt: u32_at(&b, 16),
        xsdt: None,
    };
    if rsdp.revision >= 2 {
        mem.read(addr + RSDP_V1_LEN as u64, &mut b[RSDP_V1_LEN..])?;
        let length = u32_at(&b, 20);
        if !(RSDP_V2_LEN as u32..=4096).contains(&length) {
            return Err(bad("RSDP", addr, "length is not in 36..=4096"));
        }
        // Sum the whole `length` bytes (usually exactly 36).
        let mut sum = checksum(&b);
        let mut rest = [0u8; 64];
        let mut at = RSDP_V2_LEN as u64;
        while at < u64::from(length) {
            let n = (u64::from(length) - at).min(rest.len() as u64) as usize;
            mem.read(addr + at, &mut rest[..n])?;
            sum = sum.wrapping_add(checksum(&rest[..n]));
            at += n as u64;
        }
        if sum != 0 {
            return Err(bad("RSDP", addr, "extended checksum is not 0"));
        }
        rsdp.xsdt = Some(u64_at(&b, 24)).filter(|&x| x != 0);
    }
    Ok(rsdp)
}

/// Searches `[start, end)` on 16-byte boundaries for a valid RSDP. A
/// candidate with the signature but a bad checksum is skipped (the
/// signature can occur by chance); the first such error is returned if no
/// valid RSDP is found.
fn search_rsdp<R: PhysReader + ?Sized>(mem: &R, start: u64, end: u64) -> Result<Option<Rsdp>> {
    let mut first_error = None;
    let mut addr = start.next_multiple_of(16);
    while addr + RSDP_V1_LEN as u64 <= end {
        let mut sig = [0u8; 8];
        mem.read(addr, &mut sig)?;
        if sig == RSDP_SIGNATURE {
            match parse_rsdp(mem, addr) {
                Ok(rsdp) => return Ok(Some(rsdp)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        addr += 16;
    }
    first_error.map_or(Ok(None), Err)
}

/// Finds the RSDP the way ACPI 6.5 section 5.2.5.1 says for BIOS
/// machines: in the first KiB of the EBDA (its segment is the word at
/// 0x40E), then in `[0xE0000, 0x100000)`. Fails with
/// [`Error::AcpiNotFound`] when neither holds one (or with the error of a
/// candidate whose checksum is wrong).
pub fn find_rsdp<R: PhysReader + ?Sized>(mem: &R) -> Result<Rsdp> {
    let mut seg = [0u8; 2];
    let mut first_error = None;
    if mem.read(EBDA_SEGMENT_PTR, &mut seg).is_ok() {
        let ebda = u64::from(u16::from_le_bytes(seg)) << 4;
        // A plausible EBDA lies in conventional memory, above the BDA.
        if (0x500..BIOS_AREA.0).contains(&ebda) {
            match search_rsdp(mem, ebda, ebda + EBDA_SEARCH_LEN) {
                Ok(Some(rsdp)) => return Ok(rsdp),
                Ok(None) => {}
                Err(e) => first_error = Some(e),
            }
        }
    }
    match search_rsdp(mem, BIOS_AREA.0, BIOS_AREA.1) {
        Ok(Some(rsdp)) => Ok(rsdp),
        Ok(None) => Err(first_error.unwrap_or(Error::AcpiNotFound("RSDP"))),
        Err(e) => Err(first_error.unwrap_or(e)),
    }
}

/// Reads the table at `addr` whose signature must be `signature` (named
/// `name` in errors), checks its length (36 bytes to [`MAX_TABLE_LEN`])
/// and checksum, and returns its header and bytes.
pub fn read_table<R: PhysReader + ?Sized>(
    mem: &R,
    addr: u64,
    signature: [u8; 4],
    name: &'static str,
) -> Result<(SdtHeader, Vec<u8>)> {
    let mut h = [0u8; SDT_HEADER_LEN];
    mem.read(addr, &mut h)?;
    if h[..4] != signature {
        return Err(bad(name, addr, "wrong signature"));
    }
    let length = u32_at(&h, 4);
    if length < SDT_HEADER_LEN as u32 {
        return Err(bad(name, addr, "length is shorter than the 36-byte header"));
    }
    if length > MAX_TABLE_LEN {
        return Err(bad(name, addr, "length is above 1 MiB"));
    }
    let mut bytes = vec![0u8; length as usize];
    mem.read(addr, &mut bytes)?;
    if checksum(&bytes) != 0 {
        return Err(bad(name, addr, "checksum is not 0"));
    }
    let mut oem_id = [0u8; 6];
    oem_id.copy_from_slice(&bytes[10..16]);
    let header = SdtHeader {
        signature,
        length,
        revision: bytes[8],
        oem_id,
    };
    Ok((header, bytes))
}

/// The physical addresses listed by the RSDT (`entry_size` 4) or XSDT (8).
fn root_entries<R: PhysReader + ?Sized>(mem: &R, addr: u64, xsdt: bool) -> Result<Vec<u64>> {
    let (signature, name, size) = if xsdt {
        (*b"XSDT", "XSDT", 8)
    } else {
        (*b"RSDT", "RSDT", 4)
    };
    let (_, bytes) = read_table(mem, addr, signature, name)?;
    let body = &bytes[SDT_HEADER_LEN..];
    if body.len() % size != 0 {
        return Err(bad(
            name,
            addr,
            "length is not the header plus whole entries",
        ));
    }
    Ok(body
        .chunks_exact(size)
        .map(|e| {
            if xsdt {
                u64_at(e, 0)
            } else {
                u64::from(u32_at(e, 0))
            }
        })
        .collect())
}

/// The physical address of the table with `signature` listed by the XSDT
/// (when the RSDP has one) or the RSDT. If the XSDT itself is broken the
/// RSDT is tried. Entries that cannot be read are skipped. Fails with
/// [`Error::AcpiNotFound`] (`name`) if no listed table has the signature.
pub fn find_table<R: PhysReader + ?Sized>(
    mem: &R,
    rsdp: &Rsdp,
    signature: [u8; 4],
    name: &'static str,
) -> Result<u64> {
    let entries = match rsdp.xsdt {
        Some(x) => root_entries(mem, x, true).or_else(|xsdt_err| {
            root_entries(mem, u64::from(rsdp.rsdt), false).map_err(|_| xsdt_err)
        })?,
        None => root_entries(mem, u64::from(rsdp.rsdt), false)?,
    };
    for addr in entries {
        let mut sig = [0u8; 4];
        if mem.read(addr, &mut sig).is_ok() && sig == signature {
            return Ok(addr);
        }
    }
    Err(Error::AcpiNotFound(name))
}

/// Parses the MADT at `addr`: header and checksum ([`read_table`]), the
/// local APIC address (replaced by a Local APIC Address Override entry),
/// and every Processor Local APIC (type 0) and Processor Local x2APIC
/// (type 9) entry. Other entry types are skipped by their length. An entry
/// shorter than 2 bytes, shorter than its type needs, or running past the
/// table is an error.
pub fn parse_madt<R: PhysReader + ?Sized>(mem: &R, addr: u64) -> Result<Madt> {
    const NAME: &str = "MADT";
    let (_, t) = read_table(mem, addr, MADT_SIGNATURE, NAME)?;
    if t.len() < SDT_HEADER_LEN + 8 {
        return Err(bad(
            NAME,
            addr,
            "too short for the local APIC address and flags",
        ));
    }
    let mut madt = Madt {
        local_apic_addr: u64::from(u32_at(&t, 36)),
        pcat_compat: u32_at(&t, 40) & 1 != 0,
        cpus: Vec::new(),
    };
    let mut at = SDT_HEADER_LEN + 8;
    while at < t.len() {
        if at + 2 > t.len() {
            return Err(bad(NAME, addr, "an entry header runs past the table"));
        }
        let (kind, len) = (t[at], usize::from(t[at + 1]));
        if len < 2 {
            return Err(bad(NAME, addr, "an entry is shorter than 2 bytes"));
        }
        if at + len > t.len() {
            return Err(bad(NAME, addr, "an entry runs past the table"));
        }
        let e = &t[at..at + len];
        match kind {
            MADT_LOCAL_APIC => {
                if len < 8 {
                    return Err(bad(
                        NAME,
                        addr,
                        "a local APIC entry is shorter than 8 bytes",
                    ));
                }
                let flags = u32_at(e, 4);
                madt.cpus.push(MadtCpu {
                    apic_id: u32::from(e[3]),
                    uid: u32::from(e[2]),
                    enabled: flags & LAPIC_ENABLED != 0,
                    online_capable: flags & LAPIC_ONLINE_CAPABLE != 0,
                    x2apic: false,
                });
            }
            MADT_LOCAL_X2APIC => {
                if len < 16 {
                    return Err(bad(
                        NAME,
                        addr,
                        "a local x2APIC entry is shorter than 16 bytes",
                    ));
                }
                let flags = u32_at(e, 8);
                madt.cpus.push(MadtCpu {
                    apic_id: u32_at(e, 4),
                    uid: u32_at(e, 12),
                    enabled: flags & LAPIC_ENABLED != 0,
                    online_capable: flags & LAPIC_ONLINE_CAPABLE != 0,
                    x2apic: true,
                });
            }
            MADT_LOCAL_APIC_OVERRIDE => {
                if len < 12 {
                    return Err(bad(
                        NAME,
                        addr,
                        "a local APIC address override is shorter than 12 bytes",
                    ));
                }
                madt.local_apic_addr = u64_at(e, 4);
            }
            _ => {}
        }
        at += len;
    }
    Ok(madt)
}

/// Finds the RSDP, the MADT through the XSDT/RSDT, and parses it.
pub fn find_madt<R: PhysReader + ?Sized>(mem: &R) -> Result<(Rsdp, Madt)> {
    let rsdp = find_rsdp(mem)?;
    let addr = find_table(mem, &rsdp, MADT_SIGNATURE, "MADT")?;
    Ok((rsdp, parse_madt(mem, addr)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multiboot::SliceReader;
    use std::vec::Vec;

    /// Physical memory from 0 to 1 MiB + 64 KiB for the tests.
    const MEM: usize = 0x11_0000;

    fn set_checksum(table: &mut [u8], at: usize) {
        table[at] = 0;
        table[at] = 0u8.wrapping_sub(checksum(table));
    }

    fn rsdp_v1(rsdt: u32) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(b"RSD PTR ");
        r.push(0); // checksum
        r.extend_from_slice(b"BOCHS ");
        r.push(0); // revision
        r.extend_from_slice(&rsdt.to_le_bytes());
        set_checksum(&mut r, 8);
        r
    }

    fn rsdp_v2(rsdt: u32, xsdt: u64) -> Vec<u8> {
        let mut r = rsdp_v1(rsdt);
        r[15] = 2;
        set_checksum(&mut r[..20], 8);
        r.extend_from_slice(&36u32.to_le_bytes());
        r.extend_from_slice(&xsdt.to_le_bytes());
        r.push(0); // extended checksum
        r.extend_from_slice(&[0; 3]);
        set_checksum(&mut r, 32);
        r
    }

    fn table(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(sig);
        t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
        t.push(1); // revision
        t.push(0); // checksum
        t.extend_from_slice(b"BOCHS BXPC    ");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(b"BXPC");
        t.extend_from_slice(&1u32.to_le_bytes());
        assert_eq!(t.len(), 36);
        t.extend_from_slice(body);
        set_checksum(&mut t, 9);
        t
    }

    fn lapic(uid: u8, id: u8, flags: u32) -> Vec<u8> {
        let mut e = vec![MADT_LOCAL_APIC, 8, uid, id];
        e.extend_from_slice(&flags.to_le_bytes());
        e
    }

    fn x2apic(id: u32, flags: u32, uid: u32) -> Vec<u8> {
        let mut e = vec![MADT_LOCAL_X2APIC, 16, 0, 0];
        e.extend_from_slice(&id.to_le_bytes());
        e.extend_from_slice(&flags.to_le_bytes());
        e.extend_from_slice(&uid.to_le_bytes());
        e
    }

    /// A MADT as QEMU builds it: local APIC at 0xFEE00000, PCAT_COMPAT,
    /// the given entries.
    fn madt(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        for e in entries {
            body.extend_from_slice(e);
        }
        table(b"APIC", &body)
    }

    fn put(mem: &mut [u8], at: usize, bytes: &[u8]) {
        mem[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Memory with an RSDP (v1) at 0xF5A00 -> RSDT at 0xE000 listing a FACP
    /// at 0xE100 and the MADT at 0xE200.
    fn machine(madt_bytes: &[u8]) -> Vec<u8> {
        let mut mem = vec![0u8; MEM];
        put(&mut mem, 0xf_5a00, &rsdp_v1(0xe000));
        let mut entries = Vec::new();
        entries.extend_from_slice(&0xe100u32.to_le_bytes());
        entries.extend_from_slice(&0xe200u32.to_le_bytes());
        put(&mut mem, 0xe000, &table(b"RSDT", &entries));
        put(&mut mem, 0xe100, &table(b"FACP", &[0; 16]));
        put(&mut mem, 0xe200, madt_bytes);
        mem
    }

    #[test]
    fn qemu_like_tables_give_the_enabled_cpus() {
        let m = madt(&[
            lapic(0, 0, LAPIC_ENABLED),
            lapic(1, 1, LAPIC_ENABLED),
            // IOAPIC entry (type 1, 12 bytes) is skipped by its length.
            vec![1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0],
            lapic(2, 2, 0), // -smp 2,maxcpus=3: present in the table, not enabled
        ]);
        let mem = machine(&m);
        let r = SliceReader::new(0, &mem);
        let (rsdp, madt) = find_madt(&r).unwrap();
        assert_eq!(rsdp.addr, 0xf_5a00);
        assert_eq!(rsdp.revision, 0);
        assert_eq!(&rsdp.oem_id, b"BOCHS ");
        assert_eq!(rsdp.xsdt, None);
        assert_eq!(madt.local_apic_addr, 0xfee0_0000);
        assert!(madt.pcat_compat);
        assert_eq!(madt.cpus.len(), 3);
        assert_eq!(madt.enabled_apic_ids(), [0, 1]);
        assert_eq!(
            madt.cpus[2],
            MadtCpu {
                apic_id: 2,
                uid: 2,
                enabled: false,
                online_capable: false,
                x2apic: false
            }
        );
    }

    #[test]
    fn rsdp_in_the_ebda_is_found_first() {
        let mut mem = machine(&madt(&[lapic(0, 0, 1)]));
        // EBDA at segment 0x9FC0 (0x9FC00), RSDP 16 bytes in.
        put(&mut mem, 0x40e, &0x9fc0u16.to_le_bytes());
        put(&mut mem, 0x9fc10, &rsdp_v1(0xe000));
        let r = SliceReader::new(0, &mem);
        assert_eq!(find_rsdp(&r).unwrap().addr, 0x9fc10);
    }

    #[test]
    fn x2apic_entries_override_and_duplicates() {
        let mut ovr = vec![MADT_LOCAL_APIC_OVERRIDE, 12, 0, 0];
        ovr.extend_from_slice(&0x1_fee0_0000u64.to_le_bytes());
        let m = madt(&[
            lapic(0, 0, LAPIC_ENABLED),
            x2apic(0, LAPIC_ENABLED, 0), // the same CPU again
            x2apic(300, LAPIC_ENABLED, 7),
            lapic(5, 5, LAPIC_ONLINE_CAPABLE),
            ovr,
        ]);
        let mem = machine(&m);
        let madt = parse_madt(&SliceReader::new(0, &mem), 0xe200).unwrap();
        assert_eq!(madt.local_apic_addr, 0x1_fee0_0000);
        assert_eq!(madt.enabled_apic_ids(), [0, 300]);
        assert_eq!(
            madt.cpus[2],
            MadtCpu {
                apic_id: 300,
                uid: 7,
                enabled: true,
                online_capable: false,
                x2apic: true
            }
        );
        assert!(madt.cpus[3].online_capable && !madt.cpus[3].enabled);
    }

    #[test]
    fn xsdt_is_preferred_and_rsdt_is_the_fallback() {
        let mut mem = machine(&madt(&[lapic(0, 0, 1), lapic(1, 3, 1)]));
        // A v2 RSDP whose XSDT at 0xF000 lists the MADT at 0xE200.
        put(&mut mem, 0xf_5a00, &rsdp_v2(0xe000, 0xf000));
        put(&mut mem, 0xf000, &table(b"XSDT", &0xe200u64.to_le_bytes()));
        let r = SliceReader::new(0, &mem);
        let rsdp = find_rsdp(&r).unwrap();
        assert_eq!(rsdp.revision, 2);
        assert_eq!(rsdp.xsdt, Some(0xf000));
        assert_eq!(
            find_table(&r, &rsdp, MADT_SIGNATURE, "MADT").unwrap(),
            0xe200
        );
        // Break the XSDT's checksum: the RSDT still leads to the MADT.
        mem[0xf000 + 9] ^= 0x55;
        let r = SliceReader::new(0, &mem);
        assert_eq!(
            find_table(&r, &rsdp, MADT_SIGNATURE, "MADT").unwrap(),
            0xe200
        );
        let (_, madt) = find_madt(&r).unwrap();
        assert_eq!(madt.enabled_apic_ids(), [0, 3]);
    }

    #[test]
    fn bad_rsdp_checksums_are_errors() {
        let mut mem = machine(&madt(&[lapic(0, 0, 1)]));
        mem[0xf_5a00 + 19] ^= 1; // inside the first 20 bytes
        let r = SliceReader::new(0, &mem);
        assert_res_eq!(
            find_rsdp(&r),
            Err::<Rsdp, _>(Error::BadAcpiTable {
                table: "RSDP",
                addr: 0xf_5a00,
                problem: "checksum of the first 20 bytes is not 0"
            })
        );
        // Extended checksum of a v2 RSDP.
        let mut mem = machine(&madt(&[lapic(0, 0, 1)]));
        let mut v2 = rsdp_v2(0xe000, 0xf000);
        v2[30] ^= 1; // a reserved byte, covered only by the extended sum
        put(&mut mem, 0xf_5a00, &v2);
        assert_res_eq!(
            parse_rsdp(&SliceReader::new(0, &mem), 0xf_5a00),
            Err::<Rsdp, _>(Error::BadAcpiTable {
                table: "RSDP",
                addr: 0xf_5a00,
                problem: "extended checksum is not 0"
            })
        );
    }

    #[test]
    fn no_rsdp_is_not_found() {
        let mem = vec![0u8; MEM];
        assert_res_eq!(
            find_rsdp(&SliceReader::new(0, &mem)),
            Err::<Rsdp, _>(Error::AcpiNotFound("RSDP"))
        );
        // Memory that ends inside the BIOS area: an out-of-bounds error.
        let short = vec![0u8; 0xf_0000];
        assert!(matches!(
            find_rsdp(&SliceReader::new(0, &short)),
            Err(Error::OutOfBounds { .. })
        ));
    }

    #[test]
    fn bad_tables_are_errors() {
        // MADT checksum.
        let mut m = madt(&[lapic(0, 0, 1)]);
        m[20] ^= 0x10;
        let mem = machine(&m);
        assert_res_eq!(
            find_madt(&SliceReader::new(0, &mem)),
            Err::<(Rsdp, Madt), _>(Error::BadAcpiTable {
                table: "MADT",
                addr: 0xe200,
                problem: "checksum is not 0"
            })
        );
        // A length shorter than the header.
        let mut m = madt(&[]);
        m[4..8].copy_from_slice(&20u32.to_le_bytes());
        let mem = machine(&m);
        assert_res_eq!(
            parse_madt(&SliceReader::new(0, &mem), 0xe200),
            Err::<Madt, _>(Error::BadAcpiTable {
                table: "MADT",
                addr: 0xe200,
                problem: "length is shorter than the 36-byte header"
            })
        );
        // A huge length.
        m[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let mem = machine(&m);
        assert_res_eq!(
            parse_madt(&SliceReader::new(0, &mem), 0xe200),
            Err::<Madt, _>(Error::BadAcpiTable {
                table: "MADT",
                addr: 0xe200,
                problem: "length is above 1 MiB"
            })
        );
        // A table that runs past the end of memory.
        let mut mem = vec![0u8; 0xe200 + 40];
        let m = madt(&[lapic(0, 0, 1)]);
        put(&mut mem, 0xe200, &m[..40]);
        assert_res_eq!(
            parse_madt(&SliceReader::new(0, &mem), 0xe200),
            Err::<Madt, _>(Error::OutOfBounds {
                addr: 0xe200,
                len: m.len() as u64
            })
        );
        // Wrong signature where the MADT should be.
        let mem = machine(&table(b"FACP", &[0; 8]));
        assert!(matches!(
            parse_madt(&SliceReader::new(0, &mem), 0xe200),
            Err(Error::BadAcpiTable {
                problem: "wrong signature",
                ..
            })
        ));
        // An RSDT whose body is not whole entries.
        let mut mem = machine(&madt(&[lapic(0, 0, 1)]));
        put(&mut mem, 0xe000, &table(b"RSDT", &[0, 0xe2, 0, 0, 0]));
        assert_res_eq!(
            find_madt(&SliceReader::new(0, &mem)),
            Err::<(Rsdp, Madt), _>(Error::BadAcpiTable {
                table: "RSDT",
                addr: 0xe000,
                problem: "length is not the header plus whole entries"
            })
        );
    }

    #[test]
    fn no_madt_in_the_rsdt_is_not_found() {
        // The MADT slot holds a second FACP.
        let mem = machine(&table(b"FACP", &[0; 8]));
        assert_res_eq!(
            find_madt(&SliceReader::new(0, &mem)),
            Err::<(Rsdp, Madt), _>(Error::AcpiNotFound("MADT"))
        );
    }

    #[test]
    fn truncated_madt_entries_are_errors() {
        let cases: [(Vec<u8>, &str); 4] = [
            (vec![0, 0], "an entry is shorter than 2 bytes"),
            (
                vec![0, 6, 0, 1, 1, 0],
                "a local APIC entry is shorter than 8 bytes",
            ),
            (
                vec![9, 8, 0, 0, 1, 0, 0, 0],
                "a local x2APIC entry is shorter than 16 bytes",
            ),
            (vec![0, 8, 0, 1], "an entry runs past the table"),
        ];
        for (entry, problem) in cases {
            let m = madt(&[lapic(0, 0, 1), entry]);
            let mem = machine(&m);
            assert_res_eq!(
                parse_madt(&SliceReader::new(0, &mem), 0xe200),
                Err::<Madt, _>(Error::BadAcpiTable {
                    table: "MADT",
                    addr: 0xe200,
                    problem
                })
            );
        }
        // One stray byte after the last entry.
        let m = madt(&[lapic(0, 0, 1), vec![0]]);
        let mem = machine(&m);
        assert!(matches!(
            parse_madt(&SliceReader::new(0, &mem), 0xe200),
            Err(Error::BadAcpiTable {
                problem: "an entry header runs past the table",
                ..
            })
        ));
    }

    #[test]
    fn checksum_is_the_byte_sum() {
        assert_eq!(checksum(&[]), 0);
        assert_eq!(checksum(&[0xff, 0x01]), 0);
        assert_eq!(checksum(&[0x80, 0x80, 0x05]), 5);
    }
}
