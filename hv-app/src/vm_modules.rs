//! Which boot modules carry VMs.
//!
//! The loader (QEMU `-initrd "a args,b args"`, GRUB `module` lines) passes
//! each module with a string, `"path args"`. By convention the last word
//! of that string says what the module is: [`VM_CONFIG_TAG`] (`vmcfg`) for
//! the binary form of a VM's `axvmconfig` configuration, [`VM_IMAGE_TAG`]
//! (`vmimage`) for a guest kernel image. They come in pairs, the
//! configuration first, then the image it describes:
//!
//! ```text
//! -initrd "hello.cfg vmcfg,hello vmimage,nimbos.cfg vmcfg,nimbos.bin vmimage"
//! ```
//!
//! Modules with any other last word are not VM parts and are skipped.

use alloc::vec::Vec;

use crate::{Error, Result};

/// Last word of the string of a module holding a binary VM configuration.
pub const VM_CONFIG_TAG: &str = "vmcfg";
/// Last word of the string of a module holding a guest kernel image.
pub const VM_IMAGE_TAG: &str = "vmimage";

/// What a boot module is, from the last word of its string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleRole {
    /// A VM configuration (`... vmcfg`).
    VmConfig,
    /// A guest kernel image (`... vmimage`).
    VmImage,
    /// Anything else.
    Other,
}

impl ModuleRole {
    /// The role of a module whose string is `string` (ASCII whitespace
    /// separates words; the tags are matched exactly, case-sensitive).
    pub fn of(string: &str) -> Self {
        match string.split_ascii_whitespace().next_back() {
            Some(VM_CONFIG_TAG) => Self::VmConfig,
            Some(VM_IMAGE_TAG) => Self::VmImage,
            _ => Self::Other,
        }
    }

    /// The tag of a VM part (`"vmcfg"`, `"vmimage"`), `"other"` otherwise.
    pub const fn name(self) -> &'static str {
        match self {
            Self::VmConfig => VM_CONFIG_TAG,
            Self::VmImage => VM_IMAGE_TAG,
            Self::Other => "other",
        }
    }
}

/// The two modules of one VM, as indices into the module list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmModules {
    /// Index of the configuration module.
    pub config: usize,
    /// Index of the kernel image module.
    pub image: usize,
}

/// Pairs the VM modules of a module list given by their roles, in order:
/// each configuration with the next VM module, which must be an image.
///
/// [`ModuleRole::Other`] modules are skipped. A configuration not followed
/// by an image, or an image without a configuration before it, is an
/// [`Error::UnpairedVmModule`] naming the module.
pub fn pair_vm_modules<I>(roles: I) -> Result<Vec<VmModules>>
where
    I: IntoIterator<Item = ModuleRole>,
{
    let mut pairs = Vec::new();
    let mut config = None;
    for (index, role) in roles.into_iter().enumerate() {
        match (role, config) {
            (ModuleRole::Other, _) => {}
            (ModuleRole::VmConfig, None) => config = Some(index),
            (ModuleRole::VmConfig, Some(c)) => {
                return Err(Error::UnpairedVmModule {
                    index: c,
                    problem: "is a vmcfg not followed by its vmimage (another vmcfg comes first)",
                });
            }
            (ModuleRole::VmImage, Some(c)) => {
                pairs.push(VmModules {
                    config: c,
                    image: index,
                });
                config = None;
            }
            (ModuleRole::VmImage, None) => {
                return Err(Error::UnpairedVmModule {
                    index,
                    problem: "is a vmimage without a vmcfg before it",
                });
            }
        }
    }
    if let Some(c) = config {
        return Err(Error::UnpairedVmModule {
            index: c,
            problem: "is a vmcfg not followed by its vmimage (no module after it)",
        });
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ModuleRole::*;

    #[test]
    fn role_is_the_last_word() {
        assert_eq!(ModuleRole::of("/tmp/hello.cfg vmcfg"), VmConfig);
        assert_eq!(ModuleRole::of("guests/hello  vmimage "), VmImage);
        assert_eq!(ModuleRole::of("vmimage"), VmImage);
        assert_eq!(ModuleRole::of("x\tvmcfg"), VmConfig);
        // Only the last word counts, exactly.
        assert_eq!(ModuleRole::of("vmcfg initrd.img"), Other);
        assert_eq!(ModuleRole::of("/boot/vmcfg"), Other);
        assert_eq!(ModuleRole::of("a VMIMAGE"), Other);
        assert_eq!(ModuleRole::of(""), Other);
        assert_eq!(VmConfig.name(), "vmcfg");
        assert_eq!(VmImage.name(), "vmimage");
    }

    #[test]
    fn pairs_in_order_skipping_other_modules() {
        let roles = [VmConfig, VmImage, Other, VmConfig, Other, VmImage];
        assert_eq!(
            pair_vm_modules(roles).unwrap(),
            [
                VmModules {
                    config: 0,
                    image: 1
                },
                VmModules {
                    config: 3,
                    image: 5
                }
            ]
        );
        assert!(pair_vm_modules([]).unwrap().is_empty());
        assert!(pair_vm_modules([Other, Other]).unwrap().is_empty());
    }

    #[test]
    fn unpaired_modules_are_named() {
        let unpaired = |roles: &[ModuleRole]| match pair_vm_modules(roles.iter().copied()) {
            Err(Error::UnpairedVmModule { index, problem }) => (index, problem),
            other => panic!("expected UnpairedVmModule, got {other:?}"),
        };
        let (i, why) = unpaired(&[VmImage]);
        assert_eq!(i, 0);
        assert!(why.contains("without a vmcfg"));
        let (i, why) = unpaired(&[VmConfig, VmImage, VmConfig]);
        assert_eq!(i, 2);
        assert!(why.contains("no module after it"));
        let (i, why) = unpaired(&[VmConfig, VmConfig, VmImage]);
        assert_eq!(i, 0);
        assert!(why.contains("another vmcfg"));
        let (i, _) = unpaired(&[VmConfig, VmImage, VmImage]);
        assert_eq!(i, 2);
    }
}
