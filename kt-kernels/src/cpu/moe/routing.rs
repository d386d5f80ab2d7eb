//! Groups the (token, slot) pairs of a call by expert with a counting sort: each pair gets
//! a position; the positions of one expert are contiguous and in (token, slot) order,
//! so the result depends only on the routing, never on threads.

/// Buffers sized once for the largest call (`reserve`), refilled by every call.
#[derive(Default)]
pub(crate) struct Routing {
    /// Pairs per expert, `[experts]`.
    pub counts: Vec<u32>,
    /// First position of each expert, `[experts + 1]`.
    pub offsets: Vec<u32>,
    /// Position of pair `t * k + s`, `[pairs]`.
    pub pos_of: Vec<u32>,
    /// Experts with at least one pair, ascending; `active_len` of them are valid.
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
}

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
}
