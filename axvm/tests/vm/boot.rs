//! Building a VM: memory, image, boot information, vCPU setup.

use std::sync::Arc;

use axaddrspace::test_util::HostHal;
use axaddrspace::{MappingFlags, NestedPagingKind};
use axdevice::NullBackend;
use axvm::{MULTIBOOT_INFO_GPA, Vm, VmState};
use axvmconfig::{BootProtocol as ConfigBoot, MapKind, MemFlags, MemoryRegion};
use x86_vcpu::{BootProtocol, GuestState, X86VcpuSetupConfig};

use crate::common::*;
use crate::mock::MockVcpu;

// Multiboot information offsets (Multiboot 0.6.96 section 3.3).
const FLAGS: usize = 0;
const MEM_LOWER: usize = 4;
const MEM_UPPER: usize = 8;
const CMDLINE: usize = 16;
const MMAP_LENGTH: usize = 44;
const MMAP_ADDR: usize = 48;
const BOOT_LOADER_NAME: usize = 64;

fn c_string(vm: &TestVm, at: usize) -> String {
    let bytes = read_bytes(vm, at, 64);
    let end = bytes.iter().position(|&b| b == 0).unwrap();
    String::from_utf8(bytes[..end].to_vec()).unwrap()
}

#[test]
fn test_guest_config_loads_a_multiboot_kernel_and_sets_up_the_vcpu() {
    let (vm, _) = build(vec![]);
    assert_eq!(vm.id(), 1);
    assert_eq!(vm.name(), "test-guest");
    assert_eq!(vm.state(), &VmState::Created);
    assert_eq!(vm.vcpu_count(), 1);
    assert_eq!(vm.aspace().kind(), NestedPagingKind::Npt);

    // The file at its a.out-kludge load address, BSS zeroed to 0x202000.
    let image = multiboot_image(LOAD);
    assert_eq!(read_bytes(&vm, 0x20_0000, IMAGE_LEN), image);
    assert!(
        read_bytes(&vm, 0x20_0000 + IMAGE_LEN, 0x2000 - IMAGE_LEN)
            .iter()
            .all(|&b| b == 0)
    );
    assert_eq!(vm.boot().entry, gpa(0x20_0020));
    assert_eq!(vm.boot().image_extent, (gpa(0x20_0000), gpa(0x20_2000)));
    assert_eq!(vm.boot().multiboot_info, Some(gpa(0x9000)));

    // The vCPU got the entry, the nested page table root and the multiboot
    // hand-off (EAX = 0x2BADB002, EBX = 0x9000), in 32-bit protected mode
    // with paging off, and a boot stack in the free page below the
    // information (ESP = 0x9000, the stack is [0x8000, 0x9000)).
    let m = mock(&vm);
    assert_eq!(m.entry, Some(gpa(0x20_0020)));
    assert_eq!(m.ept_root, Some(vm.aspace().page_table_root()));
    let setup = m.setup.clone().unwrap();
    let mut expected = GuestState::multiboot(0x20_0020, 0x9000);
    expected.rsp = 0x9000;
    assert_eq!(
        setup,
        X86VcpuSetupConfig {
            boot: BootProtocol::Custom(Box::new(expected))
        }
    );
    let state = setup.boot.state(gpa(0x20_0020)).unwrap();
    assert_eq!(
        (state.regs.rax, state.regs.rbx, state.rsp, state.rip),
        (0x2BAD_B002, 0x9000, 0x9000, 0x20_0020)
    );
    assert_eq!(state.cr0 & 0x8000_0001, 1, "CR0.PE set, CR0.PG clear");
    assert_eq!(vm.vcpu(0).unwrap().state(), axvcpu::VCpuState::Free);

    // Multiboot information: memory (bit 0), memory map (bit 6), boot
    // loader name (bit 9); 640 KiB lower memory, 16 MiB - 1 MiB upper.
    let info = MULTIBOOT_INFO_GPA;
    assert_eq!(read_u32(&vm, info + FLAGS), 1 | 1 << 6 | 1 << 9);
    assert_eq!(read_u32(&vm, info + MEM_LOWER), 640);
    assert_eq!(read_u32(&vm, info + MEM_UPPER), 15 * 1024);
    // One map entry of 24 bytes: size 20, base 0, length 16 MiB, type 1.
    assert_eq!(read_u32(&vm, info + MMAP_LENGTH), 24);
    let mmap = read_u32(&vm, info + MMAP_ADDR) as usize;
    assert!((info..info + 0x1000).contains(&mmap));
    assert_eq!(read_u32(&vm, mmap), 20);
    assert_eq!(vm.aspace().read_obj::<u64>(gpa(mmap + 4)).unwrap(), 0);
    assert_eq!(
        vm.aspace().read_obj::<u64>(gpa(mmap + 12)).unwrap(),
        16 << 20
    );
    assert_eq!(read_u32(&vm, mmap + 20), 1);
    let name = read_u32(&vm, info + BOOT_LOADER_NAME) as usize;
    assert_eq!(c_string(&vm, name), "axhv");

    // RAM is mapped read/write/execute everywhere in the 16 MiB, nowhere
    // after; the MMIO window is not RAM.
    let (_, flags, _) = vm.aspace().query(gpa(0xff_f000)).unwrap();
    assert!(flags.contains(MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE));
    assert!(vm.aspace().translate(gpa(0x100_0000)).is_none());
    assert!(vm.aspace().translate(gpa(0xfeb0_0000)).is_none());
    assert!(vm.devices().find_mmio(gpa(0xfeb0_0fff)).is_some());
    assert!(vm.devices().find_port(0x3f8).is_some());
    assert!(vm.devices().find_port(0xf7).is_some());
    assert!(vm.serial().is_some());
}

