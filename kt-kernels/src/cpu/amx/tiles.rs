//! The AMX tile configuration and one-instruction wrappers (inline assembly: the AMX
//! intrinsics are not stable in Rust 1.95, `asm!` is).
//!
//! The tile registers are not allocated by the compiler, so their contents persist from
//! one `asm!` block to the next; blocks keep their order because none is `pure`.

/// The 64-byte operand of `ldtilecfg` (palette 1).
#[repr(C, align(64))]
pub(crate) struct TileConfig([u8; 64]);

impl TileConfig {
    pub fn new() -> TileConfig {
        let mut c = TileConfig([0; 64]);
        c.0[0] = 1;
        c
    }

    /// Tile `t` (0..8) gets `rows` rows of `colsb` bytes (rows <= 16, colsb <= 64). A tile
    /// left at 0 rows is unconfigured and must not be used.
    pub fn set(&mut self, t: usize, rows: usize, colsb: usize) {
        debug_assert!(t < 8 && rows <= 16 && colsb <= 64);
        self.0[16 + 2 * t..18 + 2 * t].copy_from_slice(&(colsb as u16).to_le_bytes());
        self.0[48 + t] = rows as u8;
    }

    /// Loads this configuration (zeroes every tile).
    ///
    /// # Safety
    /// AMX must be usable by this process (`Isa::Amx.check()` passed), and the
    /// configuration valid (rows <= 16, colsb <= 64, palette 1).
    pub unsafe fn load(&self) {
        // SAFETY: the caller guarantees AMX; the operand is a live 64-byte buffer.
        unsafe {
            std::arch::asm!("ldtilecfg [{0}]", in(reg) self.0.as_ptr(), options(nostack, readonly, preserves_flags))
        };
    }
}

/// Returns the tiles to the init state (ends the thread's use of AMX for this item).
///
/// # Safety
/// AMX must be usable by this process.
pub(crate) unsafe fn release() {
    // SAFETY: the caller guarantees AMX.
    unsafe { std::arch::asm!("tilerelease", options(nostack, nomem, preserves_flags)) };
}

/// `tileloadd tmmT, [ptr + stride]`: rows of the configured size, `stride` bytes apart.
macro_rules! tile_load {
    ($t:literal, $ptr:expr, $stride:expr) => {
        std::arch::asm!(
            concat!("tileloadd tmm", stringify!($t), ", [{p} + {s}*1]"),
            p = in(reg) $ptr,
            s = in(reg) $stride,
            options(nostack, readonly, preserves_flags)
        )
    };
}

/// `tilestored [ptr + stride], tmmT`.
macro_rules! tile_store {
    ($t:literal, $ptr:expr, $stride:expr) => {
        std::arch::asm!(
            concat!("tilestored [{p} + {s}*1], tmm", stringify!($t)),
            p = in(reg) $ptr,
            s = in(reg) $stride,
            options(nostack, preserves_flags)
        )
    };
}

macro_rules! tile_zero {
    ($t:literal) => {
        std::arch::asm!(
            concat!("tilezero tmm", stringify!($t)),
            options(nostack, nomem, preserves_flags)
        )
    };
}

/// `tdpbssd tmmC, tmmA, tmmB`: C (i32) += A (s8, rows x 4k) . B (s8, VNNI form).
macro_rules! tile_dp_i8 {
    ($c:literal, $a:literal, $b:literal) => {
        std::arch::asm!(
            concat!(
                "tdpbssd tmm",
                stringify!($c),
                ", tmm",
                stringify!($a),
                ", tmm",
                stringify!($b)
            ),
            options(nostack, nomem, preserves_flags)
        )
    };
}

/// `tdpbusd tmmC, tmmA, tmmB`: C (i32) += A (u8, rows x 4k) . B (s8, VNNI form).
macro_rules! tile_dp_u8i8 {
    ($c:literal, $a:literal, $b:literal) => {
        std::arch::asm!(
            concat!(
                "tdpbusd tmm",
                stringify!($c),
                ", tmm",
                stringify!($a),
                ", tmm",
                stringify!($b)
            ),
            options(nostack, nomem, preserves_flags)
        )
    };
}

/// `tdpbf16ps tmmC, tmmA, tmmB`: C (f32) += A (bf16 pairs) . B (bf16 pairs, VNNI form).
macro_rules! tile_dp_bf16 {
    ($c:literal, $a:literal, $b:literal) => {
        std::arch::asm!(
            concat!(
                "tdpbf16ps tmm",
                stringify!($c),
                ", tmm",
                stringify!($a),
                ", tmm",
                stringify!($b)
            ),
            options(nostack, nomem, preserves_flags)
        )
    };
}

pub(crate) use {tile_dp_bf16, tile_dp_i8, tile_dp_u8i8, tile_load, tile_store, tile_zero};
