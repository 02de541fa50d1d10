//! Where a UART's output goes: the [`UartBackend`] trait and a ring buffer
//! console.

use alloc::{collections::VecDeque, vec::Vec};

use spin::Mutex;

/// The other end of a UART's serial line: one [`write_byte`] call per byte
/// the guest sends, and [`read_byte`] for input. Called with the UART's
/// lock held (so bytes keep their order): must not call back into the
/// UART.
///
/// [`write_byte`]: Self::write_byte
/// [`read_byte`]: Self::read_byte
pub trait UartBackend: Send + Sync {
    /// Takes one byte sent by the guest.
    fn write_byte(&self, b: u8);

    /// Gives the next byte of input, if one is waiting. The UART asks when
    /// the guest polls its receiver (reads LSR or RBR) while the receive
    /// queue is empty, so a polling guest sees input without interrupts
    /// and without a host thread feeding it. The default has no input.
    fn read_byte(&self) -> Option<u8> {
        None
    }
}

/// Any `Fn(u8)` closure is a backend, e.g. `|b| host_console_putc(b)`.
impl<F: Fn(u8) + Send + Sync> UartBackend for F {
    fn write_byte(&self, b: u8) {
        self(b)
    }
}

/// A backend that discards everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullBackend;

impl UartBackend for NullBackend {
    fn write_byte(&self, _b: u8) {}
}

struct Ring {
    buf: VecDeque<u8>,
    capacity: usize,
    total: u64,
    dropped: u64,
}

/// A console that keeps the last `capacity` bytes written to it, dropping
/// the oldest when full. Meant for a VM's console in a hypervisor: the
/// control tool reads it with [`drain`](Self::drain) or
/// [`snapshot`](Self::snapshot) whenever it likes.
pub struct RingBuffer {
    inner: Mutex<Ring>,
}

impl RingBuffer {
    /// A ring buffer keeping the last `capacity` bytes. The memory is
    /// allocated now. A capacity of 0 keeps nothing (bytes are only counted).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Ring {
                buf: VecDeque::with_capacity(capacity),
                capacity,
                total: 0,
                dropped: 0,
            }),
        }
    }

    /// Appends bytes, dropping the oldest ones beyond the capacity.
    pub fn push(&self, bytes: &[u8]) {
        let mut r = self.inner.lock();
        r.total += bytes.len() as u64;
        let cap = r.capacity;
        // Only the last `cap` bytes of `bytes` can survive.
        let skipped = bytes.len().saturating_sub(cap);
        let bytes = &bytes[skipped..];
        let excess = (r.buf.len() + bytes.len()).saturating_sub(cap);
        r.buf.drain(..excess);
        r.buf.extend(bytes);
        r.dropped += (skipped + excess) as u64;
    }

    /// Removes and returns the buffered bytes, oldest first.
    pub fn drain(&self) -> Vec<u8> {
        self.inner.lock().buf.drain(..).collect()
    }

    /// Returns a copy of the buffered bytes, oldest first, leaving them in.
    pub fn snapshot(&self) -> Vec<u8> {
        self.inner.lock().buf.iter().copied().collect()
    }

    /// Number of bytes buffered.
    pub fn len(&self) -> usize {
        self.inner.lock().buf.len()
    }

    /// Whether no byte is buffered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Maximum number of bytes kept.
    pub fn capacity(&self) -> usize {
        self.inner.lock().capacity
    }

    /// Number of bytes ever written (buffered, drained or dropped).
    pub fn total_written(&self) -> u64 {
        self.inner.lock().total
    }

    /// Number of bytes dropped because the buffer was full (they were
    /// neither drained nor are still buffered).
    pub fn dropped(&self) -> u64 {
        self.inner.lock().dropped
    }
}

impl UartBackend for RingBuffer {
    fn write_byte(&self, b: u8) {
        self.push(&[b]);
    }
}
