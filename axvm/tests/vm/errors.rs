//! Configurations and images a VM cannot be built from.

use axaddrspace::test_util::HostHal;
use axvm::Error;
use axvmconfig::{
    BootProtocol as ConfigBoot, DeviceBase, DeviceKind, EmulatedDevice, MapKind, MemFlags,
    MemoryRegion, RamdiskConfig,
};

use crate::common::*;

#[test]
fn every_device_kind_not_emulated_is_refused_by_name() {
    let emulated = [
        DeviceKind::Uart16550,
        DeviceKind::DebugExit,
        DeviceKind::PowerOff,
        DeviceKind::TestMmio,
        DeviceKind::Pic8259,
        DeviceKind::Hpet,
        DeviceKind::Lapic,
        DeviceKind::IoApic,
    ];
    let before = HostHal::live_frames();
    let mut refused = 0;
    for kind in DeviceKind::ALL {
        if emulated.contains(&kind) {
            continue;
        }
        let mut c = test_config();
        c.devices.emulated.push(EmulatedDevice::new(kind));
        let index = c.devices.emulated.len() - 1;
        let err = build_with(&c, vec![]).err().unwrap();
        assert_eq!(err, Error::DeviceNotEmulated { index, kind });
        assert_eq!(
            err.to_string(),
            format!("devices.emulated[{index}]: device kind {kind} not emulated yet")
        );
        refused += 1;
    }
    // pit8254, rtc, pci_host.
    assert_eq!(refused, 3);
    // The RAM allocated before the refusal was given back.
    assert_eq!(HostHal::live_frames(), before);
}

#[test]
fn power_off_device_is_built() {
    // The test-guest config has one at 0x604.
    let (vm, _) = build_with(&test_config(), vec![]).unwrap();
    assert_eq!(
        vm.devices().find_port(0x605).map(|d| d.name().to_string()),
        Some("acpi-pm1a-cnt@0x604".into())
    );
}

#[test]
fn an_invalid_config_lists_its_problems() {
    let mut c = test_config();
    c.vcpus.count = 0;
    let Err(Error::Config(problems)) = build_with(&c, vec![]) else {
        panic!("expected a config error");
    };
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field, "vcpus.count");
}

#[test]
fn host_memory_regions_are_not_supported_yet() {
    let mut c = test_config();
    c.memory.push(MemoryRegion {
        gpa: 0x100_0000,
        size: 0x1000,
        map: MapKind::Linear { hpa: 0x8000_0000 },
        flags: MemFlags::RWX,
    });
    let Err(Error::Config(problems)) = build_with(&c, vec![]) else {
        panic!("expected a config error");
    };
    assert_eq!(problems[0].field, "memory[1].map");
    assert!(problems[0].reason.contains("\"linear\""), "{}", problems[0]);
}

#[test]
fn a_uart_with_the_wrong_size_is_refused() {
    let mut c = test_config();
    c.devices.emulated[0].size = 4;
    let Err(Error::Config(problems)) = build_with(&c, vec![]) else {
        panic!("expected a config error");
    };
    assert_eq!(problems[0].field, "devices.emulated[0].size");
}

#[test]
fn a_second_test_window_next_to_the_first() {
    let mut c = test_config();
    let mut d = EmulatedDevice::new(DeviceKind::TestMmio);
    d.base = DeviceBase::Mmio(0xfeb0_1000);
    c.devices.emulated.push(d);
    let (vm, _) = build_with(&c, vec![]).unwrap();
    assert!(vm.devices().find_mmio(gpa(0xfeb0_1fff)).is_some());
}

#[test]
fn unsupported_boot_setups() {
    let mut c = test_config();
    c.kernel.protocol = ConfigBoot::LinuxBzImage;
    assert!(matches!(
        build_with(&c, vec![]),
        Err(Error::Unsupported(m)) if m.contains("bzImage")
    ));

    let mut c = test_config();
    c.kernel.ramdisk = Some(RamdiskConfig {
        path: "initrd".into(),
        load_addr: None,
    });
    assert!(matches!(
        build_with(&c, vec![]),
        Err(Error::Unsupported(m)) if m.contains("ramdisk")
    ));
}

#[test]
fn an_image_that_does_not_fit_is_refused() {
    // Loaded at 0xfff000, its BSS runs past the 16 MiB of RAM.
    let mut c = test_config();
    c.kernel.load_addr = Some(0xff_f000);
    assert_eq!(
        build_with(&c, vec![]).err().unwrap(),
        Error::SegmentOutsideMemory {
            gpa: gpa(0xff_f000),
            len: 0x2000
        }
    );
    // Not a multiboot image at all.
    let c = test_config();
    let err = axvm::Vm::<crate::mock::MockVcpu, HostHal>::new(
        &c,
        &[0u8; 64],
        axaddrspace::NestedPagingKind::Npt,
        |_| vec![],
        std::sync::Arc::new(axdevice::NullBackend),
    )
    .unwrap_err();
    assert_eq!(err, Error::NoMultibootHeader);
}
