//! Turning VM configs and guest images into the multiboot modules hv-app
//! reads: for each VM, its config in binary form (module string ending in
//! `vmcfg`) followed by its kernel image (ending in `vmimage`).

use std::path::{Path, PathBuf};

use axvmconfig::VmConfig;

/// One VM to start: a config file and the kernel image to run under it.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The VM configuration (TOML or binary form).
    pub config: PathBuf,
    /// The multiboot kernel image.
    pub image: PathBuf,
    /// A VM name replacing the config's (the test guests share one config).
    pub name: Option<String>,
}

/// A guest that is not part of this repository: the user builds it from
/// its own sources and gives the kernel with `--image`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalGuest {
    /// The name `--guest` takes.
    pub name: &'static str,
    /// Its VM configuration, relative to the workspace root.
    pub config: &'static str,
    /// What to build and where it comes from (for error messages).
    pub source: &'static str,
}

/// The guests `--guest NAME --image KERNEL` runs under their own config.
pub const EXTERNAL_GUESTS: [ExternalGuest; 2] = [
    ExternalGuest {
        name: "nimbos",
        config: "configs/nimbos.toml",
        source: "a NimbOS kernel for x86_64 `pc` (its nimbos.bin or ELF, with the user apps \
                 built in), built from https://github.com/rcore-os/nimbos (`cd kernel && make user \
                 build ARCH=x86_64`)",
    },
    ExternalGuest {
        name: "arceos",
        config: "configs/arceos.toml",
        source: "an ArceOS app for x86_64 `x86-pc` (e.g. helloworld_x86-pc.bin or .elf), built \
                 from https://github.com/arceos-org/arceos (`make ARCH=x86_64 A=examples/helloworld`)",
    },
];

/// The external guest called `name`, if there is one.
pub fn external_guest(name: &str) -> Option<&'static ExternalGuest> {
    EXTERNAL_GUESTS.iter().find(|g| g.name == name)
}

impl ExternalGuest {
    /// The error for a missing `--image`.
    pub fn image_needed(&self) -> String {
        format!(
            "--guest {} needs --image KERNEL: {}; see {} for what it needs",
            self.name, self.source, self.config
        )
    }

    /// Checks that `image` is such a kernel (readable, multiboot v1), with
    /// an error that says what was expected and where it comes from.
    pub fn check_image(&self, image: &Path) -> Result<(), String> {
        check_image(image).map(|_| ()).map_err(|e| {
            format!(
                "{e}\n  --guest {} expects {}; see {}",
                self.name, self.source, self.config
            )
        })
    }
}

/// Finds a multiboot v1 header (magic, checksum) in the first 8 KiB of
/// `data`, 4-byte aligned; returns its offset and flags.
pub fn find_multiboot(data: &[u8]) -> Option<(usize, u32)> {
    let scan = &data[..data.len().min(8192)];
    (0..scan.len().saturating_sub(11))
        .step_by(4)
        .find_map(|off| {
            let word = |i: usize| {
                u32::from_le_bytes(scan[off + i..off + i + 4].try_into().expect("4 bytes"))
            };
            let (magic, flags, sum) = (word(0), word(4), word(8));
            (magic == 0x1BAD_B002 && magic.wrapping_add(flags).wrapping_add(sum) == 0)
                .then_some((off, flags))
        })
}

/// Checks that `image` is a kernel hv-app can boot (a multiboot v1 image),
/// with an error that says what was expected.
pub fn check_image(image: &Path) -> Result<Vec<u8>, String> {
    let data = std::fs::read(image).map_err(|e| format!("guest image {}: {e}", image.display()))?;
    let Some((off, flags)) = find_multiboot(&data) else {
        return Err(format!(
            "guest image {}: not a multiboot v1 kernel (no multiboot header with a valid \
             checksum in its first 8 KiB); hv-app boots multiboot kernels such as the \
             guests/ binaries, NimbOS or ArceOS built for x86_64 pc",
            image.display()
        ));
    };
    if let Some(short) = aout_shortfall(&data, off, flags) {
        return Err(format!(
            "guest image {}: its multiboot header loads {} bytes from file offset {:#x} \
             (load_addr..load_end_addr), but the file ends {short} bytes early, as an \
             `objcopy -O binary` image does when its load area ends in zeros; give the \
             ELF file instead, or pad the image: truncate -s {} {}",
            image.display(),
            short.load_size,
            short.file_offset,
            short.file_offset + short.load_size,
            image.display()
        ));
    }
    Ok(data)
}

