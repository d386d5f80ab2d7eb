//! The bytes of a GGUF file: a read-only memory map (tensor data is never copied
//! into the heap), or an owned buffer for files given as bytes (tests, fuzzing).

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{ModelError, Result};

#[derive(Debug)]
pub(crate) enum Backing {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    pub fn map(path: &Path) -> Result<Backing> {
        let io = |source| ModelError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            // Mapping zero bytes fails on Linux; an empty file is reported as truncated
            // by the parser like any other short file.
            return Ok(Backing::Owned(Vec::new()));
        }
        // SAFETY: the map is read-only and lives as long as the `Backing`, which owns
        // it; slices handed out borrow the `Backing`. Memory maps are only undefined
        // behaviour if another process truncates or rewrites the file while it is
        // mapped; model files are opened read-only and treated as immutable while
        // loaded, the same contract llama.cpp relies on.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Ok(Backing::Mapped(map))
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

impl AsRef<[u8]> for Backing {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}
