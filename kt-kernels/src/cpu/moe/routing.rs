//! Groups the (token, slot) pairs of a call by expert with a counting sort: each pair gets
//! a position; the positions of one expert are contiguous and in (token, slot) order,
//! so the result depends only on the routing, never on threads.
//!
//! The active experts come in ascending order, or in the order of a hint
//! ([`Routing::order_like`]): the order the planner lays the items out in, which decides
//! only which thread runs which item first, never a result.

/// Buffers sized once for the largest call (`reserve`), refilled by every call.
#[derive(Default)]
pub(crate) struct Routing {
    /// Pairs per expert, `[experts]`.
    pub counts: Vec<u32>,
    /// First position of each expert, `[experts + 1]`.
    pub offsets: Vec<u32>,
    /// Position of pair `t * k + s`, `[pairs]`.
    pub pos_of: Vec<u32>,
    /// Experts with at least one pair, ascending unless reordered by
    /// [`Routing::order_like`]; `active_len` of them are valid.
    pub active: Vec<u32>,
    pub active_len: usize,
}

impl Routing {
    pub fn reserve(&mut self, experts: usize, pairs: usize) {
        grow(&mut self.counts, experts);
        grow(&mut self.offsets, experts + 1);
        grow(&mut self.active, experts);
        grow(&mut self.pos_of, pairs);
    }

    /// Sorts `ids` (`[pairs]`, every id `< experts`, checked by the caller).
    pub fn route(&mut self, ids: &[u32], experts: usize) {
        let counts = &mut self.counts[..experts];
        counts.fill(0);
        for &e in ids {
            counts[e as usize] += 1;
        }
        let mut next = 0u32;
        self.active_len = 0;
        for (e, &n) in counts.iter().enumerate() {
            self.offsets[e] = next;
            next += n;
            if n > 0 {
                self.active[self.active_len] = e as u32;
                self.active_len += 1;
            }
        }
        self.offsets[experts] = next;
        // Reuse `counts` as the running fill of each expert.
        for (p, &e) in self.pos_of.iter_mut().zip(ids) {
            let e = e as usize;
            *p = self.offsets[e + 1] - counts[e];
            counts[e] -= 1;
        }
        // `counts` is now zero; restore it for the planner.
        for (e, n) in counts.iter_mut().enumerate() {
            *n = self.offsets[e + 1] - self.offsets[e];
        }
    }

    pub fn active(&self) -> &[u32] {
        &self.active[..self.active_len]
    }

    /// Reorders the active experts so that `hint[r]` sits at place `r` wherever it is
    /// active (and `r` is a place); the other active experts fill the remaining places in
    /// ascending order. Why: a prefetch before a decode call warms the items it expects
    /// each thread to run first, in the order of the experts it predicted; with the
    /// predicted experts where the prediction put them, a wrong guess costs only its own
    /// items, where ascending order would shift every later expert onto other threads
    /// (`prefetch.rs`). Applied to calls of at most [`MAX_ORDERED`] active experts (a
    /// decode call's); a longer list, or an empty hint, keeps its order. Call after
    /// [`Routing::route`].
    pub fn order_like(&mut self, hint: &[u32]) {
        let n = self.active_len;
        if hint.is_empty() || n > MAX_ORDERED {
            return;
        }
        let active = &mut self.active[..n];
        let mut placed = [false; MAX_ORDERED];
        let mut order = [None::<u32>; MAX_ORDERED];
        for (r, &e) in hint.iter().take(n).enumerate() {
            // ascending until reordered here: a binary search finds e's slot
            if let Ok(i) = active.binary_search(&e) {
                if !placed[i] {
                    placed[i] = true;
                    order[r] = Some(e);
                }
            }
        }
        let mut rest = active
            .iter()
            .zip(placed)
            .filter(|&(_, p)| !p)
            .map(|(&e, _)| e);
        for slot in order.iter_mut().take(n) {
            if slot.is_none() {
                *slot = rest.next();
            }
        }
        for (a, o) in active.iter_mut().zip(order) {
            // every place is filled: n places, n experts each placed once
            *a = o.unwrap_or(*a);
        }
    }
}

/// The most active experts [`Routing::order_like`] reorders: a decode call of up to
/// `GEMV_MAX_TOKENS` tokens of top-8 has at most 32.
pub(crate) const MAX_ORDERED: usize = 64;

fn grow<T: Default + Clone>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_group_by_expert_in_pair_order() {
        let ids = [3u32, 1, 3, 0, 1, 3];
        let mut r = Routing::default();
        r.reserve(5, ids.len());
        r.route(&ids, 5);
        assert_eq!(&r.counts[..5], &[1, 2, 0, 3, 0]);
        assert_eq!(&r.offsets[..6], &[0, 1, 3, 3, 6, 6]);
        assert_eq!(r.active(), &[0, 1, 3]);
        // Expert 3's pairs (0, 2, 5) take positions 3, 4, 5 in pair order.
        assert_eq!(&r.pos_of[..6], &[3, 1, 4, 0, 2, 5]);
    }

    fn ordered(ids: &[u32], experts: usize, hint: &[u32]) -> Vec<u32> {
        let mut r = Routing::default();
        r.reserve(experts, ids.len());
        r.route(ids, experts);
        let (counts, offsets, pos_of) = (r.counts.clone(), r.offsets.clone(), r.pos_of.clone());
        r.order_like(hint);
        // the positions are the routing's alone
        assert_eq!((r.counts.clone(), r.offsets.clone()), (counts, offsets));
        assert_eq!(r.pos_of, pos_of);
        r.active().to_vec()
    }

    #[test]
    fn hinted_experts_keep_their_places() {
        let ids = [40u32, 3, 17, 9, 250, 128];
        // all predicted: the prediction's order
        assert_eq!(
            ordered(&ids, 256, &[3, 9, 17, 40, 128, 250]),
            [3, 9, 17, 40, 128, 250]
        );
        // 10 predicted, 9 chosen: only place 1 changes; ascending order would have moved
        // 17, 40, 128 and 250 one place each
        assert_eq!(
            ordered(&ids, 256, &[3, 10, 17, 40, 128, 250]),
            [3, 9, 17, 40, 128, 250]
        );
        assert_eq!(
            ordered(&ids, 256, &[3, 17, 40, 60, 128, 250]),
            [3, 17, 40, 9, 128, 250]
        );
        // the hint's own order wins, even when not ascending
        assert_eq!(ordered(&ids, 256, &[250, 3]), [250, 3, 9, 17, 40, 128]);
        // nothing predicted right, or no hint: ascending
        assert_eq!(ordered(&ids, 256, &[1, 2, 4]), [3, 9, 17, 40, 128, 250]);
        assert_eq!(ordered(&ids, 256, &[]), [3, 9, 17, 40, 128, 250]);
        // a hint longer than the active list, with a repeat: each expert once
        assert_eq!(ordered(&[5, 2], 8, &[2, 2, 5, 7]), [2, 5]);
        assert_eq!(ordered(&[5, 2], 8, &[7, 7, 2, 5]), [2, 5]);
        assert_eq!(ordered(&[5, 2], 8, &[0, 5]), [2, 5]);
    }

    #[test]
    fn long_active_lists_keep_ascending_order() {
        let ids: Vec<u32> = (0..MAX_ORDERED as u32 + 1).rev().collect();
        let hint: Vec<u32> = ids.clone();
        let got = ordered(&ids, ids.len(), &hint);
        assert!(got.windows(2).all(|w| w[0] < w[1]));
    }
}
