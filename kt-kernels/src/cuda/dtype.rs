//! Element types the kernels are instantiated for. A kernel's symbol is its base name plus
//! the type's suffix (`kt_rmsnorm_bf16`), matching the instantiations in `cuda/*.cu`.

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};

/// f32, f16 or bf16: what the element-wise kernels read and write.
pub trait GpuFloat:
    DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + std::fmt::Debug + 'static
{
    /// Suffix of the kernel symbols for this type.
    const SUFFIX: &'static str;
    /// Unit roundoff of the type (half its epsilon): the relative error of one rounding.
    const UNIT_ROUNDOFF: f64;
    /// The smallest positive (subnormal) value: below the normal range a rounding errs by up
    /// to half of it, absolutely, instead of UNIT_ROUNDOFF relatively.
    const MIN_SUBNORMAL: f64;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
}

/// The 16-bit types the tensor-core kernels take (f16 and bf16).
pub trait MmaFloat: GpuFloat {}

impl GpuFloat for f32 {
    const SUFFIX: &'static str = "f32";
    const UNIT_ROUNDOFF: f64 = 5.960464477539063e-8; // 2^-24
    const MIN_SUBNORMAL: f64 = 1.401298464324817e-45; // 2^-149
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl GpuFloat for f16 {
    const SUFFIX: &'static str = "f16";
    const UNIT_ROUNDOFF: f64 = 4.8828125e-4; // 2^-11
    const MIN_SUBNORMAL: f64 = 5.960464477539063e-8; // 2^-24
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl GpuFloat for bf16 {
    const SUFFIX: &'static str = "bf16";
    const UNIT_ROUNDOFF: f64 = 3.90625e-3; // 2^-8
    const MIN_SUBNORMAL: f64 = 9.183549615799121e-41; // 2^-133
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

impl MmaFloat for f16 {}
impl MmaFloat for bf16 {}
