//! The GEMM's weight layout (documented at the top of `cuda/w4a16_gemm.cu`, the only
//! reader): per 64-column tile and 16-deep k step, 32 lanes x 16 bytes, each lane holding
//! exactly the nibbles of its mma B fragments, ordered so one mask yields an f16x2 / bf16x2
//! pair. `unpack` inverts `pack`, which the layout's tests use.

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

/// Packs q (`[n, k]`, values -8..=7) into the kernel layout (n * k / 2 bytes), storing q + 8.
pub(crate) fn pack(q: &[i8], n: usize, k: usize) -> Vec<u8> {
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
