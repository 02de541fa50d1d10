//! The compact binary form read by the `no_std` hypervisor.
//!
//! ```text
//! offset size  field
//!      0    8  magic "AXVMCFG\0"
//!      8    4  format version, little endian (FORMAT_VERSION)
//!     12    4  payload length in bytes, little endian
//!     16    4  CRC-32 (IEEE 802.3, as zlib) of the payload, little endian
//!     20    n  payload: the configuration in postcard encoding
//! ```
//!
//! Bytes after the payload are ignored, so a blob padded to a page boundary
//! still reads.

use alloc::string::ToString;
use alloc::vec::Vec;

use crate::error::{BinaryErrorKind, Error, Result};
use crate::schema::VmConfig;

/// The first 8 bytes of a binary configuration.
pub const MAGIC: [u8; 8] = *b"AXVMCFG\0";
/// The binary format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the header in front of the payload.
pub const HEADER_LEN: usize = 20;
/// The largest payload accepted (1 MiB).
pub const MAX_PAYLOAD_LEN: usize = 1 << 20;

const CRC32_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 as in IEEE 802.3, zlib and PNG (reflected polynomial 0xEDB88320,
/// initial value and final XOR 0xFFFFFFFF).
///
/// ```
/// assert_eq!(axvmconfig::crc32(b"123456789"), 0xcbf4_3926);
/// ```
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC32_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

fn binary(kind: BinaryErrorKind) -> Error {
    Error::Binary { file: None, kind }
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

impl VmConfig {
    /// Encodes the configuration in the binary form (header and payload).
    /// It fails only if the payload would exceed [`MAX_PAYLOAD_LEN`].
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let payload = postcard::to_allocvec(self).map_err(|e| {
            binary(BinaryErrorKind::Encode {
                reason: e.to_string(),
            })
        })?;
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(binary(BinaryErrorKind::TooLarge { len: payload.len() }));
        }
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        // Fits: checked against MAX_PAYLOAD_LEN above.
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Decodes a binary configuration and validates it. Any defect (short
    /// input, wrong magic or version, bad checksum, undecodable payload) is an
    /// [`Error::Binary`]; a configuration that decodes but breaks the rules
    /// is an [`Error::Invalid`].
    pub fn from_bytes(bytes: &[u8]) -> Result<VmConfig> {
        let config = Self::from_bytes_unvalidated(bytes)?;
        config.validate()?;
        Ok(config)
    }

    /// Like [`VmConfig::from_bytes`], without validation.
    pub fn from_bytes_unvalidated(bytes: &[u8]) -> Result<VmConfig> {
        if bytes.len() < HEADER_LEN {
            // Say "bad magic" as soon as the bytes present show it.
            let n = bytes.len().min(MAGIC.len());
            if bytes[..n] != MAGIC[..n] {
                return Err(binary(BinaryErrorKind::BadMagic));
            }
            return Err(binary(BinaryErrorKind::Truncated {
                needed: HEADER_LEN,
                got: bytes.len(),
            }));
        }
        if bytes[..8] != MAGIC {
            return Err(binary(BinaryErrorKind::BadMagic));
        }
        let version = le32(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(binary(BinaryErrorKind::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            }));
        }
        let len = le32(bytes, 12) as usize;
        if len > MAX_PAYLOAD_LEN {
            return Err(binary(BinaryErrorKind::TooLarge { len }));
        }
        let Some(payload) = bytes.get(HEADER_LEN..HEADER_LEN + len) else {
            return Err(binary(BinaryErrorKind::Truncated {
                needed: HEADER_LEN + len,
                got: bytes.len(),
            }));
        };
        let stored = le32(bytes, 16);
        let computed = crc32(payload);
        if stored != computed {
            return Err(binary(BinaryErrorKind::ChecksumMismatch {
                stored,
                computed,
            }));
        }
        let (config, rest) = postcard::take_from_bytes::<VmConfig>(payload).map_err(|e| {
            binary(BinaryErrorKind::Decode {
                reason: e.to_string(),
            })
        })?;
        if !rest.is_empty() {
            return Err(binary(BinaryErrorKind::PayloadNotConsumed {
                extra: rest.len(),
            }));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::*;
    use alloc::string::String;
    use alloc::vec;

    /// A configuration that uses every variant of the schema.
    fn everything() -> VmConfig {
        let mut c = VmConfig::new(
            9,
            "every-thing",
            64 << 20,
            "k.elf",
            BootProtocol::LinuxBzImage,
        );
        c.vcpus.count = 2;
        c.vcpus.phys_cpu_affinity = Some(vec![3, 3]);
        c.memory.push(MemoryRegion {
            gpa: 0x1000_0000,
            size: 0x10_0000,
            map: MapKind::Linear { hpa: 0x2_0000_0000 },
            flags: MemFlags::READ | MemFlags::WRITE,
        });
        c.memory.push(MemoryRegion {
            gpa: 0x2000_0000,
            size: 0x1000,
            map: MapKind::Identical,
            flags: MemFlags::READ | MemFlags::DEVICE | MemFlags::UNCACHED,
        });
        c.memory.push(MemoryRegion {
            gpa: 0x3000_0000,
            size: 0x20_0000,
            map: MapKind::AllocLazy,
            flags: MemFlags::RWX,
        });
        c.memory.push(MemoryRegion {
            gpa: 0xfec0_0000,
            size: 0x140_0000,
            map: MapKind::Reserved,
            flags: MemFlags::empty(),
        });
        c.kernel.load_addr = Some(0x10_0000);
        c.kernel.entry = Some(0x10_0200);
        c.kernel.cmdline = Some(String::from("console=ttyS0 \"quoted\" \\ back"));
        c.kernel.ramdisk = Some(RamdiskConfig {
            path: String::from("initrd.gz"),
            load_addr: Some(0x200_0000),
        });
        for kind in DeviceKind::ALL {
            let mut d = EmulatedDevice::new(kind);
            if kind.has_irq_line() {
                d.irq = Some(5);
            }
            c.devices.emulated.push(d);
        }
        c.devices.passthrough.push(PassthroughDevice {
            name: String::from("fb"),
            resource: PassthroughResource::Mmio {
                gpa: 0xe000_0000,
                hpa: 0xc000_0000,
                size: 0x100_0000,
            },
        });
        c.devices.passthrough.push(PassthroughDevice {
            name: String::from("com2"),
            resource: PassthroughResource::Ports {
                base: 0x2f8,
                count: 8,
            },
        });
        c
    }

    fn kind(r: Result<VmConfig>) -> BinaryErrorKind {
        match r {
            Err(Error::Binary { kind, file: None }) => kind,
            other => panic!("expected a binary error, got {other:?}"),
        }
    }

    /// xorshift64: a small deterministic generator for the fuzz-ish tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Replaces the payload and fixes up length and checksum.
    fn reseal(mut blob: Vec<u8>, payload: &[u8]) -> Vec<u8> {
        blob.truncate(HEADER_LEN);
        blob[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        blob[16..20].copy_from_slice(&crc32(payload).to_le_bytes());
        blob.extend_from_slice(payload);
        blob
    }

    #[test]
    fn crc32_matches_the_standard_check_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"a"), 0xe8b7_be43);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414f_a339
        );
    }

    #[test]
    fn the_test_config_is_valid() {
        assert_eq!(everything().problems(), vec![]);
    }

    #[test]
    fn header_layout() {
        let blob = everything().to_bytes().unwrap();
        assert_eq!(&blob[0..8], b"AXVMCFG\0");
        assert_eq!(blob[8..12], [1, 0, 0, 0]);
        let len = u32::from_le_bytes(blob[12..16].try_into().unwrap()) as usize;
        assert_eq!(len, blob.len() - 20);
        let crc = u32::from_le_bytes(blob[16..20].try_into().unwrap());
        assert_eq!(crc, crc32(&blob[20..]));
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let c = everything();
        let blob = c.to_bytes().unwrap();
        assert_eq!(VmConfig::from_bytes(&blob).unwrap(), c);
    }

    #[test]
    fn bytes_after_the_payload_are_ignored() {
        let c = everything();
        let mut blob = c.to_bytes().unwrap();
        blob.resize(blob.len().next_multiple_of(4096), 0xcc);
        assert_eq!(VmConfig::from_bytes(&blob).unwrap(), c);
    }

    #[test]
    fn every_truncation_is_a_clean_error() {
        let blob = everything().to_bytes().unwrap();
        for n in 0..blob.len() {
            let expected = if n < HEADER_LEN {
                BinaryErrorKind::Truncated {
                    needed: HEADER_LEN,
                    got: n,
                }
            } else {
                BinaryErrorKind::Truncated {
                    needed: blob.len(),
                    got: n,
                }
            };
            assert_eq!(
                kind(VmConfig::from_bytes(&blob[..n])),
                expected,
                "length {n}"
            );
        }
    }

    #[test]
    fn wrong_magic_is_reported_even_on_short_input() {
        assert_eq!(
            kind(VmConfig::from_bytes(b"ELF")),
            BinaryErrorKind::BadMagic
        );
        let mut blob = everything().to_bytes().unwrap();
        blob[3] = b'X';
        assert_eq!(kind(VmConfig::from_bytes(&blob)), BinaryErrorKind::BadMagic);
    }

    #[test]
    fn other_versions_are_refused() {
        let mut blob = everything().to_bytes().unwrap();
        blob[8] = 2;
        assert_eq!(
            kind(VmConfig::from_bytes(&blob)),
            BinaryErrorKind::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        );
    }

    #[test]
    fn oversized_length_is_refused_before_reading() {
        let mut blob = everything().to_bytes().unwrap();
        blob[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            kind(VmConfig::from_bytes(&blob)),
            BinaryErrorKind::TooLarge {
                len: u32::MAX as usize
            }
        );
    }

    #[test]
    fn a_changed_payload_byte_fails_the_checksum() {
        let blob = everything().to_bytes().unwrap();
        let stored = crc32(&blob[HEADER_LEN..]);
        let mut bad = blob.clone();
        bad[HEADER_LEN + 5] ^= 0x01;
        let computed = crc32(&bad[HEADER_LEN..]);
        assert_ne!(stored, computed);
        assert_eq!(
            kind(VmConfig::from_bytes(&bad)),
            BinaryErrorKind::ChecksumMismatch { stored, computed }
        );
    }

    #[test]
    fn every_single_byte_corruption_is_caught() {
        let blob = everything().to_bytes().unwrap();
        for i in 0..blob.len() {
            for pattern in [0x01u8, 0x80, 0xff, 0x5a] {
                let mut bad = blob.clone();
                bad[i] ^= pattern;
                assert!(
                    VmConfig::from_bytes(&bad).is_err(),
                    "byte {i} ^ {pattern:#x} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn garbage_payloads_with_a_valid_checksum_never_panic() {
        let blob = everything().to_bytes().unwrap();
        let payload = &blob[HEADER_LEN..];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut decoded = 0;
        for _ in 0..3000 {
            let mut p = payload.to_vec();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(p.len());
                p[i] = rng.next() as u8;
            }
            if rng.below(4) == 0 {
                p.truncate(rng.below(p.len()));
            }
            // Must return, Ok or Err, without panicking.
            if VmConfig::from_bytes(&reseal(blob.clone(), &p)).is_ok() {
                decoded += 1;
            }
        }
        // Some corruptions (a changed address digit) still give a valid config.
        assert!(decoded < 3000);
        // Pure noise too.
        for len in 0..200 {
            let noise: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = VmConfig::from_bytes(&reseal(blob.clone(), &noise));
        }
    }

    #[test]
    fn undecodable_payloads_are_decode_errors() {
        let blob = everything().to_bytes().unwrap();
        // An empty payload: the decoder runs out of input at once.
        assert!(matches!(
            kind(VmConfig::from_bytes(&reseal(blob.clone(), &[]))),
            BinaryErrorKind::Decode { .. }
        ));
        let mut p = blob[HEADER_LEN..].to_vec();
        p.push(0);
        assert_eq!(
            kind(VmConfig::from_bytes(&reseal(blob, &p))),
            BinaryErrorKind::PayloadNotConsumed { extra: 1 }
        );
    }

    #[test]
    fn from_bytes_validates() {
        let mut c = everything();
        c.vcpus.count = 0;
        let blob = c.to_bytes().unwrap();
        assert_eq!(VmConfig::from_bytes_unvalidated(&blob).unwrap(), c);
        match VmConfig::from_bytes(&blob) {
            Err(Error::Invalid(list)) => {
                assert!(list.iter().any(|e| e.field == "vcpus.count"), "{list:?}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn binary_errors_display_with_the_file() {
        let e = Error::Binary {
            file: None,
            kind: BinaryErrorKind::BadMagic,
        }
        .with_file("vm.bin");
        assert_eq!(
            alloc::format!("{e}"),
            "vm.bin: binary config: not a binary VM config (bad magic)"
        );
    }
}
