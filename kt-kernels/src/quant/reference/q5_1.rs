//! q5_1 scalar reference (placeholder until written).

pub fn quantize(_src: &[f32], _dst: &mut [u8]) { unimplemented!("q5_1 quantize") }
pub fn dequantize(_src: &[u8], _dst: &mut [f32]) { unimplemented!("q5_1 dequantize") }
pub fn vec_dot(_n: usize, _w: &[u8], _act: &[u8]) -> f32 { unimplemented!("q5_1 vec_dot") }
