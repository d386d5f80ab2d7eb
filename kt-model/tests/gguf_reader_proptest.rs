//! Random corruption of valid GGUF files: truncation, overwritten bytes and
//! count-sized fields, inserted and deleted bytes. The reader (and the config and
//! tensor lookups on top of it) must answer Ok or Err, never panic, and whatever it
//! accepts must have every tensor's data inside the file.

mod gguf_common;

use std::sync::OnceLock;

use gguf_common::*;
use kt_model::config::DeepSeekConfig;
use kt_model::gguf::Gguf;
use kt_model::tensors::ModelTensors;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    SetByte(usize, u8),
    SetU32(usize, u32),
    SetU64(usize, u64),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
}

fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(1 << 60),
        Just(1 << 32),
        Just(i64::MAX as u64 + 1),
        0u64..4096,
        any::<u64>(),
    ]
}

/// Mutations at positions below `span` (a fraction of the file, wrapped by `apply`).
fn mutation(span: usize) -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0..span).prop_map(Mutation::Truncate),
        (0..span, any::<u8>()).prop_map(|(p, v)| Mutation::SetByte(p, v)),
        (
            0..span,
            prop_oneof![Just(0u32), Just(u32::MAX), 0u32..64, any::<u32>()]
        )
            .prop_map(|(p, v)| Mutation::SetU32(p, v)),
        (0..span, interesting_u64()).prop_map(|(p, v)| Mutation::SetU64(p, v)),
        (0..span, proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(p, v)| Mutation::Insert(p, v)),
        (0..span, 1usize..64).prop_map(|(p, n)| Mutation::Delete(p, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    if len == 0 {
        return;
    }
    match *m {
        Mutation::Truncate(p) => bytes.truncate(p % len),
        Mutation::SetByte(p, v) => bytes[p % len] = v,
        Mutation::SetU32(p, v) => {
            let p = p % len.saturating_sub(3).max(1);
            let end = (p + 4).min(len);
            bytes[p..end].copy_from_slice(&v.to_le_bytes()[..end - p]);
        }
        Mutation::SetU64(p, v) => {
            let p = p % len.saturating_sub(7).max(1);
            let end = (p + 8).min(len);
            bytes[p..end].copy_from_slice(&v.to_le_bytes()[..end - p]);
        }
        Mutation::Insert(p, ref v) => {
            let p = p % len;
            bytes.splice(p..p, v.iter().copied());
        }
        Mutation::Delete(p, n) => {
            let p = p % len;
            bytes.drain(p..(p + n).min(len));
        }
    }
}

/// Reads `bytes` and uses everything that was read.
fn exercise(bytes: Vec<u8>) {
    let len = bytes.len();
    let Ok(g) = Gguf::from_bytes("mutated.gguf", bytes) else {
        return;
    };
    let mut sum = 0u64;
    for t in g.tensors() {
        assert!(t.data.len() <= len);
        assert_eq!(
            Some(t.data.len()),
            t.qtype.row_bytes(t.dims[0]).ok().map(|r| r * t.n_rows())
        );
        sum += t.data.iter().map(|&b| u64::from(b)).sum::<u64>();
    }
    std::hint::black_box(sum);
    for (key, _) in g.metadata().iter() {
        let _ = g.metadata().get_u32(key);
        let _ = g.metadata().get_f32(key);
        let _ = g.metadata().get_str(key);
    }
    if let Ok(config) = DeepSeekConfig::from_gguf(&g) {
        let _ = ModelTensors::from_gguf(&g, &config);
    }
}

fn fixture() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| std::fs::read(dsv3_dir().join("tiny-dsv3-q4_k_m.gguf")).unwrap())
}

/// Where the fixture's last tensor data ends (only padding may follow).
fn fixture_data_end() -> usize {
    let g = Gguf::from_bytes("fixture.gguf", fixture().to_vec()).unwrap();
    let offset = g.files()[0].data_offset();
    g.tensor_infos()
        .iter()
        .map(|t| (offset + t.offset()) as usize + t.n_bytes())
        .max()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_small_gguf_never_panics(muts in proptest::collection::vec(mutation(4096), 1..6)) {
        let mut bytes = raw_gguf().bytes;
        for m in &muts {
            apply(&mut bytes, m);
        }
        exercise(bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// The real fixture (with its deepseek2 keys, so the config and tensor lookups
    /// run too), mutated in its header and metadata (the first 40 KiB).
    #[test]
    fn mutated_fixture_header_never_panics(muts in proptest::collection::vec(mutation(40 * 1024), 1..4)) {
        let mut bytes = fixture().to_vec();
        for m in &muts {
            apply(&mut bytes, m);
        }
        exercise(bytes);
    }

    #[test]
    fn fixture_truncated_before_its_data_ends_is_an_error(frac in 0.0f64..1.0) {
        let len = (frac * fixture_data_end() as f64) as usize;
        prop_assert!(Gguf::from_bytes("cut.gguf", fixture()[..len].to_vec()).is_err());
    }
}

#[test]
fn unmutated_inputs_load() {
    // The property tests above start from files that load.
    let g = Gguf::from_bytes("raw.gguf", raw_gguf().bytes).unwrap();
    assert_eq!(g.n_tensors(), 3);
    let g = Gguf::from_bytes("fixture.gguf", fixture().to_vec()).unwrap();
    let config = DeepSeekConfig::from_gguf(&g).unwrap();
    ModelTensors::from_gguf(&g, &config).unwrap();
}