/// How much shorter than its a.out-kludge load area an image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    /// File offset the load area starts at.
    pub file_offset: u64,
    /// `load_end_addr - load_addr`.
    pub load_size: u64,
    /// Bytes missing at the end of the file.
    pub missing: u64,
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.missing)
    }
}

/// With the address fields (flag bit 16), the bytes the header at `off`
/// asks to load that `data` does not have (Multiboot 0.6.96 section 3.1.3:
/// the load area starts `header_addr - load_addr` bytes before the header
/// and is `load_end_addr - load_addr` long; 0 means to the end of file).
pub fn aout_shortfall(data: &[u8], off: usize, flags: u32) -> Option<Shortfall> {
    if flags & (1 << 16) == 0 {
        return None;
    }
    let word = |i: usize| -> Option<u64> {
        let b = data.get(off + i..off + i + 4)?;
        Some(u64::from(u32::from_le_bytes(b.try_into().ok()?)))
    };
    let (header_addr, load_addr, load_end) = (word(12)?, word(16)?, word(20)?);
    if load_end == 0 || load_end < load_addr || header_addr < load_addr {
        return None;
    }
    let file_offset = (off as u64).checked_sub(header_addr - load_addr)?;
    let load_size = load_end - load_addr;
    let have = (data.len() as u64).saturating_sub(file_offset);
    (have < load_size).then(|| Shortfall {
        file_offset,
        load_size,
        missing: load_size - have,
    })
}

