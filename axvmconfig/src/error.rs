//! The crate's error type.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// One problem in a configuration: where it is and what is wrong.
///
/// It displays as `FILE: FIELD: REASON`, for example
/// `configs/bad.toml: memory[1].size: 0x1234 is not a multiple of 4 KiB (0x1000)`.
/// The file part is left out when the configuration did not come from a file,
/// and the field part when the problem is not tied to one field (a TOML syntax
/// error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the configuration was read from, if any.
    pub file: Option<String>,
    /// The path of the field at fault, as it is spelled in the TOML text:
    /// `memory[1].size`, `devices.emulated[0].kind`, `vcpus.count`. Empty when
    /// the problem has no field (a syntax error).
    pub field: String,
    /// What is wrong, in words. Errors found by the TOML reader end with their
    /// position, `(line L, column C)`.
    pub reason: String,
}

impl ConfigError {
    /// A problem with `field`, not yet tied to a file.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            file: None,
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.reason)
    }
}

impl core::error::Error for ConfigError {}

/// Why a binary configuration blob (see [`crate::VmConfig::from_bytes`]) was
/// refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinaryErrorKind {
    /// The input ends before the header or the payload it announces is complete.
    Truncated {
        /// Bytes needed to go on.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The first 8 bytes are not [`crate::MAGIC`].
    BadMagic,
    /// The format version in the header is not one this build reads.
    UnsupportedVersion {
        /// The version in the header.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// The announced payload length is above [`crate::MAX_PAYLOAD_LEN`].
    TooLarge {
        /// The announced length.
        len: usize,
    },
    /// The payload's CRC-32 differs from the one in the header.
    ChecksumMismatch {
        /// The checksum in the header.
        stored: u32,
        /// The checksum of the payload as read.
        computed: u32,
    },
    /// The payload does not decode as a configuration.
    Decode {
        /// The decoder's message.
        reason: String,
    },
    /// The payload decoded, but bytes of it were left over.
    PayloadNotConsumed {
        /// Left-over bytes.
        extra: usize,
    },
    /// The configuration could not be encoded.
    Encode {
        /// The encoder's message.
        reason: String,
    },
}

impl fmt::Display for BinaryErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { needed, got } => {
                write!(f, "truncated: needs {needed} bytes, got {got}")
            }
            Self::BadMagic => f.write_str("not a binary VM config (bad magic)"),
            Self::UnsupportedVersion { found, supported } => write!(
                f,
                "format version {found} is not supported (this build reads version {supported})"
            ),
            Self::TooLarge { len } => write!(
                f,
                "payload length {len} is above the limit of {} bytes",
                crate::MAX_PAYLOAD_LEN
            ),
            Self::ChecksumMismatch { stored, computed } => write!(
                f,
                "checksum mismatch: header says {stored:#010x}, payload gives {computed:#010x}"
            ),
            Self::Decode { reason } => write!(f, "payload does not decode: {reason}"),
            Self::PayloadNotConsumed { extra } => {
                write!(
                    f,
                    "payload has {extra} unread bytes after the configuration"
                )
            }
            Self::Encode { reason } => write!(f, "cannot encode: {reason}"),
        }
    }
}

/// Every error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TOML text is not valid TOML, or does not fit the schema (unknown
    /// field, wrong type, unknown device kind...). Reading stops at the first
    /// such error.
    #[error("{0}")]
    Parse(ConfigError),
    /// The configuration fits the schema but breaks its rules; every problem
    /// found is listed, one per line when displayed.
    #[error("{}", ProblemList(.0))]
    Invalid(Vec<ConfigError>),
    /// A binary configuration blob was refused.
    #[error("{}binary config: {kind}", FilePrefix(.file))]
    Binary {
        /// The file the blob was read from, if any.
        file: Option<String>,
        /// What is wrong with it.
        kind: BinaryErrorKind,
    },
    /// A file could not be read or written.
    #[cfg(feature = "std")]
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Ties the error to `file`: every [`ConfigError`] in it (and a binary
    /// error) then names that file.
    pub fn with_file(self, file: &str) -> Self {
        match self {
            Self::Parse(mut e) => {
                e.file = Some(file.into());
                Self::Parse(e)
            }
            Self::Invalid(mut list) => {
                for e in &mut list {
                    e.file = Some(file.into());
                }
                Self::Invalid(list)
            }
            Self::Binary { kind, .. } => Self::Binary {
                file: Some(file.into()),
                kind,
            },
            #[cfg(feature = "std")]
            other @ Self::Io { .. } => other,
        }
    }

    /// The configuration problems this error carries: one for
    /// [`Error::Parse`], all of them for [`Error::Invalid`], none otherwise.
    pub fn config_errors(&self) -> &[ConfigError] {
        match self {
            Self::Parse(e) => core::slice::from_ref(e),
            Self::Invalid(list) => list,
            _ => &[],
        }
    }
}

/// The result type of this crate.
pub type Result<T = ()> = core::result::Result<T, Error>;

struct ProblemList<'a>(&'a [ConfigError]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

struct FilePrefix<'a>(&'a Option<String>);

impl fmt::Display for FilePrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(file) => write!(f, "{file}: "),
            None => Ok(()),
        }
    }
}