#[test]
fn cmdline_goes_into_the_multiboot_information() {
    let mut c = test_config();
    c.kernel.cmdline = Some("console=ttyS0 quiet".into());
    let (vm, _) = build_with(&c, vec![]).unwrap();
    let info = MULTIBOOT_INFO_GPA;
    assert_eq!(read_u32(&vm, info + FLAGS), 1 | 1 << 2 | 1 << 6 | 1 << 9);
    let at = read_u32(&vm, info + CMDLINE) as usize;
    assert_eq!(c_string(&vm, at), "console=ttyS0 quiet");
}

#[test]
fn information_moves_when_the_image_covers_0x9000() {
    // The kernel occupies 0x8000..0xa000: the information goes to the first
    // free page of RAM, 0x1000 (never page 0).
    let c = test_config();
    let console = Arc::new(NullBackend);
    let vm: TestVm = Vm::new_with_clock(
        &c,
        &multiboot_image(0x8000),
        NestedPagingKind::Npt,
        |_| vec![],
        console,
        Some(Arc::new(TestClock::default())),
    )
    .unwrap();
    assert_eq!(vm.boot().multiboot_info, Some(gpa(0x1000)));
    // EBX = 0x1000; page 0 is never a stack, so the stack is the page after
    // the information: [0x2000, 0x3000), ESP = 0x3000.
    let state = mock(&vm)
        .setup
        .as_ref()
        .unwrap()
        .boot
        .state(gpa(0x8020))
        .unwrap();
    assert_eq!((state.regs.rbx, state.rsp), (0x1000, 0x3000));
    assert_eq!(read_u32(&vm, 0x1000 + MEM_UPPER), 15 * 1024);
    assert_eq!(read_bytes(&vm, 0x8000, IMAGE_LEN), multiboot_image(0x8000));
}

#[test]
fn config_load_addr_and_entry_override_the_header() {
    let mut c = test_config();
    c.kernel.load_addr = Some(0x40_0000);
    let (vm, _) = build_with(&c, vec![]).unwrap();
    // Moved by +0x20_0000, entry with it.
    assert_eq!(vm.boot().entry, gpa(0x40_0020));
    assert_eq!(read_bytes(&vm, 0x40_0000, IMAGE_LEN), multiboot_image(LOAD));
    assert!(read_bytes(&vm, 0x20_0000, 4).iter().all(|&b| b == 0));

    c.kernel.entry = Some(0x40_0030);
    let (vm, _) = build_with(&c, vec![]).unwrap();
    assert_eq!(mock(&vm).entry, Some(gpa(0x40_0030)));
}

