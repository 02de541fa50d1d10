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
    if find_multiboot(&data).is_none() {
        return Err(format!(
            "guest image {}: not a multiboot v1 kernel (no multiboot header with a valid \
             checksum in its first 8 KiB); hv-app boots multiboot kernels such as the \
             guests/ binaries, NimbOS or ArceOS built for x86_64 pc",
            image.display()
        ));
    }
    Ok(data)
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
