//! The work split of one projection: items of (expert, row block, position block), with
//! sizes that depend only on how many positions the expert got, so results do not
//! depend on the number of threads.
//!
//! The rows are a range parameter (the whole projection, or a NUMA node's slice of the
//! intermediate dimension).

use std::ops::Range;

use super::routing::Routing;
use crate::cpu::GEMV_MAX_TOKENS;

/// Rows per item when an expert has few positions (decode). Large items stream faster:
/// the kernels repack the activations and restart their weight prefetch once per tile,
/// and on the 2-core and 16-core Xeons measured here 128-row items beat 32-row ones by
/// 25-50% at one token. Halved (down to 32) only while a phase would have fewer than
/// `MIN_GEMV_ITEMS` items, which depends on the routing alone, never on the threads; so
/// at one token DeepSeek-V3 (2048 / 7168 rows, 8 experts) takes 256-row items and
/// V2-Lite (1408 / 2048 rows, 6 experts) 128-row ones. 256 rather than 128 (session 25,
/// device, 16 threads, `kt-bench moe`, the two taking turns call by call in one process,
/// seven processes on three instances): V3 Q4_K at one token 1.0-4.5% faster in all
/// seven (e.g. 1.4594 -> 1.4198 ms), at 4 tokens 1.8 / 1.9% faster; V2-Lite (256-row
/// items from two tokens on) at 4 tokens 0.8 / 1.6% faster, at two level (+0.1 / -0.6%),
/// at one unchanged; the repacked int4 g128 layer level or up to 0.9% faster. 512 rows
/// while a phase keeps 32 items read V3 faster still (1.6-5.8%) but V2-Lite up to 2.7%
/// slower at one and two tokens (36-48 items for 16 threads); 512 while it keeps 64
/// gained V3 less at one token (0.7 / 1.2%). Earlier (session 16, separate processes)
/// larger items had read the hybrid V2-Lite decode slower; its one-token items are
/// unchanged here.
pub(crate) const GEMV_ROW_BLOCK: usize = 256;
pub(crate) const GEMV_MIN_ROW_BLOCK: usize = 32;
pub(crate) const MIN_GEMV_ITEMS: usize = 64;
/// Rows and positions per item for busy experts (prefill): a 128-row weight block stays
/// in L2 while up to 64 positions' activations stream by. 128 rather than 64: the AMX
/// kernels rearrange an item's activations once (Q4_K: transposed to VNNI form; INT4:
/// per super-block) and share that over the item's rows; V3 still has 16 row blocks per
/// expert (4096 gate/up items at 512 tokens), V2-Lite 11.
pub(crate) const GEMM_ROW_BLOCK: usize = 128;
pub(crate) const GEMM_TOKEN_BLOCK: usize = 64;
/// Rows per busy item where the projection runs the AMX K-quant GEMM (the GGUF layers'
/// prefill on AMX). Each item transposes its positions' activations once per projection
/// (~4% of a V3 Q4_K 512-token call at 128 rows) and starts its weight stream cold (the
/// first super-blocks' prefetch has no lead), so larger items pay that over more rows.
/// Dev VM, 1 thread, V3 Q4_K 512 tokens, CPU ms per call (a VM shared with four other
/// builds: +-15% run to run): 128 rows 2435, 1961, 1717, 1847, 2047; 256 rows 1615, 1665,
/// 1702, 1830, 1750; 512 rows 1790, 1696; the whole branch against its base, 1525-1768
/// vs 1584-1867; device, 16 threads, one call: 224 / 219 ms vs base 222 / 238 (CPU -1%,
/// -6%) (`bench-results/2026-11-22-s9-prefill9`); a second call, 256 / 128 rows / base
/// rotating x3: 202 / 197 / 190 vs 199 / 208 / 190 vs 205 / 188 / 193 ms, level
/// (`bench-results/2026-11-22-s9-final/q`). V3 keeps 8 gate/up row blocks
/// per expert (2048 items at 512 tokens). The repacked layers keep [`GEMM_ROW_BLOCK`]:
/// V2-Lite int4 512 ran slower with 256 (CPU ms 74.0 / 100.9, 71.2 / 78.5), its gate/up
/// having only 1408 rows.
pub(crate) const AMX_KQUANT_ROW_BLOCK: usize = 256;
/// The largest item (rows x positions), for the per-thread tile scratch.
pub(crate) const MAX_ITEM_FLOATS: usize = {
    let gemv = GEMV_ROW_BLOCK * GEMV_MAX_TOKENS;
    let gemm = if AMX_KQUANT_ROW_BLOCK > GEMM_ROW_BLOCK {
        AMX_KQUANT_ROW_BLOCK
    } else {
        GEMM_ROW_BLOCK
    } * GEMM_TOKEN_BLOCK;
    if gemv > gemm {
        gemv
    } else {
        gemm
    }
};

