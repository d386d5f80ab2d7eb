pub mod avx2;
pub mod avx2new;
pub mod dispatch {
    pub struct GemmTile {
        pub k: usize, pub w: *const u8, pub w_stride: usize, pub rows: usize,
        pub a: *const u8, pub a_stride: usize, pub tokens: usize, pub out: *mut f32, pub ldo: usize,
    }
}
pub mod matmul { pub const GEMV_MAX_TOKENS: usize = 8; }
pub mod scalar { pub mod ggml_order {
    pub fn hsum_float_8(x: [f32; 8]) -> f32 {
        let r: [f32; 4] = std::array::from_fn(|i| x[i + 4] + x[i]);
        (r[0] + r[2]) + (r[1] + r[3])
    }
} }
