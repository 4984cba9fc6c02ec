//! Printing without the heap: format into a stack buffer, then `write(2)` ([`hakmem_os::write_fd`]).
use core::fmt::{self, Write};

/// A fixed buffer that formats with `core::fmt` and writes itself to a file descriptor.
pub struct StackWriter<const N: usize> {
    buf: [u8; N],
    len: usize,
    fd: i32,
}

impl<const N: usize> StackWriter<N> {
    /// An empty buffer bound for `fd`.
    pub fn new(fd: i32) -> Self {
        Self {
            buf: [0; N],
            len: 0,
            fd,
        }
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) {
        // A refused write is dropped: there is nowhere else to report it.
        let _ = hakmem_os::write_fd(self.fd, &self.buf[..self.len]);
        self.len = 0;
    }
}

impl<const N: usize> Write for StackWriter<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.as_bytes().chunks(N) {
            if self.len + chunk.len() > N {
                self.flush();
            }
            self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk);
            self.len += chunk.len();
        }
        Ok(())
    }
}

impl<const N: usize> Drop for StackWriter<N> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Writes one formatted message to stderr without allocating.
pub fn eprint(args: fmt::Arguments<'_>) {
    let mut w = StackWriter::<512>::new(2);
    let _ = w.write_fmt(args);
}

/// A small fixed buffer to format into (what does not fit is cut off).
pub struct Buf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Buf<N> {
    /// Empty.
    pub fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }

    /// What was written (whole characters only).
    pub fn as_str(&self) -> &str {
        match core::str::from_utf8(&self.buf[..self.len]) {
            Ok(s) => s,
            // Cut inside a character: up to where it starts.
            Err(e) => core::str::from_utf8(&self.buf[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    /// What was written, as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> Write for Buf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}