/// One work item: rows `row0..row0 + rows` of `expert`'s matrix against positions
/// `pos0..pos0 + tokens`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Item {
    pub expert: u32,
    pub row0: u32,
    pub rows: u32,
    pub pos0: u32,
    pub tokens: u32,
}

impl Item {
    /// `(expert, row0, rows, pos0, tokens)` as indices.
    pub(crate) fn parts(&self) -> (usize, usize, usize, usize, usize) {
        (
            self.expert as usize,
            self.row0 as usize,
            self.rows as usize,
            self.pos0 as usize,
            self.tokens as usize,
        )
    }
}

/// Multiply-adds of `items` over `cols` columns (a phase's size, for its serial threshold).
pub(crate) fn elems(items: &[Item], cols: usize) -> usize {
    items
        .iter()
        .map(|it| it.rows as usize * it.tokens as usize)
        .sum::<usize>()
        * cols
}

/// Tokens per C tile of the AMX kernels: a busy expert's positions past a multiple of it
/// start a C tile that costs as much as a full one.
const AMX_TOKEN_GROUP: usize = 16;

/// An upper bound on the items of one projection with `rows` rows, `pairs` positions and
/// `experts` experts (for reserving the item list).
pub(crate) fn max_items(rows: usize, pairs: usize, experts: usize) -> usize {
    // Each active expert has at most ceil(n / 64) <= n / 64 + 1 position blocks, one more
    // when a tail is split off, and at most ceil(rows / 32) row blocks.
    rows.div_ceil(GEMV_MIN_ROW_BLOCK) * (2 * experts.min(pairs) + pairs / GEMM_TOKEN_BLOCK + 1)
}

/// The position blocks `(first, len)` of an expert with `n` busy positions: blocks of
/// [`GEMM_TOKEN_BLOCK`]; with `tail > 0`, when the last block is one to `tail` positions
/// past a multiple of 16 (and longer than 16), those positions get a block of their own.
/// The AMX Q4_K kernel pays ~60% of a full C tile group for a group holding a few tokens,
/// while a separate few-token item on the AVX512 kernel (weights still in L2 from the
/// block before it) costs less (`compute.rs`'s `amx_q4k_tail` has the measurements).
fn token_blocks(n: usize, tail: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).step_by(GEMM_TOKEN_BLOCK).flat_map(move |t0| {
        let len = GEMM_TOKEN_BLOCK.min(n - t0);
        let r = len % AMX_TOKEN_GROUP;
        let split = len > AMX_TOKEN_GROUP && (1..=tail).contains(&r);
        let head = if split { len - r } else { len };
        std::iter::once((t0, head)).chain(split.then_some((t0 + head, r)))
    })
}

/// Rows per decode item of a projection with `rows` rows when `light` experts have at most
/// [`GEMV_MAX_TOKENS`] positions: [`GEMV_ROW_BLOCK`], halved while that gives fewer than
/// [`MIN_GEMV_ITEMS`] items (down to [`GEMV_MIN_ROW_BLOCK`]).
pub(crate) fn gemv_row_block(light: usize, rows: usize) -> usize {
    let mut gemv_rows = GEMV_ROW_BLOCK;
    while gemv_rows > GEMV_MIN_ROW_BLOCK && light * rows.div_ceil(gemv_rows) < MIN_GEMV_ITEMS {
        gemv_rows /= 2;
    }
    gemv_rows
}

