//! Run-time ISA detection and the `KT_ISA` override.
//!
//! One binary is built for generic x86-64; the kernels for AVX2, AVX512 and AMX are
//! compiled with `#[target_feature]` and only ever reached through a table that was
//! built after [`Isa::check`] said the CPU (and the OS) can run them. Asking for an ISA
//! the CPU lacks is an error, never an illegal instruction.

use std::fmt;
use std::sync::OnceLock;

use crate::error::{KtError, Result};

/// An instruction-set level; each one includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust: the reference, never optimized.
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX512 F/BW/VL/DQ with VNNI (BF16 dot products use AVX512-BF16 where present).
    Avx512,
    /// AMX tiles (INT8, BF16) on top of AVX512; needs the Linux permission request.
    Amx,
}

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Amx];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Amx => "amx",
        }
    }

    /// Parses a `KT_ISA` value.
    pub fn from_name(s: &str) -> Result<Isa> {
        Isa::ALL
            .iter()
            .copied()
            .find(|i| i.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| KtError::UnknownIsa(s.to_string()))
    }

    /// Ok when this CPU and OS can run the ISA's kernels; otherwise an error saying
    /// which feature is missing.
    pub fn check(self) -> Result<()> {
        let missing = match self {
            Isa::Scalar => None,
            Isa::Avx2 => features::missing_avx2(),
            Isa::Avx512 => features::missing_avx2().or_else(features::missing_avx512),
            Isa::Amx => features::missing_avx2()
                .or_else(features::missing_avx512)
                .or_else(features::missing_amx),
        };
        match missing {
            None => Ok(()),
            Some(reason) => Err(KtError::IsaUnavailable {
                isa: self.name(),
                reason,
            }),
        }
    }

    /// Every ISA this machine can run, from scalar up.
    pub fn available() -> Vec<Isa> {
        Isa::ALL
            .iter()
            .copied()
            .filter(|i| i.check().is_ok())
            .collect()
    }

    /// The best ISA this machine can run.
    pub fn best() -> Isa {
        *Isa::available().last().unwrap_or(&Isa::Scalar)
    }

    /// True when AVX512-BF16 dot products (`vdpbf16ps`) are usable on top of this ISA.
    pub fn has_avx512_bf16(self) -> bool {
        self >= Isa::Avx512 && features::has_avx512_bf16()
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The ISA the library uses: `KT_ISA` when set (an error if unknown or unavailable),
/// else the best the machine has. Decided once per process.
pub fn selected() -> Result<Isa> {
    static SELECTED: OnceLock<Result<Isa>> = OnceLock::new();
    SELECTED
        .get_or_init(|| match std::env::var("KT_ISA") {
            Ok(v) if !v.trim().is_empty() => {
                let isa = Isa::from_name(&v)?;
                isa.check()?;
                Ok(isa)
            }
            _ => Ok(Isa::best()),
        })
        .clone()
}

#[cfg(target_arch = "x86_64")]
mod features {
    cpufeatures::new!(avx2_fma, "avx2", "fma");
    cpufeatures::new!(avx512_base, "avx512f", "avx512bw", "avx512vl", "avx512dq");

    pub fn missing_avx2() -> Option<String> {
        if !avx2_fma::get() {
            return Some("the CPU (or OS) lacks AVX2/FMA".into());
        }
        if !std::arch::is_x86_feature_detected!("f16c") {
            return Some("the CPU lacks F16C".into());
        }
        None
    }

    pub fn missing_avx512() -> Option<String> {
        if !avx512_base::get() {
            return Some("the CPU (or OS) lacks AVX512 F/BW/VL/DQ".into());
        }
        if !std::arch::is_x86_feature_detected!("avx512vnni") {
            return Some("the CPU lacks AVX512-VNNI".into());
        }
        None
    }

    pub fn has_avx512_bf16() -> bool {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }

    pub fn missing_amx() -> Option<String> {
        super::amx_permission::request().err()
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod features {
    pub fn missing_avx2() -> Option<String> {
        Some("not an x86-64 CPU".into())
    }
    pub fn missing_avx512() -> Option<String> {
        Some("not an x86-64 CPU".into())
    }
    pub fn has_avx512_bf16() -> bool {
        false
    }
    pub fn missing_amx() -> Option<String> {
        Some("not an x86-64 CPU".into())
    }
}

/// AMX detection: CPUID bits, the OS's XSAVE state, and Linux's per-process permission
/// for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`).
#[cfg(target_arch = "x86_64")]
pub(crate) mod amx_permission {
    use std::sync::OnceLock;

    const ARCH_GET_XCOMP_PERM: libc::c_ulong = 0x1022;
    const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
    const XFEATURE_XTILECFG: u32 = 17;
    const XFEATURE_XTILEDATA: u32 = 18;

    /// Ok once AMX-TILE, AMX-INT8 and AMX-BF16 are present and usable by this process.
    /// The request is made once; later calls return the first answer.
    pub fn request() -> Result<(), String> {
        static ANSWER: OnceLock<Result<(), String>> = OnceLock::new();
        ANSWER.get_or_init(request_once).clone()
    }

    fn request_once() -> Result<(), String> {
        // CPUID exists on every x86-64 CPU; leaf 7 is read only when the maximum basic
        // leaf says it exists.
        let l0 = std::arch::x86_64::__cpuid(0);
        let l1 = std::arch::x86_64::__cpuid(1);
        let leaf7_edx = if l0.eax >= 7 {
            std::arch::x86_64::__cpuid_count(7, 0).edx
        } else {
            0
        };
        let (max_leaf, leaf1_ecx) = (l0.eax, l1.ecx);
        let amx_bf16 = leaf7_edx & (1 << 22) != 0;
        let amx_tile = leaf7_edx & (1 << 24) != 0;
        let amx_int8 = leaf7_edx & (1 << 25) != 0;
        if max_leaf < 7 || !(amx_tile && amx_int8 && amx_bf16) {
            return Err("the CPU lacks AMX-TILE/AMX-INT8/AMX-BF16".into());
        }
        if leaf1_ecx & (1 << 27) == 0 {
            return Err("the OS has not enabled XSAVE (OSXSAVE clear)".into());
        }
        // SAFETY: OSXSAVE is set (checked above), so XGETBV with ECX=0 is valid.
        let xcr0 = unsafe { xgetbv0() };
        let tile_bits = (1u64 << XFEATURE_XTILECFG) | (1u64 << XFEATURE_XTILEDATA);
        if xcr0 & tile_bits != tile_bits {
            return Err("the OS does not enable the AMX tile state in XCR0".into());
        }
        // SAFETY: arch_prctl with these codes only reads/writes the process's xstate
        // permission; the kernel validates the arguments and returns an error code.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA as libc::c_ulong,
            )
        };
        if rc != 0 {
            return Err(format!(
                "Linux refused the AMX tile permission (arch_prctl ARCH_REQ_XCOMP_PERM: {})",
                std::io::Error::last_os_error()
            ));
        }
        let mut granted: u64 = 0;
        // SAFETY: ARCH_GET_XCOMP_PERM writes one u64 through the pointer we pass, which
        // points to a live local.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_GET_XCOMP_PERM,
                &mut granted as *mut u64,
            )
        };
        if rc != 0 || granted & (1 << XFEATURE_XTILEDATA) == 0 {
            return Err("AMX tile permission not granted after the request".into());
        }
        Ok(())
    }

    /// # Safety
    /// The caller must have checked CPUID.1:ECX.OSXSAVE.
    #[target_feature(enable = "xsave")]
    unsafe fn xgetbv0() -> u64 {
        std::arch::x86_64::_xgetbv(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_an_error() {
        for isa in Isa::ALL {
            assert_eq!(Isa::from_name(isa.name()).unwrap(), isa);
        }
        assert_eq!(Isa::from_name("AVX2").unwrap(), Isa::Avx2);
        assert!(matches!(
            Isa::from_name("sse9"),
            Err(KtError::UnknownIsa(_))
        ));
    }

    #[test]
    fn scalar_is_always_available_and_levels_are_nested() {
        let avail = Isa::available();
        assert_eq!(avail[0], Isa::Scalar);
        // An ISA is only available when every level below it is.
        for (i, isa) in avail.iter().enumerate() {
            assert_eq!(*isa, Isa::ALL[i]);
        }
    }

    #[test]
    fn unavailable_isa_is_a_clear_error() {
        for isa in Isa::ALL {
            if let Err(e) = isa.check() {
                let msg = e.to_string();
                assert!(
                    msg.contains(isa.name()) && msg.contains("lacks")
                        || msg.contains("refused")
                        || msg.contains("OS"),
                    "{msg}"
                );
            }
        }
    }
}
