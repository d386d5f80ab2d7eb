//! A bounds-checked little-endian reader over a GGUF file's bytes. Every read names
//! what it was reading (built lazily, only on error) so a truncated file reports the
//! field it ended in.

use std::path::Path;

use crate::error::{ModelError, Result};

pub(crate) struct Cursor<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
}

/// Describes the field being read, for error messages; called only on error.
pub(crate) type What<'w> = &'w dyn Fn() -> String;

impl<'a> Cursor<'a> {
    pub fn new(path: &'a Path, buf: &'a [u8]) -> Self {
        Cursor { path, buf, pos: 0 }
    }

    pub fn path(&self) -> &'a Path {
        self.path
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes, or a `Truncated` error naming `what`.
    pub fn bytes(&mut self, n: u64, what: What) -> Result<&'a [u8]> {
        let start = self.pos as u64;
        let end = start.saturating_add(n);
        if end > self.buf.len() as u64 {
            return Err(ModelError::Truncated {
                path: self.path.to_owned(),
                what: what(),
                start,
                end,
                len: self.buf.len() as u64,
            });
        }
        let out = &self.buf[self.pos..end as usize];
        self.pos = end as usize;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self, what: What) -> Result<[u8; N]> {
        let b = self.bytes(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    pub fn u32(&mut self, what: What) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub fn u64(&mut self, what: What) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string: u64 byte length, then UTF-8 bytes (no terminator).
    pub fn string(&mut self, what: What) -> Result<String> {
        let len = self.u64(&|| format!("{} (string length)", what()))?;
        let bytes = self.bytes(len, &|| format!("{} (string of {len} bytes)", what()))?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(ModelError::InvalidUtf8 {
                path: self.path.to_owned(),
                what: what(),
            }),
        }
    }

    /// Checks that `count` items of at least `min_bytes_each` bytes can fit in what is
    /// left of the file, so that a corrupt count never drives an allocation.
    pub fn check_count(&self, count: u64, min_bytes_each: u64, what: What) -> Result<usize> {
        let min_bytes_each = min_bytes_each.max(1);
        let remaining = self.remaining() as u64;
        let fits = count
            .checked_mul(min_bytes_each)
            .is_some_and(|need| need <= remaining);
        if !fits {
            return Err(ModelError::CountTooLarge {
                path: self.path.to_owned(),
                what: what(),
                count,
                min_bytes_each,
                remaining,
            });
        }
        // count <= count * min_bytes_each <= remaining <= usize::MAX.
        Ok(count as usize)
    }
}