#[test]
fn reserved_regions_are_reported_and_left_unmapped() {
    let mut c = test_config();
    c.memory.push(MemoryRegion {
        gpa: 0x100_0000,
        size: 0x10_0000,
        map: MapKind::Reserved,
        flags: MemFlags::empty(),
    });
    let (vm, _) = build_with(&c, vec![]).unwrap();
    assert!(vm.aspace().find_area(gpa(0x100_0000)).is_none());
    let info = MULTIBOOT_INFO_GPA;
    // Two entries: RAM, then the reserved range (type 2).
    assert_eq!(read_u32(&vm, info + MMAP_LENGTH), 48);
    let mmap = read_u32(&vm, info + MMAP_ADDR) as usize;
    assert_eq!(
        vm.aspace().read_obj::<u64>(gpa(mmap + 24 + 4)).unwrap(),
        0x100_0000
    );
    assert_eq!(read_u32(&vm, mmap + 24 + 20), 2);
}

#[test]
fn raw_image_starts_in_flat_protected_mode() {
    let mut c = test_config();
    c.kernel.protocol = ConfigBoot::Raw;
    c.kernel.load_addr = Some(0x10_0000);
    c.kernel.entry = Some(0x10_0020);
    let (vm, _) = build_with(&c, vec![]).unwrap();
    // The whole file at load_addr, header and all.
    assert_eq!(read_bytes(&vm, 0x10_0000, IMAGE_LEN), multiboot_image(LOAD));
    assert_eq!(vm.boot().multiboot_info, None);
    let setup = mock(&vm).setup.clone().unwrap();
    let s = setup.boot.state(gpa(0x10_0020)).unwrap();
    // CR0 = PE | ET, paging off, 32-bit flat code, RAX = RBX = 0.
    assert_eq!(
        (s.rip, s.cr0, s.regs.rax, s.regs.rbx),
        (0x10_0020, 0x11, 0, 0)
    );
    assert_eq!(s.cs.access_rights, 0xc09b);
}

#[test]
fn ept_and_affinity() {
    let mut c = test_config();
    c.vcpus.count = 2;
    c.vcpus.phys_cpu_affinity = Some(vec![3, 0]);
    let vm: TestVm = Vm::new_with_clock(
        &c,
        &multiboot_image(LOAD),
        NestedPagingKind::Ept,
        |_| vec![],
        Arc::new(NullBackend),
        Some(Arc::new(TestClock::default())),
    )
    .unwrap();
    assert_eq!(vm.aspace().kind(), NestedPagingKind::Ept);
    assert_eq!(vm.vcpu_count(), 2);
    let v0 = vm.vcpu(0).unwrap();
    assert_eq!((v0.favor_phys_cpu(), v0.affinity()), (3, Some(1 << 3)));
    let v1 = vm.vcpu(1).unwrap();
    assert_eq!((v1.favor_phys_cpu(), v1.affinity()), (0, Some(1)));
    assert_eq!(v1.arch_vcpu().id, 1);
    // Every vCPU starts the same way.
    assert_eq!(v1.arch_vcpu().setup, v0.arch_vcpu().setup);
    assert_eq!(v1.arch_vcpu().ept_root, Some(vm.aspace().page_table_root()));
    assert!(vm.vcpu(2).is_err());
}

#[test]
fn dropping_the_vm_releases_every_frame() {
    let before = HostHal::live_frames();
    {
        let (vm, _) = build(vec![]);
        // 16 MiB of RAM = 4096 frames, plus the nested page table.
        assert!(HostHal::live_frames() - before > 4096);
        drop(vm);
    }
    assert_eq!(HostHal::live_frames(), before);
}

#[test]
fn vm_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<Vm<MockVcpu, HostHal>>();
}
