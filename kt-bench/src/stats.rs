//! Small statistics the benchmarks share.

/// The median of `v` (the upper one of an even count; NaN when empty), sorting `v`.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
