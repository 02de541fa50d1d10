//! Reading TOML (the `std` feature).

use std::format;
use std::path::Path;
use std::string::{String, ToString};
use std::vec::Vec;

use crate::binary::MAGIC;
use crate::error::{ConfigError, Error, Result};
use crate::schema::VmConfig;

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn parse_error(text: &str, err: serde_path_to_error::Error<toml::de::Error>) -> Error {
    let path = err.path().to_string();
    let field = if path == "." { String::new() } else { path };
    let inner = err.into_inner();
    // toml's messages may span lines ("invalid key\nexpected ..."): keep one.
    let lines: Vec<&str> = inner
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut reason = lines.join("; ");
    if let Some((line, column)) = location(text, &field, inner.span()) {
        reason.push_str(&format!(" (line {line}, column {column})"));
    }
    Error::Parse(ConfigError::new(field, reason))
}

/// Where to point for an error at `field` that toml located at `span`.
///
/// toml gives an error about a whole element of an array of tables
/// (`memory[1]: map = "linear" needs hpa`) the span of the array, which is
/// the first `[[memory]]` header; point at the element's own header instead. A span over the whole document (a
/// missing top-level field) says nothing and is dropped too.
fn location(
    text: &str,
    field: &str,
    span: Option<std::ops::Range<usize>>,
) -> Option<(usize, usize)> {
    let span = span?;
    if span.start == 0 && span.end >= text.trim_end().len() && !text.is_empty() {
        return None;
    }
    let Some(element) = field.strip_suffix(']') else {
        return Some(line_column(text, span.start));
    };
    let toml_says = Some(line_column(text, span.start));
    let Some((array, index)) = element.rsplit_once('[') else {
        return toml_says;
    };
    let Ok(index) = index.parse::<usize>() else {
        return toml_says;
    };
    // Only an element of an array of tables has a header to point at.
    let mut offset = 0;
    let mut seen = 0;
    for line in text.split_inclusive('\n') {
        let header = line.trim();
        if let Some(name) = header
            .strip_prefix("[[")
            .and_then(|h| h.split('#').next())
            .and_then(|h| h.trim_end().strip_suffix("]]"))
        {
            let name: String = name.chars().filter(|c| !c.is_whitespace()).collect();
            if name == array {
                if seen == index {
                    let indent = line.len() - line.trim_start().len();
                    return Some(line_column(text, offset + indent));
                }
                seen += 1;
            }
        }
        offset += line.len();
    }
    // No such header: an element of an inline array, whose span is its own.
    toml_says
}

impl VmConfig {
    /// Reads a configuration from TOML text, without validating it. A syntax
    /// error, an unknown field or a value of the wrong type is an
    /// [`Error::Parse`] naming the field and the line.
    pub fn parse_toml(text: &str) -> Result<VmConfig> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| parse_error(text, e))
    }

    /// Reads a configuration from TOML text and validates it.
    ///
    /// ```
    /// let cfg = axvmconfig::VmConfig::from_toml_str(r#"
    ///     id = 1
    ///     name = "tiny"
    ///     [[memory]]
    ///     gpa = 0
    ///     size = "16M"
    ///     [kernel]
    ///     image = "guests/hello"
    ///     protocol = "multiboot"
    /// "#).unwrap();
    /// assert_eq!(cfg.memory[0].size, 16 << 20);
    /// ```
    pub fn from_toml_str(text: &str) -> Result<VmConfig> {
        let config = Self::parse_toml(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates the TOML file at `path`; every error names the file.
    pub fn load_file(path: impl AsRef<Path>) -> Result<VmConfig> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: name.clone(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|e| e.with_file(&name))
    }

    /// Reads and validates a configuration file in either form: the binary
    /// form when the file starts with [`MAGIC`], TOML otherwise.
    pub fn load_any_file(path: impl AsRef<Path>) -> Result<VmConfig> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: name.clone(),
            source,
        })?;
        let result = if bytes.starts_with(&MAGIC) {
            Self::from_bytes(&bytes)
        } else {
            match std::str::from_utf8(&bytes) {
                Ok(text) => Self::from_toml_str(text),
                Err(e) => Err(Error::Parse(ConfigError::new(
                    "",
                    format!("neither TOML (not UTF-8: {e}) nor a binary config"),
                ))),
            }
        };
        result.map_err(|e| e.with_file(&name))
    }

    /// Writes the binary form to `path`.
    pub fn write_binary_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 11), (2, 6));
        assert_eq!(line_column(text, 1000), (3, 1));
    }
}

#[cfg(test)]
mod toml_tests {
    use crate::*;

