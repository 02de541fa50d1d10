//! Every shipped config in `../configs` is valid and survives both encodings;
//! every bad config in `tests/data` is refused with the messages it announces
//! in its `# expect:` lines.

use std::path::{Path, PathBuf};

use axvmconfig::{DeviceKind, Error, MapKind, VmConfig};

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

fn shipped() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let files = toml_files(&dir);
    assert!(
        files.len() >= 4,
        "expected the shipped configs, found {files:?}"
    );
    files
}

fn bad() -> Vec<PathBuf> {
    let files = toml_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data"));
    assert!(
        files.len() >= 5,
        "expected the bad configs, found {files:?}"
    );
    files
}

#[test]
fn every_shipped_config_passes_check() {
    for path in shipped() {
        if let Err(e) = VmConfig::load_file(&path) {
            panic!("{} should be valid:\n{e}", path.display());
        }
    }
}

#[test]
fn every_shipped_config_round_trips_through_the_binary_form() {
    for path in shipped() {
        let config = VmConfig::load_file(&path).unwrap();
        let bytes = config.to_bytes().unwrap();
        assert_eq!(&bytes[..8], b"AXVMCFG\0", "{}", path.display());
        assert_eq!(
            VmConfig::from_bytes(&bytes).unwrap(),
            config,
            "{}",
            path.display()
        );
    }
}

#[test]
fn every_shipped_config_round_trips_through_normalized_toml() {
    for path in shipped() {
        let config = VmConfig::load_file(&path).unwrap();
        let text = config.to_toml_string();
        let again = VmConfig::from_toml_str(&text)
            .unwrap_or_else(|e| panic!("{}: dump does not re-parse: {e}\n{text}", path.display()));
        assert_eq!(again, config, "{}", path.display());
        // Normalizing twice changes nothing.
        assert_eq!(again.to_toml_string(), text);
    }
}

#[test]
fn every_bad_config_fails_with_its_expected_messages() {
    for path in bad() {
        let text = std::fs::read_to_string(&path).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            path.display()
        );
        let err = match VmConfig::load_file(&path) {
            Ok(_) => panic!("{} should be refused", path.display()),
            Err(e) => e,
        };
        let shown = err.to_string();
        let name = path.display().to_string();
        for line in shown.lines() {
            assert!(
                line.starts_with(&format!("{name}: ")),
                "no file name in `{line}`"
            );
        }
        for want in expected {
            assert!(
                shown.contains(want),
                "{}: message lacks `{want}`; it is:\n{shown}",
                path.display()
            );
        }
    }
}

#[test]
fn zero_vcpus_names_the_field_as_xtask_expects() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad-zero-vcpus.toml");
    let Err(Error::Invalid(list)) = VmConfig::load_file(&path) else {
        panic!("expected a validation error");
    };
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].field, "vcpus.count");
    assert_eq!(
        list[0].file.as_deref(),
        Some(path.display().to_string().as_str())
    );
}

#[test]
fn nimbos_config_matches_what_nimbos_needs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let c = VmConfig::load_file(dir.join("nimbos.toml")).unwrap();
    // 128 MiB of RAM at 0 (PHYS_MEMORY_SIZE of the `pc` build).
    assert_eq!(c.ram_size(), 128 << 20);
    assert_eq!(c.memory[0].gpa, 0);
    assert_eq!(c.memory[0].map, MapKind::Alloc);
    // Loaded at 0x20_0000; .bss ends at 0x69_3000, inside RAM.
    assert_eq!(c.kernel.load_addr, Some(0x20_0000));
    assert!(c.is_ram_range(0x20_0000, 0x69_3000 - 0x20_0000));
    c.check_kernel_size(0x8e000).unwrap();
    let at = |k: DeviceKind| {
        c.devices
            .emulated
            .iter()
            .find(|d| d.kind == k)
            .map(|d| d.range().0)
    };
    assert_eq!(at(DeviceKind::Hpet), Some(0xfed0_0000));
    assert_eq!(at(DeviceKind::Lapic), Some(0xfee0_0000));
    assert_eq!(at(DeviceKind::IoApic), Some(0xfec0_0000));
    assert_eq!(at(DeviceKind::Uart16550), Some(0x3f8));
    assert_eq!(at(DeviceKind::PowerOff), Some(0x604));
    assert_eq!(at(DeviceKind::Pic8259), Some(0x20));
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let err = VmConfig::load_file("/nonexistent/vm.toml").unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    assert!(
        err.to_string().starts_with("/nonexistent/vm.toml: "),
        "{err}"
    );
}

#[test]
fn test_guest_config_matches_what_the_test_guests_need() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let c = VmConfig::load_file(dir.join("test-guest.toml")).unwrap();
    // guests/README.md: one CPU, 16 MiB of RAM at GPA 0, multiboot, loaded
    // at 0x200000.
    assert_eq!(c.vcpus.count, 1);
    assert_eq!(c.ram_size(), 16 << 20);
    assert_eq!((c.memory[0].gpa, c.memory[0].map), (0, MapKind::Alloc));
    assert!(c.is_ram_range(0x20_0000, 0x2_0000));
    assert_eq!(c.kernel.protocol, axvmconfig::BootProtocol::Multiboot);
    let dev = |k: DeviceKind| {
        let d = c.devices.emulated.iter().find(|d| d.kind == k);
        d.map(|d| d.range())
    };
    // COM1, isa-debug-exit at 0xf4 (4 ports), the MMIO window of `mmio`.
    assert_eq!(dev(DeviceKind::Uart16550), Some((0x3f8, 0x400)));
    assert_eq!(dev(DeviceKind::DebugExit), Some((0xf4, 0xf8)));
    assert_eq!(dev(DeviceKind::TestMmio), Some((0xfeb0_0000, 0xfeb0_1000)));
}
