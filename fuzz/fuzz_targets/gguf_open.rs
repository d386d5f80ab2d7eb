//! Opens arbitrary bytes as a GGUF file and uses everything the reader accepts: every
//! tensor's bytes, every metadata value through the typed getters, the DeepSeek
//! hyper-parameters and the per-layer tensor handles. Any panic is a bug.
#![no_main]

use kt_model::config::DeepSeekConfig;
use kt_model::gguf::Gguf;
use kt_model::tensors::ModelTensors;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::from_bytes("fuzz.gguf", data.to_vec()) else { return };
    let mut sum = 0u64;
    for t in g.tensors() {
        assert!(t.data.len() <= data.len());
        let row = t.qtype.row_bytes(t.dims[0]).expect("validated row length");
        assert_eq!(t.data.len(), row * t.n_rows());
        sum = t.data.iter().fold(sum, |s, &b| s.wrapping_add(u64::from(b)));
    }
    std::hint::black_box(sum);
    let m = g.metadata();
    for (key, _) in m.iter() {
        let _ = (m.get_u32(key), m.get_i64(key), m.get_f32(key), m.get_bool(key));
        let _ = (m.get_str(key), m.get_str_array(key));
    }
    if let Ok(config) = DeepSeekConfig::from_gguf(&g) {
        let _ = ModelTensors::from_gguf(&g, &config);
    }
});