    const MINIMAL: &str = r#"
id = 3
name = "m"
[[memory]]
gpa = 0
size = 0x100_0000
[kernel]
image = "k"
protocol = "multiboot"
"#;

    /// Parses `MINIMAL` plus `extra`, and returns the single error line.
    fn error_of(extra: &str) -> String {
        let text = format!("{MINIMAL}{extra}");
        match VmConfig::from_toml_str(&text) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => {
                let s = e.to_string();
                assert_eq!(s.lines().count(), 1, "{s}");
                s
            }
        }
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let c = VmConfig::from_toml_str(MINIMAL).unwrap();
        assert_eq!(c.id, 3);
        assert_eq!(
            c.vcpus,
            VcpuConfig {
                count: 1,
                phys_cpu_affinity: None
            }
        );
        assert_eq!(c.memory[0].map, MapKind::Alloc);
        assert_eq!(c.memory[0].flags, MemFlags::RWX);
        assert_eq!(c.kernel.load_addr, None);
        assert_eq!(c.devices, DevicesConfig::default());
        let c = VmConfig::from_toml_str(&format!(
            "{MINIMAL}[[devices.emulated]]\nkind = \"hpet\"\n[[devices.emulated]]\nkind = \"uart16550\"\nport = 0x2f8\nirq = 3\n[[devices.emulated]]\nkind = \"test_mmio\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.devices.emulated,
            [
                EmulatedDevice {
                    kind: DeviceKind::Hpet,
                    base: DeviceBase::Mmio(0xfed0_0000),
                    size: 0x1000,
                    irq: None
                },
                EmulatedDevice {
                    kind: DeviceKind::Uart16550,
                    base: DeviceBase::Port(0x2f8),
                    size: 8,
                    irq: Some(3)
                },
                EmulatedDevice {
                    kind: DeviceKind::TestMmio,
                    base: DeviceBase::Mmio(0xfeb0_0000),
                    size: 0x1000,
                    irq: None
                },
            ]
        );
    }

