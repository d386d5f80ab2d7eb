//! The decode's prefetch and deferral knobs read from the environment
//! (`KT_PREFETCH_ROUNDS`, `KT_PREFETCH_AB`, `KT_DEFER_AB`): A/B switches for the device
//! runs, not part of the command line.

/// `name` parsed as a count, `None` when unset; an error naming the variable otherwise.
// Only the hybrid decode (the `cuda` feature) reads it; the module's tests build without.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub fn env_usize(name: &str) -> Result<Option<usize>, String> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}={v:?}: expected a whole number")),
    }
}

/// `KT_PREFETCH_AB`'s value: `N` (N rounds of prefetch off, then on with `rounds`) or
/// `N:A,B,...` (N rounds of the settings A, B, ... in turn, each `off` or a number of
/// prefetch rounds). Returns N and the settings (`None` = off).
pub fn parse_prefetch_ab(v: &str, rounds: usize) -> Result<(usize, Vec<Option<usize>>), String> {
    let setting = |s: &str| match s {
        "off" => Some(None),
        r => r.parse::<usize>().ok().map(Some),
    };
    parse_ab(
        "KT_PREFETCH_AB",
        v,
        "`off` or rounds",
        vec![None, Some(rounds)],
        setting,
    )
}

/// `KT_DEFER_AB`'s value: `N` (N rounds of deferral off, then 1 choice) or `N:A,B,...` (N
/// rounds of the settings A, B, ... in turn, each a number of deferred choices).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub fn parse_defer_ab(v: &str) -> Result<(usize, Vec<usize>), String> {
    parse_ab("KT_DEFER_AB", v, "a count", vec![0, 1], |s| s.parse().ok())
}

/// An A/B variable `name`'s value `v`: `N` (N rounds of `default`) or `N:A,B,...` (N rounds
/// of the settings A, B, ..., each read by `setting`, described by `each` in the error).
fn parse_ab<T>(
    name: &str,
    v: &str,
    each: &str,
    default: Vec<T>,
    setting: impl Fn(&str) -> Option<T>,
) -> Result<(usize, Vec<T>), String> {
    let err = || format!("{name}={v:?}: expected N or N:A,B,... (each {each})");
    let (n, list) = match v.trim().split_once(':') {
        Some((n, list)) => (n, Some(list)),
        None => (v.trim(), None),
    };
    let n = n.trim().parse::<usize>().map_err(|_| err())?;
    let settings = match list {
        None => default,
        Some(list) => list
            .split(',')
            .map(|s| setting(s.trim()).ok_or_else(err))
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok((n, settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defer_ab_settings_parse() {
        assert_eq!(parse_defer_ab("3"), Ok((3, vec![0, 1])));
        assert_eq!(parse_defer_ab("2:0, 2,1"), Ok((2, vec![0, 2, 1])));
        assert!(parse_defer_ab("2:0,off").is_err());
        assert!(parse_defer_ab("x").is_err());
    }

    #[test]
    fn ab_settings_parse() {
        assert_eq!(parse_prefetch_ab("2", 3), Ok((2, vec![None, Some(3)])));
        assert_eq!(
            parse_prefetch_ab("1:1, 2,off", 3),
            Ok((1, vec![Some(1), Some(2), None]))
        );
        assert!(parse_prefetch_ab("x", 2).is_err());
        assert!(parse_prefetch_ab("2:1,two", 2).is_err());
    }
}
