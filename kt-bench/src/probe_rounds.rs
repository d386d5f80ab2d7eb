//! Read-bandwidth probes taken between a benchmark's timed calls, and the calls' bandwidth
//! against them.
//!
//! The device's read bandwidth moves by up to a third within one process (session 31: 1 GiB
//! buffers read 108-149 GB/s one after another, the same buffer 108 / 144 / 131 over three
//! rounds), so a probe taken once before the calls can be a moment they never had. Here the
//! probe is read again every [`PROBE_EVERY_S`] of calls; the calls between two readings are
//! a round, set against the mean of those two readings.

use std::time::Instant;

use kt_kernels::cpu::membw::ReadProbe;
use kt_kernels::cpu::ThreadPool;

/// Seconds of timed calls between two readings.
pub const PROBE_EVERY_S: f64 = 0.5;
/// The passes of each of the probe's patterns per reading (as the hybrid decode's
/// readings: `crate::decode::MEMBW_PASSES`; buffers of `machine::probe_bytes`).
const PROBE_PASSES: usize = crate::decode::MEMBW_PASSES;

/// The readings of one timed stretch.
pub struct ProbeRounds<'a> {
    pool: &'a ThreadPool,
    reader: ReadProbe,
    last: Option<Instant>,
    /// The readings so far, in GB/s.
    pub readings: Vec<f64>,
}

impl<'a> ProbeRounds<'a> {
    /// A probe over a buffer filled once, on `pool` (the calls' pool).
    pub fn new(pool: &'a ThreadPool) -> ProbeRounds<'a> {
        ProbeRounds {
            pool,
            reader: ReadProbe::new(pool, crate::machine::probe_bytes()),
            last: None,
            readings: Vec::new(),
        }
    }

    /// Forgets the readings, for the next timed stretch (the buffer stays).
    pub fn restart(&mut self) {
        self.readings.clear();
        self.last = None;
    }

    /// Before a timed call: reads the probe when none was read yet or [`PROBE_EVERY_S`] have
    /// passed since the last reading; returns the round the call belongs to and whether it
    /// read the probe now.
    pub fn round(&mut self) -> (usize, bool) {
        let due = self
            .last
            .is_none_or(|t| t.elapsed().as_secs_f64() >= PROBE_EVERY_S);
        if due {
            self.read();
        }
        (self.readings.len() - 1, due)
    }

    /// After the last timed call: the reading that closes the last round.
    pub fn finish(&mut self) {
        self.read();
    }

    fn read(&mut self) {
        self.readings
            .push(self.reader.measure(self.pool, PROBE_PASSES).gbps);
        self.last = Some(Instant::now());
    }

    /// `gbps` (one per call, the call's round in `rounds`) against the readings: see
    /// [`paired_fraction`].
    pub fn fraction(&self, gbps: &[f64], rounds: &[usize]) -> Option<f64> {
        paired_fraction(gbps, rounds, &self.readings)
    }
}

/// Per round `r` (the calls between readings `r` and `r + 1`), the median of its calls' GB/s
/// over the mean of those two readings; the median over the rounds. None without a complete
/// round that has calls.
pub fn paired_fraction(gbps: &[f64], rounds: &[usize], readings: &[f64]) -> Option<f64> {
    let mut each = Vec::new();
    for r in 0..readings.len().saturating_sub(1) {
        let mut in_round: Vec<f64> = gbps
            .iter()
            .zip(rounds)
            .filter(|&(_, &k)| k == r)
            .map(|(&g, _)| g)
            .collect();
        match beside(readings, r) {
            Some(b) if !in_round.is_empty() && b > 0.0 => {
                each.push(crate::stats::median(&mut in_round) / b)
            }
            _ => {}
        }
    }
    (!each.is_empty()).then(|| crate::stats::median(&mut each))
}

/// The mean of readings `r` and `r + 1`: the bandwidth of round `r`.
pub fn beside(readings: &[f64], r: usize) -> Option<f64> {
    Some((readings.get(r)? + readings.get(r + 1)?) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_meets_the_readings_beside_it() {
        // round 0 between readings 100 and 120, round 1 between 120 and 200
        let gbps = [55.0, 50.0, 60.0, 80.0, 81.0, 79.0];
        let rounds = [0, 0, 0, 1, 1, 1];
        let f = paired_fraction(&gbps, &rounds, &[100.0, 120.0, 200.0]).unwrap();
        // 55 / 110 = 0.5 and 80 / 160 = 0.5
        assert!((f - 0.5).abs() < 1e-12, "{f}");
        // a round with no call counts for nothing; no complete round: None
        let f = paired_fraction(&[55.0], &[0], &[100.0, 120.0, 200.0]).unwrap();
        assert!((f - 0.5).abs() < 1e-12);
        assert_eq!(paired_fraction(&[55.0], &[0], &[100.0]), None);
        assert_eq!(paired_fraction(&[], &[], &[]), None);
    }

    #[test]
    fn readings_open_and_close_the_rounds() {
        let pool = ThreadPool::new(2).unwrap();
        let mut p = ProbeRounds::new(&pool);
        // the first call reads the probe; the next one, right after, does not
        assert_eq!(p.round(), (0, true));
        assert_eq!(p.round(), (0, false));
        assert_eq!(p.readings.len(), 1);
        p.finish();
        assert_eq!(p.readings.len(), 2);
        assert!(p.readings.iter().all(|&g| g.is_finite() && g > 0.0));
        let f = p.fraction(&[p.readings[0]], &[0]).unwrap();
        assert!(f > 0.0 && f.is_finite());
        // a new stretch starts with a reading of its own
        p.restart();
        assert!(p.readings.is_empty());
        assert_eq!(p.round(), (0, true));
    }
}
