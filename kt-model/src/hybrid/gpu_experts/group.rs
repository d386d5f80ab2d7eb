//! The (token, choice) pairs of a batch grouped by expert, on the host: a counting sort of
//! the router's ids that keeps token order inside each expert, so the GPU's gather, GEMMs
//! and combine see the same order on every run.

use super::super::error::{HybridError, HybridResult};

/// The pairs of `tokens x top_k` router choices in expert order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExpertGroups {
    /// Expert `e`'s pairs are slots `offsets[e]..offsets[e + 1]`.
    pub offsets: Vec<usize>,
    /// The token of each slot (the row the gather reads).
    pub rows: Vec<i32>,
    /// The slot of pair `(t, j)` at `t * top_k + j` (where the combine reads its output).
    pub slot: Vec<i32>,
}

impl ExpertGroups {
    /// Groups `ids` (`[tokens, top_k]`, each below `experts`).
    pub fn new(ids: &[u32], top_k: usize, experts: usize) -> HybridResult<Self> {
        if top_k == 0 || !ids.len().is_multiple_of(top_k) || i32::try_from(ids.len()).is_err() {
            return Err(HybridError::Input(format!(
                "{} router choices are no whole number of tokens of top {top_k}",
                ids.len()
            )));
        }
        if let Some(p) = ids.iter().position(|&e| e as usize >= experts) {
            return Err(HybridError::Input(format!(
                "token {} chose expert {} of {experts}",
                p / top_k,
                ids[p]
            )));
        }
        let mut offsets = vec![0usize; experts + 1];
        for &e in ids {
            offsets[e as usize + 1] += 1;
        }
        for e in 0..experts {
            offsets[e + 1] += offsets[e];
        }
        let mut next = offsets[..experts].to_vec();
        let mut rows = vec![0i32; ids.len()];
        let mut slot = vec![0i32; ids.len()];
        for (p, &e) in ids.iter().enumerate() {
            let s = next[e as usize];
            next[e as usize] += 1;
            // Both below ids.len(), which fits an i32 (checked above).
            rows[s] = (p / top_k) as i32;
            slot[p] = s as i32;
        }
        Ok(ExpertGroups {
            offsets,
            rows,
            slot,
        })
    }

    /// The slots of expert `e`.
    pub fn range(&self, e: usize) -> std::ops::Range<usize> {
        self.offsets[e]..self.offsets[e + 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pair lands in its expert's range, once, with tokens in order inside it.
    #[test]
    fn groups_are_a_stable_permutation() {
        let (top_k, experts) = (3usize, 7usize);
        let ids: Vec<u32> = (0..11u32 * 3).map(|i| (i * 5 + i / 3) % 7).collect();
        let g = ExpertGroups::new(&ids, top_k, experts).unwrap();
        assert_eq!(g.offsets[experts], ids.len());
        let mut seen = vec![false; ids.len()];
        for (p, &s) in g.slot.iter().enumerate() {
            let s = s as usize;
            assert!(!seen[s], "slot {s} used twice");
            seen[s] = true;
            assert!(g.range(ids[p] as usize).contains(&s), "pair {p}");
            assert_eq!(g.rows[s] as usize, p / top_k);
        }
        for e in 0..experts {
            let r = &g.rows[g.range(e)];
            assert!(r.windows(2).all(|w| w[0] < w[1]), "expert {e}: {r:?}");
        }
    }

    /// An expert nobody chose has an empty range; bad ids and shapes are errors.
    #[test]
    fn empty_experts_and_bad_input() {
        let g = ExpertGroups::new(&[2, 0, 2, 0], 2, 4).unwrap();
        assert_eq!(g.offsets, [0, 2, 2, 4, 4]);
        assert_eq!(g.rows, [0, 1, 0, 1]);
        assert_eq!(g.slot, [2, 0, 3, 1]);
        assert!(ExpertGroups::new(&[0, 4], 2, 4).is_err());
        assert!(ExpertGroups::new(&[0, 1, 2], 2, 4).is_err());
    }
}
