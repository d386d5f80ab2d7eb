//! Software prefetch hints for code outside the kernels (the kernels issue their own inside
//! their loops): the GEMV items that wait for their activations, and the MoE decode's warm-up
//! of predicted experts. A hint changes no value and never faults, so these are safe to call
//! on any address inside (or, for [`lines_l1`], computed from) a live buffer.

/// Cache line size of every x86-64 CPU this targets.
pub(crate) const LINE: usize = 64;

/// Asks for the `bytes` from `p` on in L1 (`prefetcht0`, a line at a time). The address
/// arithmetic wraps, so `p` need only be computed from a live pointer.
#[inline]
pub(crate) fn lines_l1(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..bytes).step_by(LINE) {
        // SAFETY: prefetcht0 is part of SSE (baseline on x86_64); a prefetch never faults
        // and changes no value, whatever the address.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off).cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

/// Asks for the line holding `byte` in L2 (`prefetcht1`).
#[inline(always)]
pub(crate) fn line_l2(byte: &u8) {
    line_l2_at(byte);
}

/// Asks for the line holding `p` in L2 (`prefetcht1`). The address arithmetic may wrap:
/// `p` need only be computed from a live pointer.
#[inline(always)]
pub(crate) fn line_l2_at(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetcht1 is part of SSE (baseline on x86_64); a prefetch never faults and
    // changes no value, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        _mm_prefetch::<_MM_HINT_T1>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
