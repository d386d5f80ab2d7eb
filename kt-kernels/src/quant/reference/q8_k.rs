//! q8_k scalar reference (placeholder until written).

pub fn quantize(_src: &[f32], _dst: &mut [u8]) { unimplemented!("q8_k quantize") }
pub fn dequantize(_src: &[u8], _dst: &mut [f32]) { unimplemented!("q8_k dequantize") }
