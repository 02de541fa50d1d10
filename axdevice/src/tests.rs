//! Host tests of the whole crate.

use std::string::{String, ToString};
use std::sync::{Arc, Mutex};
use std::vec::Vec;

use axaddrspace::{AccessWidth, GuestPhysAddr};

use crate::*;

/// An IRQ sink recording every level change.
#[derive(Default)]
struct RecordingSink {
    events: Mutex<Vec<(u32, bool)>>,
}

impl RecordingSink {
    fn take(&self) -> Vec<(u32, bool)> {
        core::mem::take(&mut *self.events.lock().unwrap())
    }
}

impl IrqSink for RecordingSink {
    fn set_irq_level(&self, irq: u32, high: bool) {
        self.events.lock().unwrap().push((irq, high));
    }
}

/// A device of any kind that records its accesses and answers reads with
/// a fixed value.
struct Fake {
    name: String,
    start: u64,
    len: u64,
    answer: u64,
    log: Mutex<Vec<(u64, usize, Option<u64>)>>,
}

impl Fake {
    fn new(name: &str, start: u64, len: u64) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            start,
            len,
            answer: 0xdead_beef_cafe_f00d,
            log: Mutex::new(Vec::new()),
        })
    }

    fn last(&self) -> Option<(u64, usize, Option<u64>)> {
        self.log.lock().unwrap().last().copied()
    }
}

impl BaseDevice for Fake {
    fn name(&self) -> &str {
        &self.name
    }
}

impl MmioDevice for Fake {
    fn mmio_range(&self) -> MmioRange {
        MmioRange::new(
            GuestPhysAddr::from_usize(self.start as usize),
            self.len as usize,
        )
    }
    fn mmio_read(&self, addr: GuestPhysAddr, width: AccessWidth) -> Result<u64> {
        self.log
            .lock()
            .unwrap()
            .push((addr.as_usize() as u64, width.size(), None));
        Ok(self.answer)
    }
    fn mmio_write(&self, addr: GuestPhysAddr, width: AccessWidth, val: u64) -> Result {
        self.log
            .lock()
            .unwrap()
            .push((addr.as_usize() as u64, width.size(), Some(val)));
        Ok(())
    }
}

impl PortDevice for Fake {
    fn port_range(&self) -> PortRange {
        PortRange::new(self.start as u16, self.len as u16)
    }
    fn port_read(&self, port: u16, width: AccessWidth) -> Result<u64> {
        self.log
            .lock()
            .unwrap()
            .push((port.into(), width.size(), None));
        Ok(self.answer)
    }
    fn port_write(&self, port: u16, width: AccessWidth, val: u64) -> Result {
        self.log
            .lock()
            .unwrap()
            .push((port.into(), width.size(), Some(val)));
        Ok(())
    }
}

impl MsrDevice for Fake {
    fn msr_range(&self) -> MsrRange {
        MsrRange::new(self.start as u32, self.len as u32)
    }
    fn msr_read(&self, msr: u32) -> Result<u64> {
        self.log.lock().unwrap().push((msr.into(), 8, None));
        Ok(self.answer)
    }
    fn msr_write(&self, msr: u32, val: u64) -> Result {
        self.log.lock().unwrap().push((msr.into(), 8, Some(val)));
        Ok(())
    }
}

fn gpa(a: u64) -> GuestPhysAddr {
    GuestPhysAddr::from_usize(a as usize)
}

mod device_set {
    use super::*;

