//! The GEMM's weight layout (documented at the top of `cuda/w4a16_gemm.cu`, the only
//! reader): per 64-column tile and 16-deep k step, 32 lanes x 16 bytes, each lane holding
//! exactly the nibbles of its mma B fragments, ordered so one mask yields an f16x2 / bf16x2
//! pair. `unpack` inverts `pack`, which the layout's tests use.
//!
//! [`pack_reference`] places one nibble at a time where [`position`] says (the layout's
//! definition); [`pack`] writes each output word once from its eight nibbles, and
//! [`pack_parallel`] splits the column tiles (each a contiguous run of the output) over
//! threads. Loading a model packs every int4 matrix of the GPU's share: 1.5 ns a weight
//! nibble by nibble on the dev VM, seconds for a DeepSeek-V3 layer set (BENCHMARKS.md,
//! session 32).

/// Byte offset of lane `lane`'s 16 bytes for column tile `nt` and k step `ks`.
fn chunk_offset(k: usize, nt: usize, ks: usize, lane: usize) -> usize {
    ((nt * (k / 16) + ks) * 32 + lane) * 16
}

/// Where weight (column `c`, depth `kk`) lives: (byte-aligned word offset, nibble index).
/// Column c = 64 nt + 8 j + lane / 4, kk = 16 ks + 2 (lane % 4) + {0, 1, 8, 9}; word j / 2
/// of the lane's 16 bytes; nibbles {0, 4, 1, 5} for even j, {2, 6, 3, 7} for odd j, in the
/// order k + 0, k + 1, k + 8, k + 9.
fn position(k: usize, c: usize, kk: usize) -> (usize, usize) {
    let (nt, j, g) = (c / 64, (c % 64) / 8, c % 8);
    let (ks, r) = (kk / 16, kk % 16);
    let (quad, hi) = ((r % 8) / 2, r >= 8); // lane % 4, and whether it is k + 8 / k + 9
    let odd = r % 2 == 1;
    let lane = g * 4 + quad;
    let base = if j % 2 == 0 { 0 } else { 2 };
    let nibble = base + usize::from(hi) + if odd { 4 } else { 0 };
    (chunk_offset(k, nt, ks, lane) + (j / 2) * 4, nibble)
}

/// Bytes of one 64-column tile: k / 16 steps of 32 lanes x 16 bytes.
fn tile_bytes(k: usize) -> usize {
    k / 16 * 32 * 16
}

/// Writes column tiles `first..` of q (`[n, k]`, values -8..=7) into `out` (whole tiles:
/// `out.len()` is a multiple of [`tile_bytes`]), each 32-bit word once: word `jj` of lane
/// `lane` at k step `ks` holds columns `c0 = 64 nt + 16 jj + lane / 4` (nibbles 0, 4, 1, 5)
/// and `c0 + 8` (nibbles 2, 6, 3, 7) at depths `kk, kk + 1, kk + 8, kk + 9`, `kk = 16 ks +
/// 2 (lane % 4)` (see [`position`]).
fn pack_tiles(q: &[i8], k: usize, first: usize, out: &mut [u8]) {
    let nib = |c: usize, kk: usize| ((q[c * k + kk] + 8) as u32) & 0xf;
    let four = |c: usize, kk: usize| {
        nib(c, kk) | nib(c, kk + 8) << 4 | nib(c, kk + 1) << 16 | nib(c, kk + 9) << 20
    };
    for (t, tile) in out.chunks_exact_mut(tile_bytes(k)).enumerate() {
        let nt = first + t;
        for (ks, step) in tile.chunks_exact_mut(32 * 16).enumerate() {
            for (lane, bytes) in step.chunks_exact_mut(16).enumerate() {
                let kk = 16 * ks + 2 * (lane % 4);
                for (jj, word) in bytes.chunks_exact_mut(4).enumerate() {
                    let c0 = 64 * nt + 16 * jj + lane / 4;
                    let w = four(c0, kk) | four(c0 + 8, kk) << 8;
                    word.copy_from_slice(&w.to_le_bytes());
                }
            }
        }
    }
}

/// Packs q (`[n, k]`, values -8..=7, `n` a multiple of 64, `k` of 16) into the kernel layout
/// (n * k / 2 bytes), storing q + 8.
pub(crate) fn pack(q: &[i8], n: usize, k: usize) -> Vec<u8> {
    let mut out = vec![0u8; n * k / 2];
    pack_into(q, k, &mut out);
    out
}