/// Fills `items` (cleared first; never grows past the reserved capacity) for rows
/// `rows` of every active expert. Busy experts' items come first: they are the large
/// ones, and the small decode-sized items then fill the gaps at the end. Busy items have
/// `busy_rows` rows (at most [`MAX_ITEM_FLOATS`] / [`GEMM_TOKEN_BLOCK`]). `tail` is the
/// longest tail of a busy expert's positions split off into an item of its own (0: none;
/// see [`token_blocks`]).
pub(crate) fn build(
    items: &mut Vec<Item>,
    routing: &Routing,
    rows: Range<usize>,
    busy_rows: usize,
    tail: usize,
) {
    debug_assert!(busy_rows > 0 && busy_rows * GEMM_TOKEN_BLOCK <= MAX_ITEM_FLOATS);
    items.clear();
    let light = routing
        .active()
        .iter()
        .filter(|&&e| routing.counts[e as usize] as usize <= GEMV_MAX_TOKENS)
        .count();
    let gemv_rows = gemv_row_block(light, rows.len());
    for busy in [true, false] {
        for &e in routing.active() {
            let n = routing.counts[e as usize] as usize;
            if (n > GEMV_MAX_TOKENS) != busy {
                continue;
            }
            let row_block = if busy { busy_rows } else { gemv_rows };
            let first = routing.offsets[e as usize] as usize;
            // Row block outer, position block inner: consecutive items share weights.
            for r0 in rows.clone().step_by(row_block) {
                let blocks: &mut dyn Iterator<Item = (usize, usize)> = if busy {
                    &mut token_blocks(n, tail)
                } else {
                    &mut std::iter::once((0, n))
                };
                for (t0, len) in blocks {
                    debug_assert!(
                        items.len() < items.capacity(),
                        "item list reserved too small"
                    );
                    items.push(Item {
                        expert: e,
                        row0: r0 as u32,
                        rows: row_block.min(rows.end - r0) as u32,
                        pos0: (first + t0) as u32,
                        tokens: len as u32,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(items: &[Item], routing: &Routing, rows: Range<usize>, pairs: usize) {
        let mut hit = vec![0u8; pairs * rows.end];
        for it in items {
            let e = it.expert as usize;
            let (lo, hi) = (routing.offsets[e], routing.offsets[e + 1]);
            assert!(
                it.pos0 >= lo && it.pos0 + it.tokens <= hi,
                "{it:?} leaves expert {e}'s positions"
            );
            for p in it.pos0..it.pos0 + it.tokens {
                for r in it.row0..it.row0 + it.rows {
                    hit[p as usize * rows.end + r as usize] += 1;
                }
            }
        }
        for p in 0..pairs {
            for r in 0..rows.end {
                let want = u8::from(rows.contains(&r));
                assert_eq!(hit[p * rows.end + r], want, "position {p} row {r}");
            }
        }
    }

    #[test]
    fn items_cover_each_position_and_row_once() {
        // 300 pairs: expert 2 busy (250 positions), experts 0 and 5 light.
        let mut ids = vec![2u32; 250];
        ids.extend(std::iter::repeat_n(0, 7));
        ids.extend(std::iter::repeat_n(5, 43));
        ids.rotate_left(11);
        let mut r = Routing::default();
        r.reserve(6, ids.len());
        r.route(&ids, 6);
        for tail in [0, 4, 6] {
            for busy_rows in [GEMM_ROW_BLOCK, AMX_KQUANT_ROW_BLOCK] {
                for rows in [0..200, 32..100, 0..600] {
                    let mut items = Vec::with_capacity(max_items(rows.end, ids.len(), 6));
                    build(&mut items, &r, rows.clone(), busy_rows, tail);
                    assert!(items.len() <= max_items(rows.end, ids.len(), 6));
                    assert!(items.iter().all(|it| it.rows as usize <= busy_rows));
                    covered(&items, &r, rows, ids.len());
                }
            }
        }
    }

    #[test]
    fn tails_past_a_token_group_get_their_own_block() {
        let blocks = |n, tail| token_blocks(n, tail).collect::<Vec<_>>();
        assert_eq!(blocks(17, 4), [(0, 16), (16, 1)]);
        assert_eq!(blocks(20, 4), [(0, 16), (16, 4)]);
        assert_eq!(blocks(21, 4), [(0, 21)]);
        assert_eq!(blocks(16, 4), [(0, 16)]);
        assert_eq!(blocks(12, 4), [(0, 12)]);
        assert_eq!(blocks(17, 0), [(0, 17)]);
        assert_eq!(blocks(130, 4), [(0, 64), (64, 64), (128, 2)]);
        assert_eq!(blocks(99, 4), [(0, 64), (64, 32), (96, 3)]);
        assert_eq!(blocks(99, 2), [(0, 64), (64, 35)]);
        assert_eq!(blocks(22, 6), [(0, 16), (16, 6)]);
        assert_eq!(blocks(23, 6), [(0, 23)]);
        assert_eq!(blocks(38, 6), [(0, 32), (32, 6)]);
    }
}