    #[test]
    fn adjacent_ranges_accepted_overlapping_rejected() {
        let mut set = DeviceSet::new();
        set.add_port(Fake::new("a", 0x100, 0x10)).unwrap();
        // Adjacent on both sides.
        set.add_port(Fake::new("b", 0x110, 0x10)).unwrap();
        set.add_port(Fake::new("c", 0xf0, 0x10)).unwrap();
        // Overlapping the last port of `a` by one.
        let err = set.add_port(Fake::new("d", 0x10f, 1)).unwrap_err();
        assert_eq!(
            err,
            Error::Overlap {
                kind: DeviceKind::Port,
                new_dev: "d".into(),
                new: Span {
                    first: 0x10f,
                    last: 0x10f
                },
                existing_dev: "a".into(),
                existing: Span {
                    first: 0x100,
                    last: 0x10f
                },
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("`d`") && msg.contains("`a`"), "{msg}");
        // Covering `b` entirely (starts in a gap-free spot before it).
        assert!(matches!(
            set.add_port(Fake::new("e", 0x108, 0x40)),
            Err(Error::Overlap { existing_dev, .. }) if existing_dev == "a"
        ));
        // Starting inside `b`, ending past it.
        assert!(matches!(
            set.add_port(Fake::new("f", 0x11f, 0x20)),
            Err(Error::Overlap { existing_dev, .. }) if existing_dev == "b"
        ));
        // Ending on the first port of `c`.
        assert!(matches!(
            set.add_port(Fake::new("g", 0xe0, 0x11)),
            Err(Error::Overlap { existing_dev, .. }) if existing_dev == "c"
        ));
        assert_eq!(set.len(), 3);
        let names: Vec<_> = set.port_devices().map(|d| d.name().to_string()).collect();
        assert_eq!(names, ["c", "a", "b"]);
    }

    #[test]
    fn kinds_are_separate_address_spaces() {
        let mut set = DeviceSet::new();
        let f = Fake::new("x", 0x3f8, 8);
        set.add_port(f.clone()).unwrap();
        set.add_mmio(f.clone()).unwrap();
        set.add_msr(f).unwrap();
        assert_eq!(set.len(), 3);
        assert!(matches!(
            set.add_mmio(Fake::new("y", 0x3f0, 0x10)),
            Err(Error::Overlap {
                kind: DeviceKind::Mmio,
                ..
            })
        ));
        assert!(matches!(
            set.add_msr(Fake::new("y", 0x3ff, 1)),
            Err(Error::Overlap {
                kind: DeviceKind::Msr,
                ..
            })
        ));
    }

    #[test]
    fn empty_and_overflowing_ranges_rejected() {
        let mut set = DeviceSet::new();
        assert_eq!(
            set.add_port(Fake::new("z", 0x80, 0)),
            Err(Error::EmptyRange {
                kind: DeviceKind::Port,
                dev: "z".into()
            })
        );
        assert!(matches!(
            set.add_mmio(Fake::new("z", 0x1000, 0)),
            Err(Error::EmptyRange { .. })
        ));
        assert!(matches!(
            set.add_msr(Fake::new("z", 0x10, 0)),
            Err(Error::EmptyRange { .. })
        ));
        // 0xfffc + 8 ports runs past port 0xffff.
        assert_eq!(
            set.add_port(Fake::new("o", 0xfffc, 8)),
            Err(Error::RangeOverflow {
                kind: DeviceKind::Port,
                dev: "o".into(),
                start: 0xfffc,
                len: 8
            })
        );
        // Ending exactly at the top of each space is fine.
        set.add_port(Fake::new("top", 0xfff8, 8)).unwrap();
        set.add_msr(Fake::new("top", 0xffff_ff00, 0x100)).unwrap();
        set.add_mmio(Fake::new("top", u64::MAX - 0xfff, 0x1000))
            .unwrap();
        assert!(matches!(
            set.add_mmio(Fake::new("o", u64::MAX - 0xfff, 0x1001)),
            Err(Error::RangeOverflow { .. })
        ));
        assert_eq!(set.find_port(0xffff).unwrap().name(), "top");
        assert_eq!(set.find_mmio(gpa(u64::MAX)).unwrap().name(), "top");
        assert_eq!(
            set.handle_port_read(0xfffe, AccessWidth::Word).unwrap(),
            0xf00d
        );
        assert!(!set.is_empty() && set.len() == 3);
    }

    #[test]
    fn unclaimed_access() {
        let mut set = DeviceSet::new();
        set.add_port(Fake::new("a", 0x60, 1)).unwrap();
        set.add_mmio(Fake::new("m", 0xfec0_0000, 0x1000)).unwrap();
        assert_eq!(
            set.handle_port_read(0x61, AccessWidth::Byte),
            Err(Error::Unclaimed {
                kind: DeviceKind::Port,
                addr: 0x61
            })
        );
        assert_eq!(
            set.handle_port_write(0x5f, AccessWidth::Byte, 1),
            Err(Error::Unclaimed {
                kind: DeviceKind::Port,
                addr: 0x5f
            })
        );
        assert_eq!(
            set.handle_mmio_read(gpa(0xfec0_1000), AccessWidth::Dword),
            Err(Error::Unclaimed {
                kind: DeviceKind::Mmio,
                addr: 0xfec0_1000
            })
        );
        assert_eq!(
            set.handle_msr_read(0x1b),
            Err(Error::Unclaimed {
                kind: DeviceKind::Msr,
                addr: 0x1b
            })
        );
        assert_eq!(
            set.handle_msr_write(0x1b, 0),
            Err(Error::Unclaimed {
                kind: DeviceKind::Msr,
                addr: 0x1b
            })
        );
        assert!(DeviceSet::new().find_port(0).is_none());
    }

    #[test]
    fn boundaries_and_crossing_the_end() {
        let mut set = DeviceSet::new();
        let m = Fake::new("m", 0x1000, 0x100);
        set.add_mmio(m.clone()).unwrap();
        // First byte, last byte, one before, one past.
        assert!(set.find_mmio(gpa(0xfff)).is_none());
        assert_eq!(set.find_mmio(gpa(0x1000)).unwrap().name(), "m");
        assert_eq!(set.find_mmio(gpa(0x10ff)).unwrap().name(), "m");
        assert!(set.find_mmio(gpa(0x1100)).is_none());
        // A qword ending on the last byte is fine; one byte further is not.
        set.handle_mmio_read(gpa(0x10f8), AccessWidth::Qword)
            .unwrap();
        assert_eq!(m.last(), Some((0x10f8, 8, None)));
        assert_eq!(
            set.handle_mmio_read(gpa(0x10f9), AccessWidth::Qword),
            Err(Error::CrossesEnd {
                kind: DeviceKind::Mmio,
                dev: "m".into(),
                addr: 0x10f9,
                width: 8,
                range: Span {
                    first: 0x1000,
                    last: 0x10ff
                },
            })
        );
        assert!(matches!(
            set.handle_mmio_write(gpa(0x10ff), AccessWidth::Word, 0),
            Err(Error::CrossesEnd { .. })
        ));
        // The device was not called for the rejected accesses.
        assert_eq!(m.log.lock().unwrap().len(), 1);
    }

    #[test]
    fn mmio_hints_spare_the_lookup_and_stale_ones_are_harmless() {
        let mut set = DeviceSet::new();
        let a = Fake::new("a", 0x1000, 0x100);
        let b = Fake::new("b", 0x3000, 0x100);
        set.add_mmio(b.clone()).unwrap();
        set.add_mmio(a.clone()).unwrap();
        // Sorted by address: a is at 0, b at 1.
        assert_eq!(set.find_mmio_index(gpa(0x1000)), Some(0));
        assert_eq!(set.find_mmio_index(gpa(0x30ff)), Some(1));
        assert_eq!(set.find_mmio_index(gpa(0x2000)), None);
        assert_eq!(set.find_mmio_index(gpa(0x3100)), None);
        let hint = set.find_mmio_index(gpa(0x3008)).unwrap();
        set.handle_mmio_write_at(hint, gpa(0x3008), AccessWidth::Word, 0x1_2345)
            .unwrap();
        assert_eq!(b.last(), Some((0x3008, 2, Some(0x2345))));
        // A wrong hint (a's position for b's address, or out of range)
        // still reaches the right device.
        assert_eq!(
            set.handle_mmio_read_at(0, gpa(0x3000), AccessWidth::Byte),
            Ok(0x0d)
        );
        assert_eq!(b.last(), Some((0x3000, 1, None)));
        set.handle_mmio_write_at(7, gpa(0x1010), AccessWidth::Byte, 1)
            .unwrap();
        assert_eq!(a.last(), Some((0x1010, 1, Some(1))));
        // The checks are those of `handle_mmio_*`: crossing the end of the
        // hinted device, or no device at all.
        assert!(matches!(
            set.handle_mmio_read_at(1, gpa(0x30fc), AccessWidth::Qword),
            Err(Error::CrossesEnd { .. })
        ));
        assert!(matches!(
            set.handle_mmio_read_at(0, gpa(0x2000), AccessWidth::Byte),
            Err(Error::Unclaimed { .. })
        ));
    }

    #[test]
    fn values_are_masked_to_the_width() {
        let mut set = DeviceSet::new();
        let p = Fake::new("p", 0xcf8, 8);
        set.add_port(p.clone()).unwrap();
        assert_eq!(
            set.handle_port_read(0xcf8, AccessWidth::Byte).unwrap(),
            0x0d
        );
        assert_eq!(
            set.handle_port_read(0xcf8, AccessWidth::Word).unwrap(),
            0xf00d
        );
        assert_eq!(
            set.handle_port_read(0xcf8, AccessWidth::Dword).unwrap(),
            0xcafe_f00d
        );
        set.handle_port_write(0xcfc, AccessWidth::Word, 0x1234_5678)
            .unwrap();
        assert_eq!(p.last(), Some((0xcfc, 2, Some(0x5678))));
        // x86 port I/O is at most 4 bytes wide.
        assert_eq!(
            set.handle_port_read(0xcf8, AccessWidth::Qword),
            Err(Error::BadWidth {
                dev: "p".into(),
                offset: 0,
                width: AccessWidth::Qword
            })
        );
        let m = Fake::new("m", 0x2000, 0x10);
        set.add_mmio(m.clone()).unwrap();
        set.handle_mmio_write(gpa(0x2004), AccessWidth::Byte, 0x1ff)
            .unwrap();
        assert_eq!(m.last(), Some((0x2004, 1, Some(0xff))));
        assert_eq!(
            set.handle_mmio_read(gpa(0x2000), AccessWidth::Qword)
                .unwrap(),
            0xdead_beef_cafe_f00d
        );
    }

    #[test]
    fn msr_routing() {
        let mut set = DeviceSet::new();
        let a = Fake::new("a", 0xc000_0080, 1);
        let b = Fake::new("b", 0xc000_0081, 4);
        set.add_msr(a.clone()).unwrap();
        set.add_msr(b.clone()).unwrap();
        set.handle_msr_write(0xc000_0084, 0x1_0000_0001).unwrap();
        assert_eq!(b.last(), Some((0xc000_0084, 8, Some(0x1_0000_0001))));
        assert_eq!(
            set.handle_msr_read(0xc000_0080).unwrap(),
            0xdead_beef_cafe_f00d
        );
        assert_eq!(a.last(), Some((0xc000_0080, 8, None)));
        assert!(matches!(
            set.handle_msr_read(0xc000_0085),
            Err(Error::Unclaimed { .. })
        ));
        assert_eq!(set.msr_devices().count(), 2);
    }

    #[test]
    fn remove_frees_the_range() {
        let mut set = DeviceSet::new();
        set.add_mmio(Fake::new("bar", 0xe000_0000, 0x1000)).unwrap();
        assert!(set.remove_mmio(gpa(0xe000_0001)).is_none());
        assert_eq!(set.remove_mmio(gpa(0xe000_0000)).unwrap().name(), "bar");
        assert!(set.find_mmio(gpa(0xe000_0000)).is_none());
        set.add_mmio(Fake::new("bar2", 0xe000_0800, 0x1000))
            .unwrap();
        set.add_port(Fake::new("p", 0x70, 2)).unwrap();
        assert_eq!(set.remove_port(0x70).unwrap().name(), "p");
        set.add_msr(Fake::new("m", 0x10, 1)).unwrap();
        assert_eq!(set.remove_msr(0x10).unwrap().name(), "m");
        assert_eq!(set.len(), 1);
    }

    /// A linear reference lookup over (start, len, name).
    fn reference(devs: &[(u64, u64, String)], addr: u64) -> Option<&str> {
        devs.iter()
            .find(|(s, l, _)| addr >= *s && addr - s < *l)
            .map(|(_, _, n)| n.as_str())
    }

    #[test]
    fn many_devices_lookup_matches_linear_scan() {
        const N: u64 = 1000;
        // Devices of varying sizes, some adjacent, some with gaps, added in
        // a scrambled order (7919 is prime, so i -> i*7919 mod N permutes).
        let mut devs = Vec::new();
        let mut next = 0x1_0000u64;
        for i in 0..N {
            let len = 1 + (i * 37) % 64;
            let gap = if i % 3 == 0 { 0 } else { (i * 13) % 17 };
            devs.push((next + gap, len, std::format!("dev{i}")));
            next += gap + len;
        }
        let mut set = DeviceSet::new();
        for i in 0..N {
            let (s, l, n) = &devs[((i * 7919) % N) as usize];
            set.add_mmio(Fake::new(n, *s, *l)).unwrap();
        }
        assert_eq!(set.len(), N as usize);
        // Every device's neighbourhood: one before, first, last, one past.
        for (s, l, n) in &devs {
            for addr in [s - 1, *s, s + l - 1, s + l] {
                let got = set.find_mmio(gpa(addr)).map(|d| d.name().to_string());
                assert_eq!(got.as_deref(), reference(&devs, addr), "addr {addr:#x}");
            }
            assert_eq!(set.find_mmio(gpa(*s)).unwrap().name(), n);
            assert_eq!(set.find_mmio(gpa(s + l - 1)).unwrap().name(), n);
        }
        // Re-adding any device overlaps itself.
        for (s, l, n) in devs.iter().step_by(97) {
            assert!(matches!(
                set.add_mmio(Fake::new("again", *s + l / 2, 1)),
                Err(Error::Overlap { existing_dev, .. }) if existing_dev == *n
            ));
        }
        // Devices are iterated in address order.
        let starts: Vec<u64> = set
            .mmio_devices()
            .map(|d| d.mmio_range().base.as_usize() as u64)
            .collect();
        assert!(starts.windows(2).all(|w| w[0] < w[1]));
    }

    struct Lapic {
        reads: Vec<(VCpuId, u64)>,
        msr: Option<MsrRange>,
    }

    impl BaseDevice for Lapic {
        fn name(&self) -> &str {
            "lapic"
        }
    }

    impl VCpuDevice for Lapic {
        fn mmio_range(&self) -> Option<MmioRange> {
            Some(MmioRange::new(gpa(0xfee0_0000), 0x1000))
        }
        fn msr_range(&self) -> Option<MsrRange> {
            self.msr
        }
        fn mmio_read(&mut self, vcpu: VCpuId, addr: GuestPhysAddr, _w: AccessWidth) -> Result<u64> {
            self.reads.push((vcpu, addr.as_usize() as u64));
            // APIC ID register: ID in bits 31:24.
            Ok((vcpu as u64) << 24)
        }
        fn msr_read(&mut self, vcpu: VCpuId, msr: u32) -> Result<u64> {
            // x2APIC ID register (MSR 0x802).
            Ok(if msr == 0x802 { vcpu as u64 } else { 0 })
        }
    }

    struct OnlyMsr;
    impl BaseDevice for OnlyMsr {
        fn name(&self) -> &str {
            "only-msr"
        }
    }
    impl VCpuDevice for OnlyMsr {
        fn msr_range(&self) -> Option<MsrRange> {
            Some(MsrRange::new(0x8ff, 2))
        }
    }

    #[test]
    fn vcpu_device_set_routes_with_vcpu_id() {
        let mut set = VCpuDeviceSet::new();
        set.add(std::boxed::Box::new(Lapic {
            reads: Vec::new(),
            msr: Some(MsrRange::new(0x800, 0x100)),
        }))
        .unwrap();
        assert_eq!(
            set.handle_mmio_read(3, gpa(0xfee0_0020), AccessWidth::Dword)
                .unwrap(),
            3 << 24
        );
        assert_eq!(set.handle_msr_read(5, 0x802).unwrap(), 5);
        assert!(set.claims_mmio(gpa(0xfee0_0fff)));
        assert!(!set.claims_mmio(gpa(0xfee0_1000)));
        assert!(set.claims_msr(0x8ff));
        assert!(!set.claims_msr(0x900));
        // Default methods answer Unsupported.
        assert_eq!(
            set.handle_mmio_write(0, gpa(0xfee0_00b0), AccessWidth::Dword, 0),
            Err(Error::Unsupported {
                dev: "lapic".into(),
                what: "MMIO writes"
            })
        );
        // MSR 0x8ff overlaps: the device is rejected.
        assert!(matches!(
            set.add(std::boxed::Box::new(OnlyMsr)),
            Err(Error::Overlap {
                kind: DeviceKind::Msr,
                ..
            })
        ));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn vcpu_device_set_failure_adds_nothing() {
        let mut set = VCpuDeviceSet::new();
        set.add(std::boxed::Box::new(OnlyMsr)).unwrap();
        // The MMIO range is free but the MSR range overlaps `only-msr`:
        // the MMIO range must not stay registered.
        let err = set
            .add(std::boxed::Box::new(Lapic {
                reads: Vec::new(),
                msr: Some(MsrRange::new(0x800, 0x100)),
            }))
            .unwrap_err();
        assert!(matches!(err, Error::Overlap { existing_dev, .. } if existing_dev == "only-msr"));
        assert!(!set.claims_mmio(gpa(0xfee0_0000)));
        assert_eq!(set.len(), 1);
        set.add(std::boxed::Box::new(Lapic {
            reads: Vec::new(),
            msr: None,
        }))
        .unwrap();
        assert!(set.claims_mmio(gpa(0xfee0_0000)));
        assert_eq!(
            set.handle_msr_write(0, 0x8ff, 1),
            Err(Error::Unsupported {
                dev: "only-msr".into(),
                what: "MSR writes"
            })
        );
    }
}

mod uart {
    use super::*;

    const B: u16 = COM1_BASE;
    const THR: u16 = B;
    const IER: u16 = B + 1;
    const IIR: u16 = B + 2;
    const FCR: u16 = B + 2;
    const LCR: u16 = B + 3;
    const MCR: u16 = B + 4;
    const LSR: u16 = B + 5;
    const MSR: u16 = B + 6;
    const SCR: u16 = B + 7;

    struct Rig {
        set: DeviceSet,
        uart: Arc<Uart16550>,
        console: Arc<RingBuffer>,
        sink: Arc<RecordingSink>,
    }

    impl Rig {
        fn new() -> Self {
            Self::with_capacity(DEFAULT_RX_CAPACITY)
        }

        fn with_capacity(cap: usize) -> Self {
            let console = Arc::new(RingBuffer::new(64));
            let sink = Arc::new(RecordingSink::default());
            let uart = Arc::new(
                Uart16550::com1(console.clone())
                    .with_irq(sink.clone(), COM1_IRQ)
                    .with_rx_capacity(cap),
            );
            let mut set = DeviceSet::new();
            set.add_port(uart.clone()).unwrap();
            Self {
                set,
                uart,
                console,
                sink,
            }
        }

        fn inb(&self, port: u16) -> u8 {
            self.set.handle_port_read(port, AccessWidth::Byte).unwrap() as u8
        }

        fn outb(&self, port: u16, v: u8) {
            self.set
                .handle_port_write(port, AccessWidth::Byte, v.into())
                .unwrap()
        }
    }

    #[test]
    fn reset_values() {
        // PC16550D table IV: IER=0, IIR=0x01, FCR=0, LCR=0, MCR=0,
        // LSR=0x60 (THRE, TEMT), MSR bits 3:0 = 0.
        let r = Rig::new();
        assert_eq!(r.inb(IER), 0x00);
        assert_eq!(r.inb(IIR), 0x01);
        assert_eq!(r.inb(LCR), 0x00);
        assert_eq!(r.inb(MCR), 0x00);
        assert_eq!(r.inb(LSR), 0x60);
        assert_eq!(r.inb(MSR), 0xb0);
        assert_eq!(r.uart.divisor(), 12);
        assert!(!r.uart.irq_asserted());
        assert!(r.sink.take().is_empty());
        assert_eq!(r.uart.name(), "uart16550@0x3f8");
        assert_eq!(r.uart.port_range(), PortRange::new(0x3f8, 8));
    }

    #[test]
    fn dlab_switches_to_the_divisor_latch() {
        let r = Rig::new();
        r.outb(IER, 0x0a);
        // 115200 baud: divisor 1; 8N1 with DLAB set is 0x83.
        r.outb(LCR, 0x83);
        r.outb(THR, 0x01);
        r.outb(IER, 0x00);
        assert_eq!(r.inb(THR), 0x01);
        assert_eq!(r.inb(IER), 0x00);
        assert_eq!(r.uart.divisor(), 1);
        r.outb(THR, 0x80);
        r.outb(IER, 0x01);
        assert_eq!(r.uart.divisor(), 0x0180);
        // Nothing reached the console, IER kept its value.
        r.outb(LCR, 0x03);
        assert_eq!(r.inb(LCR), 0x03);
        assert_eq!(r.inb(IER), 0x0a);
        assert!(r.console.is_empty());
        // With DLAB clear, offset 0 is THR again.
        r.outb(THR, b'x');
        assert_eq!(r.console.drain(), b"x");
        assert_eq!(r.uart.divisor(), 0x0180);
    }

    #[test]
    fn scratch_round_trip_and_ier_mask() {
        let r = Rig::new();
        for v in [0x00, 0x5a, 0xa5, 0xff] {
            r.outb(SCR, v);
            assert_eq!(r.inb(SCR), v);
        }
        // IER bits 7:4 are always 0 on a 16550.
        r.outb(IER, 0xf0);
        assert_eq!(r.inb(IER), 0x00);
        // MCR bits 7:5 are always 0.
        r.outb(MCR, 0xe3);
        assert_eq!(r.inb(MCR), 0x03);
        // Writes to LSR and MSR change nothing.
        r.outb(LSR, 0x00);
        r.outb(MSR, 0x00);
        assert_eq!(r.inb(LSR), 0x60);
        assert_eq!(r.inb(MSR), 0xb0);
    }

    #[test]
    fn transmit_goes_to_the_backend() {
        let r = Rig::new();
        for &b in b"Hello" {
            assert_eq!(r.inb(LSR) & 0x20, 0x20);
            r.outb(THR, b);
        }
        assert_eq!(r.console.snapshot(), b"Hello");
        assert_eq!(r.inb(LSR), 0x60);
    }

    #[test]
    fn thre_interrupt_raised_and_cleared_by_iir_read() {
        let r = Rig::new();
        // Enabling ETBEI with THR empty raises the interrupt.
        r.outb(IER, 0x02);
        assert_eq!(r.sink.take(), [(4, true)]);
        assert!(r.uart.irq_asserted());
        // Reading IIR reports THR empty (0x02) and clears it.
        assert_eq!(r.inb(IIR), 0x02);
        assert_eq!(r.sink.take(), [(4, false)]);
        assert_eq!(r.inb(IIR), 0x01);
        assert!(r.sink.take().is_empty());
        // Writing THR: the byte leaves at once, THR is empty again, so the
        // line drops and rises (a fresh edge).
        r.outb(THR, b'a');
        assert_eq!(r.sink.take(), [(4, true)]);
        assert_eq!(r.inb(IIR), 0x02);
        r.sink.take();
        r.outb(IER, 0x02);
        r.outb(THR, b'b');
        assert_eq!(r.sink.take(), [(4, true)]);
        r.outb(THR, b'c');
        assert_eq!(r.sink.take(), [(4, false), (4, true)]);
        // Disabling ETBEI drops it.
        r.outb(IER, 0x00);
        assert_eq!(r.sink.take(), [(4, false)]);
        assert_eq!(r.inb(IIR), 0x01);
        assert_eq!(r.console.drain(), b"abc");
    }

    #[test]
    fn rx_data_interrupt() {
        let r = Rig::new();
        r.outb(IER, 0x01);
        assert!(r.sink.take().is_empty());
        assert_eq!(r.uart.push_input(b"ab"), 2);
        assert_eq!(r.sink.take(), [(4, true)]);
        assert_eq!(r.inb(LSR), 0x61);
        assert_eq!(r.inb(IIR), 0x04);
        // Reading IIR does not clear a data interrupt.
        assert_eq!(r.inb(IIR), 0x04);
        assert_eq!(r.inb(THR), b'a');
        assert_eq!(r.inb(IIR), 0x04);
        assert!(r.sink.take().is_empty());
        assert_eq!(r.inb(THR), b'b');
        assert_eq!(r.sink.take(), [(4, false)]);
        assert_eq!(r.inb(LSR), 0x60);
        assert_eq!(r.inb(IIR), 0x01);
        assert_eq!(r.uart.pending_input(), 0);
    }

    #[test]
    fn rx_data_has_priority_over_thre() {
        let r = Rig::new();
        r.uart.push_input(b"z");
        r.outb(IER, 0x03);
        assert_eq!(r.inb(IIR), 0x04);
        assert_eq!(r.inb(THR), b'z');
        // THR empty is still pending under it.
        assert_eq!(r.inb(IIR), 0x02);
        assert_eq!(r.inb(IIR), 0x01);
    }

    /// A backend with scripted input that counts how often it was asked.
    struct TypedInput {
        input: spin::Mutex<alloc::collections::VecDeque<u8>>,
        asked: core::sync::atomic::AtomicUsize,
    }

    impl UartBackend for TypedInput {
        fn write_byte(&self, _b: u8) {}
        fn read_byte(&self) -> Option<u8> {
            self.asked
                .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            self.input.lock().pop_front()
        }
    }

    #[test]
    fn polling_guest_pulls_backend_input_one_byte_at_a_time() {
        let typed = Arc::new(TypedInput {
            input: spin::Mutex::new(b"ls\r".iter().copied().collect()),
            asked: core::sync::atomic::AtomicUsize::new(0),
        });
        let uart = Arc::new(Uart16550::com1(typed.clone()));
        let mut set = DeviceSet::new();
        set.add_port(uart.clone()).unwrap();
        let inb = |p: u16| set.handle_port_read(p, AccessWidth::Byte).unwrap() as u8;
        let asked = || typed.asked.load(core::sync::atomic::Ordering::Relaxed);
        // The guest's polled getchar: LSR.DR (bit 0), then RBR.
        let mut got = Vec::new();
        for _ in 0..10 {
            if inb(LSR) & 0x01 != 0 {
                got.push(inb(THR));
            }
        }
        assert_eq!(got, b"ls\r");
        // Only an empty receiver asks: 3 LSR polls found a byte, the RBR
        // reads found it queued, and 7 polls found nothing more.
        assert_eq!(asked(), 10);
        assert_eq!(uart.pending_input(), 0);
        // Queued bytes go first; the backend is not asked while they last.
        assert_eq!(uart.push_input(b"q"), 1);
        typed.input.lock().push_back(b'x');
        assert_eq!(inb(LSR), 0x61);
        assert_eq!(inb(THR), b'q');
        assert_eq!(asked(), 10, "`q` was queued: nobody asked");
        assert_eq!(inb(LSR), 0x61);
        assert_eq!(asked(), 11);
        assert_eq!(inb(THR), b'x');
        // Loopback disconnects the serial input: the backend is not asked.
        set.handle_port_write(MCR, AccessWidth::Byte, 0x10).unwrap();
        typed.input.lock().push_back(b'y');
        let before = asked();
        assert_eq!(inb(LSR) & 0x01, 0);
        assert_eq!(asked(), before);
    }

    #[test]
    fn input_overflow_sets_overrun() {
        let r = Rig::with_capacity(4);
        assert_eq!(r.uart.push_input(b"abcdef"), 4);
        // DR | OE | THRE | TEMT, and reading LSR clears OE.
        assert_eq!(r.inb(LSR), 0x63);
        assert_eq!(r.inb(LSR), 0x61);
        // With ELSI the overrun is a line status interrupt (0x06), the
        // highest priority, cleared by reading LSR.
        r.outb(IER, 0x05);
        assert_eq!(r.uart.push_input(b"g"), 0);
        assert_eq!(r.inb(IIR), 0x06);
        assert_eq!(r.inb(LSR), 0x63);
        assert_eq!(r.inb(IIR), 0x04);
        let got: Vec<u8> = (0..4).map(|_| r.inb(THR)).collect();
        assert_eq!(got, b"abcd");
        assert_eq!(r.inb(IIR), 0x01);
        assert!(!r.uart.irq_asserted());
    }

    #[test]
    fn fifo_control() {
        let r = Rig::new();
        // FIFO enabled: IIR bits 7:6 set.
        r.outb(FCR, 0x01);
        assert_eq!(r.inb(IIR), 0xc1);
        r.outb(IER, 0x01);
        r.uart.push_input(b"12");
        // Trigger level 1 (FCR bits 7:6 = 00): data available.
        assert_eq!(r.inb(IIR), 0xc4);
        // Trigger level 14: two bytes are below it, reported as a
        // character timeout (0x0c).
        r.outb(FCR, 0xc1);
        assert_eq!(r.inb(IIR), 0xcc);
        assert_eq!(r.uart.push_input(&[b'x'; 12]), 12);
        assert_eq!(r.inb(IIR), 0xc4);
        // FCR bit 1 clears the receiver FIFO.
        r.outb(FCR, 0xc3);
        assert_eq!(r.uart.pending_input(), 0);
        assert_eq!(r.inb(LSR), 0x60);
        assert_eq!(r.inb(IIR), 0xc1);
        assert!(!r.uart.irq_asserted());
        // Disabling the FIFO resets it too, and IIR bits 7:6 drop.
        r.uart.push_input(b"q");
        r.outb(FCR, 0x00);
        assert_eq!(r.uart.pending_input(), 0);
        assert_eq!(r.inb(IIR), 0x01);
    }

    #[test]
    fn loopback() {
        let r = Rig::new();
        // Linux's 8250 probe: MCR = LOOP | OUT2 | RTS, MSR high nibble must
        // read DCD | CTS = 0x90.
        r.outb(MCR, 0x1a);
        assert_eq!(r.inb(MSR) & 0xf0, 0x90);
        r.outb(THR, 0x55);
        assert!(r.console.is_empty());
        assert_eq!(r.inb(LSR), 0x61);
        assert_eq!(r.inb(THR), 0x55);
        // External input is disconnected in loopback.
        assert_eq!(r.uart.push_input(b"ignored"), 0);
        assert_eq!(r.inb(LSR), 0x60);
        r.outb(MCR, 0x00);
        r.outb(THR, 0xaa);
        assert_eq!(r.console.drain(), [0xaa]);
    }

    #[test]
    fn modem_status_deltas() {
        let r = Rig::new();
        r.outb(MCR, 0x10);
        // Entering loopback drops CTS, DSR, DCD: their delta bits are set.
        assert_eq!(r.inb(MSR), 0x0b);
        assert_eq!(r.inb(MSR), 0x00);
        r.outb(IER, 0x08);
        // DTR -> DSR: DDSR.
        r.outb(MCR, 0x11);
        assert_eq!(r.inb(IIR), 0x00);
        assert!(r.uart.irq_asserted());
        assert_eq!(r.inb(MSR), 0x22);
        assert!(!r.uart.irq_asserted());
        // OUT1 -> RI; RI falling sets TERI.
        r.outb(MCR, 0x15);
        assert_eq!(r.inb(MSR), 0x60);
        r.outb(MCR, 0x11);
        assert_eq!(r.inb(MSR), 0x24);
        assert_eq!(r.inb(IIR), 0x01);
    }

    #[test]
    fn wide_accesses_split_into_bytes() {
        let r = Rig::new();
        // A word at offset 3 writes LCR then MCR.
        r.set
            .handle_port_write(LCR, AccessWidth::Word, 0x0b03)
            .unwrap();
        assert_eq!(r.inb(LCR), 0x03);
        assert_eq!(r.inb(MCR), 0x0b);
        assert_eq!(
            r.set.handle_port_read(LCR, AccessWidth::Word).unwrap(),
            0x0b03
        );
        // LSR, MSR, SCR, and a dword at the last port crosses the end.
        r.outb(SCR, 0x77);
        assert_eq!(
            r.set.handle_port_read(LSR, AccessWidth::Word).unwrap(),
            0xb060
        );
        assert!(matches!(
            r.set.handle_port_read(SCR, AccessWidth::Dword),
            Err(Error::CrossesEnd { .. })
        ));
        // Called directly, the device checks too.
        assert_eq!(
            r.uart.port_read(SCR, AccessWidth::Word),
            Err(Error::BadWidth {
                dev: "uart16550@0x3f8".into(),
                offset: 7,
                width: AccessWidth::Word
            })
        );
        assert_eq!(
            r.uart.port_write(0x3f0, AccessWidth::Byte, 0),
            Err(Error::BadOffset {
                dev: "uart16550@0x3f8".into(),
                offset: 0xfff8
            })
        );
    }

    #[test]
    fn reset_restores_power_on_state() {
        let r = Rig::new();
        r.outb(LCR, 0x80);
        r.outb(THR, 1);
        r.outb(LCR, 0x03);
        r.outb(IER, 0x01);
        r.uart.push_input(b"abc");
        assert_eq!(r.sink.take(), [(4, true)]);
        r.uart.reset();
        assert_eq!(r.sink.take(), [(4, false)]);
        assert_eq!(r.uart.divisor(), 12);
        assert_eq!(r.inb(LCR), 0);
        assert_eq!(r.inb(IER), 0);
        assert_eq!(r.inb(LSR), 0x60);
        assert_eq!(r.uart.pending_input(), 0);
    }

    #[test]
    fn closure_backend_and_other_base() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let o = out.clone();
        let uart = Uart16550::new(COM2_BASE, Arc::new(move |b: u8| o.lock().unwrap().push(b)));
        assert_eq!(uart.port_range(), PortRange::new(0x2f8, 8));
        uart.port_write(0x2f8, AccessWidth::Byte, u64::from(b'!'))
            .unwrap();
        assert_eq!(*out.lock().unwrap(), b"!");
        // No IRQ sink: the level is still tracked.
        uart.port_write(0x2f9, AccessWidth::Byte, 0x02).unwrap();
        assert!(uart.irq_asserted());
    }
}

mod console {
    use super::*;

