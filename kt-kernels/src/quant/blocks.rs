//! GGUF's block layouts, byte for byte. Each struct is `#[repr(C)]` with a compile-time
//! size assert; `cuda/include/kt_blocks.cuh` mirrors them with `static_assert`s.
//!
//! Half-precision fields are `half::f16` (a `u16` in memory). All layouts have 2-byte
//! alignment except [`BlockQ8K`] (4), which only ever lives in buffers kt allocates.

use half::f16;

use super::{QK, QK_K};

/// Q4_0: 32 weights as 4-bit `q - 8`, one scale. `w = d * (q - 8)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ4_0 {
    pub d: f16,
    /// Element `j` in the low nibble of byte `j`, element `j + 16` in its high nibble.
    pub qs: [u8; QK / 2],
}

/// Q4_1: 32 weights as 4-bit `q`, scale and minimum. `w = d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}

/// Q5_0: 32 weights as 5-bit `q - 16`. Bit 4 of element `j` is bit `j` of `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// Q5_1: 32 weights as 5-bit `q` with scale and minimum. `w = d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// Q8_0: 32 weights as int8 with one scale. `w = d * q`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}

/// Q8_1: Q8_0 plus `s = d * sum(qs)` (the activation type of Q4_1 / Q5_1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK],
}

/// Q2_K: 16 sub-blocks of 16 weights, 2-bit quants, 4-bit scale and 4-bit min per
/// sub-block. `w = d * (scales[i] & 15) * q - dmin * (scales[i] >> 4)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}

/// Q3_K: 16 sub-blocks of 16 weights, 3-bit quants (2 low bits in `qs`, the high bit in
/// `hmask`), 6-bit signed scales packed in 12 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: f16,
}

/// Q4_K: 8 sub-blocks of 32 weights, 4-bit quants, 6-bit scale and 6-bit min per
/// sub-block packed in 12 bytes. `w = d * sc * q - dmin * m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

/// Q5_K: Q4_K plus a fifth bit per weight in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// Q6_K: 16 sub-blocks of 16 weights, 6-bit quants (`ql` low 4 bits, `qh` high 2 bits)
/// stored as `q + 32`, int8 scale per sub-block. `w = d * scales[i] * (q - 32)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

/// Q8_K: the K-quants' activation type. f32 scale, int8 quants and the sums of each
/// group of 16 quants (used for the K-quants' minimums).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

const _: () = {
    use std::mem::size_of;
    assert!(size_of::<BlockQ4_0>() == 18);
    assert!(size_of::<BlockQ4_1>() == 20);
    assert!(size_of::<BlockQ5_0>() == 22);
    assert!(size_of::<BlockQ5_1>() == 24);
    assert!(size_of::<BlockQ8_0>() == 34);
    assert!(size_of::<BlockQ8_1>() == 36);
    assert!(size_of::<BlockQ2K>() == 84);
    assert!(size_of::<BlockQ3K>() == 110);
    assert!(size_of::<BlockQ4K>() == 144);
    assert!(size_of::<BlockQ5K>() == 176);
    assert!(size_of::<BlockQ6K>() == 210);
    assert!(size_of::<BlockQ8K>() == 292);
};

/// A block type that may be viewed from raw bytes: every bit pattern is a valid value.
///
/// # Safety
/// Implementors must be `#[repr(C)]` plain-old-data with no padding and no invalid
/// bit patterns.
pub unsafe trait Block: Copy + 'static {}

// SAFETY: all fields are integers or f16 (u16), laid out by repr(C) without padding
// (the size asserts above equal the sum of the field sizes).
unsafe impl Block for BlockQ4_0 {}
// SAFETY: as above.
unsafe impl Block for BlockQ4_1 {}
// SAFETY: as above.
unsafe impl Block for BlockQ5_0 {}
// SAFETY: as above.
unsafe impl Block for BlockQ5_1 {}
// SAFETY: as above.
unsafe impl Block for BlockQ8_0 {}
// SAFETY: as above.
unsafe impl Block for BlockQ8_1 {}
// SAFETY: as above.
unsafe impl Block for BlockQ2K {}
// SAFETY: as above.
unsafe impl Block for BlockQ3K {}
// SAFETY: as above.
unsafe impl Block for BlockQ4K {}
// SAFETY: as above.
unsafe impl Block for BlockQ5K {}
// SAFETY: as above.
unsafe impl Block for BlockQ6K {}
// SAFETY: as above (f32 + i8 + i16 arrays, 4 + 256 + 32 = 292 bytes).
unsafe impl Block for BlockQ8K {}

/// Reads block `i` of a byte row (unaligned-safe copy).
#[inline]
pub fn read_block<B: Block>(bytes: &[u8], i: usize) -> B {
    let size = std::mem::size_of::<B>();
    let chunk = &bytes[i * size..(i + 1) * size];
    // SAFETY: `chunk` holds exactly size_of::<B>() bytes and B accepts any bit pattern
    // (Block's contract); read_unaligned has no alignment requirement.
    unsafe { std::ptr::read_unaligned(chunk.as_ptr() as *const B) }
}

/// Writes block `i` of a byte row.
#[inline]
pub fn write_block<B: Block>(bytes: &mut [u8], i: usize, block: &B) {
    let size = std::mem::size_of::<B>();
    let chunk = &mut bytes[i * size..(i + 1) * size];
    // SAFETY: `chunk` holds exactly size_of::<B>() bytes; write_unaligned has no
    // alignment requirement and B has no padding, so every byte written is initialised.
    unsafe { std::ptr::write_unaligned(chunk.as_mut_ptr() as *mut B, *block) }
}

/// Number of `B` blocks in `bytes`, checking it is a whole number.
#[inline]
pub fn block_count<B: Block>(bytes: &[u8]) -> usize {
    let size = std::mem::size_of::<B>();
    debug_assert_eq!(bytes.len() % size, 0);
    bytes.len() / size
}
