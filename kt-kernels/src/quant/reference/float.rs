//! F32 / F16 / BF16 references (placeholder until written).

pub fn quantize_f32(_src: &[f32], _dst: &mut [u8]) { unimplemented!() }
pub fn quantize_f16(_src: &[f32], _dst: &mut [u8]) { unimplemented!() }
pub fn quantize_bf16(_src: &[f32], _dst: &mut [u8]) { unimplemented!() }
pub fn dequantize_f32(_src: &[u8], _dst: &mut [f32]) { unimplemented!() }
pub fn dequantize_f16(_src: &[u8], _dst: &mut [f32]) { unimplemented!() }
pub fn dequantize_bf16(_src: &[u8], _dst: &mut [f32]) { unimplemented!() }
pub fn vec_dot_f32(_n: usize, _w: &[u8], _a: &[u8]) -> f32 { unimplemented!() }
pub fn vec_dot_f16(_n: usize, _w: &[u8], _a: &[u8]) -> f32 { unimplemented!() }
pub fn vec_dot_bf16(_n: usize, _w: &[u8], _a: &[u8]) -> f32 { unimplemented!() }