    #[test]
    fn ring_buffer_keeps_the_last_bytes() {
        let rb = RingBuffer::new(4);
        rb.push(b"ab");
        assert_eq!(rb.snapshot(), b"ab");
        rb.push(b"cdef");
        assert_eq!(rb.snapshot(), b"cdef");
        assert_eq!(rb.dropped(), 2);
        rb.write_byte(b'g');
        assert_eq!(rb.len(), 4);
        assert_eq!(rb.drain(), b"defg");
        assert!(rb.is_empty());
        rb.push(b"0123456789");
        assert_eq!(rb.snapshot(), b"6789");
        assert_eq!(rb.total_written(), 17);
        assert_eq!(rb.dropped(), 2 + 1 + 6);
        assert_eq!(rb.capacity(), 4);
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let rb = RingBuffer::new(0);
        rb.push(b"xyz");
        assert!(rb.is_empty());
        assert_eq!(rb.dropped(), 3);
        NullBackend.write_byte(0);
    }
}

mod power {
    use super::*;

    #[test]
    fn debug_exit_status() {
        let mut set = DeviceSet::new();
        let dx = Arc::new(DebugExit::qemu_default());
        set.add_port(dx.clone()).unwrap();
        assert_eq!(dx.take_exit_request(), None);
        // QEMU: exit code (v << 1) | 1.
        set.handle_port_write(0x501, AccessWidth::Byte, 0x10)
            .unwrap();
        assert!(dx.exit_requested());
        // The first request wins until taken.
        set.handle_port_write(0x502, AccessWidth::Byte, 0x00)
            .unwrap();
        assert_eq!(dx.take_exit_request(), Some(0x21));
        assert_eq!(dx.take_exit_request(), None);
        set.handle_port_write(0x501, AccessWidth::Word, 0x0000)
            .unwrap();
        assert_eq!(dx.take_exit_request(), Some(1));
        set.handle_port_write(0x501, AccessWidth::Word, 0x1234)
            .unwrap();
        assert_eq!(dx.take_exit_request(), Some(0x2469));
        assert_eq!(set.handle_port_read(0x501, AccessWidth::Byte).unwrap(), 0);
        assert!(matches!(
            set.handle_port_write(0x502, AccessWidth::Word, 1),
            Err(Error::CrossesEnd { .. })
        ));
        assert!(set.find_port(0x503).is_none());
    }

