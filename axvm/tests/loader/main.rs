//! Image-level tests of the guest loaders, through the public API only.

mod apply;
mod elf;
mod images;
mod mbi;
mod multiboot;
