//! Writing a configuration back as TOML, in the layout a person would write:
//! addresses in hexadecimal, sizes with their value in words, every default
//! spelt out.

use alloc::format;
use alloc::string::String;
use core::fmt::Write;

use crate::schema::*;

/// `0x3f8`, `0xfee0_0000`: hexadecimal with `_` every four digits.
pub(crate) fn hex(v: u64) -> String {
    let digits = format!("{v:x}");
    let mut out = String::from("0x");
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 4 == 0 {
            out.push('_');
        }
        out.push(c);
    }
    out
}

/// `128 MiB`, `4 KiB`, `6 bytes`.
pub(crate) fn human_size(v: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    for (shift, unit) in UNITS {
        if v != 0 && v % (1u64 << shift) == 0 {
            return format!("{} {unit}", v >> shift);
        }
    }
    format!("{v} bytes")
}

/// A TOML basic string, quoted and escaped.
fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl VmConfig {
    /// The configuration as TOML text that [`VmConfig::from_toml_str`] reads
    /// back to an equal value (`from_toml_str` needs the `std` feature; the
    /// writer does not).
    pub fn to_toml_string(&self) -> String {
        let mut o = String::new();
        // `write!` to a String cannot fail; the results are ignored.
        let _ = writeln!(o, "id = {}", self.id);
        let _ = writeln!(o, "name = {}", string(&self.name));

        let _ = writeln!(o, "\n[vcpus]");
        let _ = writeln!(o, "count = {}", self.vcpus.count);
        if let Some(ids) = &self.vcpus.phys_cpu_affinity {
            let list: alloc::vec::Vec<String> = ids.iter().map(|i| format!("{i}")).collect();
            let _ = writeln!(o, "phys_cpu_affinity = [{}]", list.join(", "));
        }

        for r in &self.memory {
            let _ = writeln!(o, "\n[[memory]]");
            let _ = writeln!(o, "gpa = {}", hex(r.gpa));
            let _ = writeln!(o, "size = {} # {}", hex(r.size), human_size(r.size));
            let _ = writeln!(o, "map = {}", string(r.map.as_str()));
            if let MapKind::Linear { hpa } = r.map {
                let _ = writeln!(o, "hpa = {}", hex(hpa));
            }
            if r.is_ram() {
                let names: alloc::vec::Vec<String> = r.flags.names().map(string).collect();
                let _ = writeln!(o, "flags = [{}]", names.join(", "));
            }
        }

        let k = &self.kernel;
        let _ = writeln!(o, "\n[kernel]");
        let _ = writeln!(o, "image = {}", string(&k.image));
        let _ = writeln!(o, "protocol = {}", string(k.protocol.as_str()));
        if let Some(a) = k.load_addr {
            let _ = writeln!(o, "load_addr = {}", hex(a));
        }
        if let Some(a) = k.entry {
            let _ = writeln!(o, "entry = {}", hex(a));
        }
        if let Some(c) = &k.cmdline {
            let _ = writeln!(o, "cmdline = {}", string(c));
        }
        if let Some(rd) = &k.ramdisk {
            let _ = writeln!(o, "\n[kernel.ramdisk]");
            let _ = writeln!(o, "path = {}", string(&rd.path));
            if let Some(a) = rd.load_addr {
                let _ = writeln!(o, "load_addr = {}", hex(a));
            }
        }

        for d in &self.devices.emulated {
            let _ = writeln!(o, "\n[[devices.emulated]]");
            let _ = writeln!(o, "kind = {}", string(d.kind.as_str()));
            match d.base {
                DeviceBase::Port(p) => {
                    let _ = writeln!(o, "port = {}", hex(p.into()));
                    let _ = writeln!(o, "size = {}", d.size);
                }
                DeviceBase::Mmio(a) => {
                    let _ = writeln!(o, "mmio = {}", hex(a));
                    let _ = writeln!(o, "size = {} # {}", hex(d.size), human_size(d.size));
                }
            }
            if let Some(irq) = d.irq {
                let _ = writeln!(o, "irq = {irq}");
            }
        }

        for d in &self.devices.passthrough {
            let _ = writeln!(o, "\n[[devices.passthrough]]");
            let _ = writeln!(o, "name = {}", string(&d.name));
            match d.resource {
                PassthroughResource::Mmio { gpa, hpa, size } => {
                    let _ = writeln!(o, "gpa = {}", hex(gpa));
                    let _ = writeln!(o, "hpa = {}", hex(hpa));
                    let _ = writeln!(o, "size = {} # {}", hex(size), human_size(size));
                }
                PassthroughResource::Ports { base, count } => {
                    let _ = writeln!(o, "port = {}", hex(base.into()));
                    let _ = writeln!(o, "size = {count}");
                }
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_groups_by_four_digits() {
        assert_eq!(hex(0), "0x0");
        assert_eq!(hex(0x3f8), "0x3f8");
        assert_eq!(hex(0xffff), "0xffff");
        assert_eq!(hex(0x1_0000), "0x1_0000");
        assert_eq!(hex(0xfee0_0000), "0xfee0_0000");
        assert_eq!(hex(0x800_0000), "0x800_0000");
        assert_eq!(hex(u64::MAX), "0xffff_ffff_ffff_ffff");
    }

    #[test]
    fn human_sizes_pick_the_largest_exact_unit() {
        assert_eq!(human_size(128 << 20), "128 MiB");
        assert_eq!(human_size(0x1000), "4 KiB");
        assert_eq!(human_size(3 << 30), "3 GiB");
        assert_eq!(human_size(1536), "1536 bytes");
        assert_eq!(human_size(0), "0 bytes");
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(string("plain"), "\"plain\"");
        assert_eq!(string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(string("x\ny\u{1}\u{7f}"), "\"x\\ny\\u0001\\u007F\"");
    }
}