    #[test]
    fn acpi_pm1_sleep_request() {
        let mut set = DeviceSet::new();
        let pm = Arc::new(PowerOff::new(PowerOff::QEMU_PORT));
        set.add_port(pm.clone()).unwrap();
        assert_eq!(pm.take_sleep_request(), None);
        // SCI_EN alone: no request, value reads back.
        set.handle_port_write(0x604, AccessWidth::Word, 0x0001)
            .unwrap();
        assert_eq!(pm.take_sleep_request(), None);
        assert_eq!(
            set.handle_port_read(0x604, AccessWidth::Word).unwrap(),
            0x0001
        );
        // outw(0x604, 0x2000): SLP_EN with SLP_TYP 0.
        set.handle_port_write(0x604, AccessWidth::Word, 0x2000)
            .unwrap();
        assert_eq!(pm.take_sleep_request(), Some(0));
        assert_eq!(pm.take_sleep_request(), None);
        // SLP_EN is write-only.
        assert_eq!(
            set.handle_port_read(0x604, AccessWidth::Word).unwrap(),
            0x0000
        );
        // A byte write of the high half: SLP_EN | SLP_TYP 5 = 0x34.
        set.handle_port_write(0x605, AccessWidth::Byte, 0x34)
            .unwrap();
        assert_eq!(pm.take_sleep_request(), Some(5));
        assert_eq!(
            set.handle_port_read(0x605, AccessWidth::Byte).unwrap(),
            0x14
        );
        assert!(matches!(
            pm.port_write(0x604, AccessWidth::Dword, 0),
            Err(Error::BadWidth { offset: 0, .. })
        ));
    }
}

#[test]
fn range_contains_at_edges() {
    let p = PortRange::new(0x3f8, 8);
    assert!(!p.contains(0x3f7) && p.contains(0x3f8) && p.contains(0x3ff) && !p.contains(0x400));
    let m = MmioRange::new(gpa(0xfec0_0000), 0x1000);
    assert!(
        !m.contains(gpa(0xfebf_ffff))
            && m.contains(gpa(0xfec0_0fff))
            && !m.contains(gpa(0xfec0_1000))
    );
    let r = MsrRange::new(0x800, 0x100);
    assert!(!r.contains(0x7ff) && r.contains(0x8ff) && !r.contains(0x900));
    let s = Span {
        first: 0x10,
        last: 0x1f,
    };
    assert!(s.contains(0x1f) && !s.contains(0x20));
    assert!(
        s.overlaps(&Span {
            first: 0x1f,
            last: 0x30
        }) && !s.overlaps(&Span {
            first: 0x20,
            last: 0x30
        })
    );
    assert_eq!(s.to_string(), "0x10..=0x1f");
    assert_eq!(DeviceKind::Msr.to_string(), "MSR");
}