    #[test]
    fn every_map_kind_and_flag_reads() {
        let c = VmConfig::from_toml_str(&format!(
            "{MINIMAL}
[[memory]]
gpa = 0x100_0000
size = \"1M\"
map = \"linear\"
hpa = 0x8000_0000
flags = [\"read\", \"write\"]
[[memory]]
gpa = 0x200_0000
size = \"4 KiB\"
map = \"identical\"
flags = [\"read\", \"device\", \"uncached\"]
[[memory]]
gpa = 0x300_0000
size = \"2M\"
map = \"alloc_lazy\"
[[memory]]
gpa = 0x400_0000
size = \"4K\"
map = \"reserved\"
flags = [\"read\"]
"
        ))
        .unwrap();
        let maps: Vec<MapKind> = c.memory.iter().map(|r| r.map).collect();
        assert_eq!(
            maps,
            [
                MapKind::Alloc,
                MapKind::Linear { hpa: 0x8000_0000 },
                MapKind::Identical,
                MapKind::AllocLazy,
                MapKind::Reserved
            ]
        );
        assert_eq!(c.memory[1].size, 1 << 20);
        assert_eq!(c.memory[1].flags, MemFlags::READ | MemFlags::WRITE);
        assert_eq!(
            c.memory[2].flags,
            MemFlags::READ | MemFlags::DEVICE | MemFlags::UNCACHED
        );
        assert_eq!(
            c.memory[4].flags,
            MemFlags::empty(),
            "reserved has no rights"
        );
    }

    #[test]
    fn passthrough_forms() {
        let c = VmConfig::from_toml_str(&format!(
            "{MINIMAL}
[[devices.passthrough]]
name = \"vga\"
gpa = 0xa_0000
size = \"128K\"
[[devices.passthrough]]
name = \"fb\"
gpa = 0xe000_0000
hpa = 0xc000_0000
size = \"16M\"
[[devices.passthrough]]
name = \"com2\"
port = 0x2f8
size = 8
"
        ))
        .unwrap_err();
        // [0xa0000, 0xc0000) lies in the RAM at 0: the first one is refused.
        assert_eq!(
            c.to_string(),
            "devices.passthrough[0].gpa: mmio [0xa0000, 0xc0000) overlaps RAM of memory[0] [0x0, 0x1000000)"
        );
        let c = VmConfig::parse_toml(&format!(
            "{MINIMAL}
[[devices.passthrough]]
name = \"fb\"
gpa = 0xe000_0000
size = \"16M\"
[[devices.passthrough]]
name = \"com2\"
port = 0x2f8
size = 8
"
        ))
        .unwrap();
        assert_eq!(
            c.devices.passthrough[0].resource,
            PassthroughResource::Mmio {
                gpa: 0xe000_0000,
                hpa: 0xe000_0000,
                size: 16 << 20
            }
        );
        assert_eq!(
            c.devices.passthrough[1].resource,
            PassthroughResource::Ports {
                base: 0x2f8,
                count: 8
            }
        );
    }

    #[test]
    fn schema_errors_name_the_field_and_line() {
        assert_eq!(
            error_of("[vcpus]\ncount = \"two\"\n"),
            "vcpus.count: invalid type: string \"two\", expected usize (line 11, column 9)"
        );
        assert_eq!(
            error_of("[vcpus]\ncont = 2\n"),
            "vcpus.cont: unknown field `cont`, expected `count` or `phys_cpu_affinity` (line 11, column 1)"
        );
        assert_eq!(
            error_of("[[devices.emulated]]\nkind = \"vga\"\n"),
            "devices.emulated[0].kind: unknown variant `vga`, expected one of `uart16550`, `debug_exit`, `pic8259`, `pit8254`, `rtc`, `hpet`, `ioapic`, `lapic`, `power_off`, `pci_host`, `test_mmio` (line 11, column 8)"
        );
        assert_eq!(
            error_of("[[devices.emulated]]\nkind = \"uart16550\"\nport = 0x10000\n"),
            "devices.emulated[0].port: invalid value: integer `65536`, expected u16 (line 12, column 8)"
        );
        assert_eq!(
            error_of("[[devices.emulated]]\nkind = \"rtc\"\nport = 0x70\nmmio = 0x1000\n"),
            "devices.emulated[0]: a rtc has either `port` or `mmio`, not both (line 10, column 1)"
        );
        assert_eq!(
            error_of("[[memory]]\ngpa = 0x100_0000\nsize = \"1M\"\nmap = \"linear\"\n"),
            "memory[1]: map = \"linear\" needs `hpa`, the host physical address it maps (line 10, column 1)"
        );
        assert_eq!(
            error_of("[[memory]]\ngpa = 0x100_0000\nsize = \"1M\"\nhpa = 0\n"),
            "memory[1]: `hpa` is only meaningful with map = \"linear\" (this region has map = \"alloc\") (line 10, column 1)"
        );
        assert_eq!(
            error_of("[[memory]]\ngpa = 0x100_0000\nsize = \"1M\"\nflags = [\"read\", \"rw\"]\n"),
            "memory[1].flags[1]: unknown variant `rw`, expected one of `read`, `write`, `exec`, `device`, `uncached` (line 13, column 9)"
        );
        assert_eq!(
            error_of("[[memory]]\ngpa = 0x100_0000\nsize = -4096\n"),
            "memory[1].size: invalid value: integer `-4096`, expected a size: an integer, or a string such as \"16M\" or \"4 KiB\" (line 12, column 8)"
        );
        assert_eq!(
            error_of("[[devices.passthrough]]\nname = \"x\"\nsize = 8\n"),
            "devices.passthrough[0]: a passthrough device needs `gpa` (an MMIO range) or `port` (I/O ports) (line 10, column 1)"
        );
    }

    #[test]
    fn missing_required_fields_are_named() {
        let e = VmConfig::from_toml_str("id = 1\nname = \"x\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "missing field `kernel`",
            "no position for the whole file"
        );
        let e =
            VmConfig::from_toml_str("id = 1\nname = \"x\"\n[kernel]\nimage = \"k\"\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("kernel: missing field `protocol`"),
            "{e}"
        );
    }

    #[test]
    fn syntax_errors_keep_toml_position() {
        let e = VmConfig::from_toml_str("id = 1\nname = \"unterminated\n").unwrap_err();
        let Error::Parse(ce) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(ce.field, "");
        assert_eq!(ce.reason, "invalid basic string (line 2, column 21)");
        let reason = ce.reason.clone();
        assert_eq!(
            e.with_file("vm.toml").to_string(),
            format!("vm.toml: {reason}")
        );
    }

    #[test]
    fn config_error_display() {
        let mut e = ConfigError::new("memory[1].size", "is 0");
        assert_eq!(e.to_string(), "memory[1].size: is 0");
        e.file = Some("a.toml".into());
        assert_eq!(e.to_string(), "a.toml: memory[1].size: is 0");
        let err = Error::Invalid(vec![
            e.clone(),
            ConfigError::new("name", "must not be empty"),
        ]);
        assert_eq!(err.config_errors().len(), 2);
        assert_eq!(
            err.with_file("b.toml").to_string(),
            "b.toml: memory[1].size: is 0\nb.toml: name: must not be empty"
        );
    }
}
