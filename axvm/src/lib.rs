#![cfg_attr(not(test), no_std)]
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

extern crate alloc;

mod error;
pub mod loader;

pub use error::{Error, Result};
