//! Host-testable logic of the hv-app hypervisor binary.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]