/// [`pack`] into `out` (n * k / 2 bytes, every byte written).
pub(crate) fn pack_into(q: &[i8], k: usize, out: &mut [u8]) {
    pack_tiles(q, k, 0, out);
}

/// [`pack`] with the column tiles split over up to `threads` threads (the same bytes).
pub(crate) fn pack_parallel(q: &[i8], n: usize, k: usize, threads: usize) -> Vec<u8> {
    let mut out = vec![0u8; n * k / 2];
    let tiles = n / 64;
    let per = tiles.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        for (i, part) in out.chunks_mut(per * tile_bytes(k)).enumerate() {
            scope.spawn(move || pack_tiles(q, k, i * per, part));
        }
    });
    out
}

/// The layout's definition, one nibble at a time (the reference [`pack`] is tested against).
#[cfg(test)]
pub(crate) fn pack_reference(q: &[i8], n: usize, k: usize) -> Vec<u8> {
    let mut out = vec![0u8; n * k / 2];
    for c in 0..n {
        for kk in 0..k {
            let (word, nibble) = position(k, c, kk);
            let v = (q[c * k + kk] + 8) as u32 & 0xf;
            let mut w = u32::from_le_bytes(out[word..word + 4].try_into().expect("4 bytes"));
            w |= v << (4 * nibble);
            out[word..word + 4].copy_from_slice(&w.to_le_bytes());
        }
    }
    out
}

/// Inverse of [`pack`].
pub(crate) fn unpack(packed: &[u8], n: usize, k: usize) -> Vec<i8> {
    let mut q = vec![0i8; n * k];
    for c in 0..n {
        for kk in 0..k {
            let (word, nibble) = position(k, c, kk);
            let w = u32::from_le_bytes(packed[word..word + 4].try_into().expect("4 bytes"));
            q[c * k + kk] = ((w >> (4 * nibble)) & 0xf) as i8 - 8;
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nibble_is_used_once() {
        let (n, k) = (128, 256);
        let mut seen = vec![false; n * k];
        for c in 0..n {
            for kk in 0..k {
                let (word, nibble) = position(k, c, kk);
                let slot = word * 2 + nibble;
                assert!(!seen[slot], "column {c}, k {kk} collides");
                seen[slot] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    /// Values -8..=7 in a pattern with no period that lines up with the layout's.
    fn pattern(n: usize, k: usize) -> Vec<i8> {
        (0..n * k)
            .map(|i| ((i.wrapping_mul(2654435761) >> 7) % 16) as i8 - 8)
            .collect()
    }

    #[test]
    fn word_packing_matches_the_reference() {
        for (n, k) in [(64, 16), (64, 128), (128, 256), (192, 1408), (640, 2048)] {
            let q = pattern(n, k);
            let want = pack_reference(&q, n, k);
            assert_eq!(pack(&q, n, k), want, "n {n}, k {k}");
            let mut into = vec![0xA5u8; n * k / 2];
            pack_into(&q, k, &mut into);
            assert_eq!(into, want, "n {n}, k {k}: into a dirty buffer");
            for threads in [1, 2, 3, 16] {
                assert_eq!(
                    pack_parallel(&q, n, k, threads),
                    want,
                    "n {n}, k {k}, {threads} threads"
                );
            }
            assert_eq!(unpack(&want, n, k), q, "n {n}, k {k}");
        }
    }

    #[test]
    fn lane_zero_of_the_first_chunk() {
        // Lane 0 holds column 0 at k 0, 1, 8, 9 in nibbles 0, 4, 1, 5 of word 0, and
        // column 8 (sub-tile 1) in nibbles 2, 6, 3, 7.
        let k = 128;
        assert_eq!(position(k, 0, 0), (0, 0));
        assert_eq!(position(k, 0, 1), (0, 4));
        assert_eq!(position(k, 0, 8), (0, 1));
        assert_eq!(position(k, 0, 9), (0, 5));
        assert_eq!(position(k, 8, 0), (0, 2));
        assert_eq!(position(k, 8, 9), (0, 7));
        // Column 1 (lane 4), k 2 (lane 1): lane 4 + 1 = 5 holds it at byte 80.
        assert_eq!(position(k, 1, 2), (80, 0));
        // Column 16 is sub-tile 2: word 1 of lane 0.
        assert_eq!(position(k, 16, 0), (4, 0));
        // k 16 is the next k step: 32 lanes x 16 bytes later.
        assert_eq!(position(k, 0, 16), (512, 0));
        // Column 64 is the next tile: after all k / 16 steps of the first.
        assert_eq!(position(k, 64, 0), (512 * (k / 16), 0));
    }
}