/// Loads, validates and encodes each VM's config (VM ids become 1, 2, ... in
/// order), copies the images next to them under `dir`, and returns QEMU's
/// `-initrd` argument.
pub fn prepare_modules(specs: &[VmSpec], dir: &Path) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut modules = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let mut cfg = VmConfig::load_any_file(&spec.config).map_err(|e| e.to_string())?;
        cfg.id = i + 1;
        if let Some(name) = &spec.name {
            cfg.name = name.clone();
        }
        let image = check_image(&spec.image)?;
        if let Err(e) = cfg.check_kernel_size(image.len() as u64) {
            return Err(format!("{}: {e}", spec.image.display()));
        }
        let cfg_path = dir.join(format!("vm{}.cfg", i + 1));
        let bytes = cfg.to_bytes().map_err(|e| e.to_string())?;
        std::fs::write(&cfg_path, bytes).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
        let img_path = dir.join(format!("vm{}.img", i + 1));
        std::fs::write(&img_path, &image).map_err(|e| format!("{}: {e}", img_path.display()))?;
        for p in [&cfg_path, &img_path] {
            let s = p.display().to_string();
            if s.contains([',', ' ']) {
                return Err(format!(
                    "{s}: QEMU module paths cannot hold commas or spaces; move the checkout"
                ));
            }
        }
        modules.push(format!("{} vmcfg", cfg_path.display()));
        modules.push(format!("{} vmimage", img_path.display()));
    }
    Ok(modules.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u32) -> Vec<u8> {
        let magic: u32 = 0x1BAD_B002;
        let sum = 0u32.wrapping_sub(magic).wrapping_sub(flags);
        let mut v = vec![0u8; 16];
        v.extend(magic.to_le_bytes());
        v.extend(flags.to_le_bytes());
        v.extend(sum.to_le_bytes());
        v
    }

    #[test]
    fn finds_header_and_rejects_bad_checksum() {
        assert_eq!(find_multiboot(&header(0x10002)), Some((16, 0x10002)));
        let mut bad = header(0x10002);
        bad[24] ^= 1;
        assert_eq!(find_multiboot(&bad), None);
        assert_eq!(find_multiboot(b"short"), None);
    }

    /// An a.out-kludge image like ArceOS's: header at file offset 8,
    /// load_addr 0x200000, load_end 0x200000 + `load`, `len` bytes long.
    fn aout(load: u32, len: usize) -> Vec<u8> {
        let flags = 0x0001_0002u32;
        let magic = 0x1BAD_B002u32;
        let mut v = vec![0u8; len];
        let fields = [
            magic,
            flags,
            0u32.wrapping_sub(magic).wrapping_sub(flags),
            0x20_0008,
            0x20_0000,
            0x20_0000 + load,
            0x25_8000,
            0x20_0000,
        ];
        for (i, f) in fields.iter().enumerate() {
            v[8 + 4 * i..12 + 4 * i].copy_from_slice(&f.to_le_bytes());
        }
        v
    }

    #[test]
    fn short_aout_images_are_caught() {
        // ArceOS helloworld: load area 0x15000 bytes, objcopy gave 82240.
        let img = aout(0x15000, 82240);
        assert_eq!(find_multiboot(&img), Some((8, 0x1_0002)));
        assert_eq!(
            aout_shortfall(&img, 8, 0x1_0002),
            Some(Shortfall {
                file_offset: 0,
                load_size: 0x15000,
                missing: 0x15000 - 82240
            })
        );
        assert_eq!(aout_shortfall(&aout(0x15000, 0x15000), 8, 0x1_0002), None);
        // No address fields, or load_end 0 (to the end of the file): fine.
        assert_eq!(aout_shortfall(&img, 8, 0x2), None);
        assert_eq!(aout_shortfall(&aout(0, 64), 8, 0x1_0002), None);
        let p = std::env::temp_dir().join("xtask-short-aout.bin");
        std::fs::write(&p, &img).unwrap();
        let e = check_image(&p).unwrap_err();
        assert!(e.contains("3776 bytes early"), "{e}");
        assert!(e.contains("truncate -s 86016"), "{e}");
    }

    #[test]
    fn external_guests_say_where_their_image_comes_from() {
        let n = external_guest("nimbos").unwrap();
        assert_eq!(n.config, "configs/nimbos.toml");
        assert!(external_guest("hello").is_none());
        let e = n.image_needed();
        assert!(
            e.contains("--image") && e.contains("github.com/rcore-os/nimbos"),
            "{e}"
        );
        let e = n
            .check_image(Path::new("/nonexistent/nimbos.bin"))
            .unwrap_err();
        assert!(e.contains("/nonexistent/nimbos.bin"), "{e}");
        assert!(e.contains("configs/nimbos.toml"), "{e}");
        let p = std::env::temp_dir().join("xtask-not-arceos");
        std::fs::write(&p, b"#!/bin/sh\necho not a kernel\n").unwrap();
        let a = external_guest("arceos").unwrap();
        let e = a.check_image(&p).unwrap_err();
        assert!(e.contains("not a multiboot v1 kernel"), "{e}");
        assert!(e.contains("github.com/arceos-org/arceos"), "{e}");
        // Every external guest's config exists in the workspace.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for g in EXTERNAL_GUESTS {
            assert!(root.join(g.config).is_file(), "{}", g.config);
        }
    }

    #[test]
    fn image_error_says_what_was_expected() {
        let p = std::env::temp_dir().join("xtask-not-multiboot");
        std::fs::write(&p, vec![0u8; 9000]).unwrap();
        let e = check_image(&p).unwrap_err();
        assert!(e.contains("not a multiboot v1 kernel"), "{e}");
        let e = check_image(Path::new("/nonexistent/kernel")).unwrap_err();
        assert!(e.contains("/nonexistent/kernel"), "{e}");
    }
}
