//! With the `cuda` feature on, compiles every `cuda/*.cu` into `$OUT_DIR/<name>.fatbin`
//! (sm_80 and sm_90a machine code plus compute_90 PTX, the flags of `cuda/nvcc-flags.txt`),
//! which `src/cuda/modules.rs` embeds. With the feature off it does nothing, so a default
//! build needs no CUDA at all.
//!
//! nvcc is found, in order: `$KT_NVCC`; the pinned toolchain `cuda/check.sh` installs into
//! `target/cuda-toolchain`; the `nvidia` Python package's `cu13/bin/nvcc` (a plain
//! `pip install -r cuda/toolchain.txt`).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("kt-kernels lives in the workspace root")
        .to_path_buf();
    let cuda = root.join("cuda");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed={}", cuda.display());
    println!("cargo:rerun-if-env-changed=KT_NVCC");

    let nvcc = find_nvcc(&root).unwrap_or_else(|| {
        fail(
            "the `cuda` feature needs nvcc 13.0 and none was found. Install it with \
             `bash cuda/check.sh` (puts the pinned nvidia-cuda-nvcc 13.0 wheels of \
             cuda/toolchain.txt into target/cuda-toolchain), or \
             `pip install -r cuda/toolchain.txt`, or point KT_NVCC at an nvcc 13.0",
        )
    });
    check_version(&nvcc);

    let flags_text = fs::read_to_string(cuda.join("nvcc-flags.txt"))
        .unwrap_or_else(|e| fail(&format!("cannot read cuda/nvcc-flags.txt: {e}")));
    let flags: Vec<&str> = flags_text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();

    let mut sources: Vec<PathBuf> = fs::read_dir(&cuda)
        .unwrap_or_else(|e| fail(&format!("cannot list {}: {e}", cuda.display())))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    for src in &sources {
        let stem = src
            .file_stem()
            .expect("a .cu file has a stem")
            .to_string_lossy()
            .into_owned();
        let fatbin = out.join(format!("{stem}.fatbin"));
        let output = Command::new(&nvcc)
            .args(&flags)
            .arg("-o")
            .arg(&fatbin)
            .arg(src)
            .output()
            .unwrap_or_else(|e| fail(&format!("cannot run {}: {e}", nvcc.display())));
        if !output.status.success() {
            fail(&format!(
                "nvcc failed on {}:\n{}{}",
                src.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
}

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    if let Some(p) = env::var_os("KT_NVCC") {
        return Some(PathBuf::from(p));
    }
    let pinned = root.join("target/cuda-toolchain/nvidia/cu13/bin/nvcc");
    if pinned.is_file() {
        return Some(pinned);
    }
    // `nvidia` is a namespace package: look in every folder it spans.
    let probe = Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u; s = u.find_spec('nvidia'); \
             print('\\n'.join(s.submodule_search_locations) if s else '')",
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&probe.stdout)
        .lines()
        .map(|dir| Path::new(dir.trim()).join("cu13/bin/nvcc"))
        .find(|p| p.is_file())
}

fn check_version(nvcc: &Path) {
    let output = Command::new(nvcc)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run {}: {e}", nvcc.display())));
    let text = String::from_utf8_lossy(&output.stdout);
    if !text.contains("release 13.0") {
        println!(
            "cargo:warning={} is not nvcc 13.0: its PTX may be refused by a CUDA 13.0 driver (580)",
            nvcc.display()
        );
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: kt-kernels build: {msg}");
    std::process::exit(1);
}
