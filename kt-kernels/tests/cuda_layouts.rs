//! `cuda/include/kt_blocks.cuh` must lay out every GGUF block exactly as
//! `kt_kernels::quant::blocks` does. Compiles a host C++ program that includes the header
//! and prints each struct's size and each field's offset, and compares them with the Rust
//! structs' `size_of` / `offset_of!`. Needs a C++ compiler (`$CXX`, else g++), no GPU.

use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

use kt_kernels::quant::blocks::*;

struct Layout {
    c_name: &'static str,
    size: usize,
    fields: Vec<(&'static str, usize)>,
}

macro_rules! layouts {
    ($($c:literal => $r:ty { $($f:ident),+ }),+ $(,)?) => {
        vec![$(Layout {
            c_name: $c,
            size: size_of::<$r>(),
            fields: vec![$((stringify!($f), offset_of!($r, $f))),+],
        }),+]
    };
}

fn rust_layouts() -> Vec<Layout> {
    layouts![
        "kt_block_q4_0" => BlockQ4_0 { d, qs },
        "kt_block_q4_1" => BlockQ4_1 { d, m, qs },
        "kt_block_q5_0" => BlockQ5_0 { d, qh, qs },
        "kt_block_q5_1" => BlockQ5_1 { d, m, qh, qs },
        "kt_block_q8_0" => BlockQ8_0 { d, qs },
        "kt_block_q8_1" => BlockQ8_1 { d, s, qs },
        "kt_block_q2_k" => BlockQ2K { scales, qs, d, dmin },
        "kt_block_q3_k" => BlockQ3K { hmask, qs, scales, d },
        "kt_block_q4_k" => BlockQ4K { d, dmin, scales, qs },
        "kt_block_q5_k" => BlockQ5K { d, dmin, scales, qh, qs },
        "kt_block_q6_k" => BlockQ6K { ql, qh, scales, d },
        "kt_block_q8_k" => BlockQ8K { d, qs, bsums },
    ]
}

/// The C++ program: one "struct size N" line per struct, one "struct field OFFSET" per field.
fn program(layouts: &[Layout]) -> String {
    let mut src = String::from("#include \"kt_blocks.cuh\"\n#include <cstdio>\nint main() {\n");
    for l in layouts {
        src += &format!(
            "    std::printf(\"{0} size %zu\\n\", sizeof({0}));\n",
            l.c_name
        );
        for (f, _) in &l.fields {
            src += &format!(
                "    std::printf(\"{0} {1} %zu\\n\", offsetof({0}, {1}));\n",
                l.c_name, f
            );
        }
    }
    src + "    return 0;\n}\n"
}

/// `cuda/include` of the source tree: where this crate was built, else under the working
/// directory (a test binary carried to another machine runs from the repository root there).
fn include_dir() -> PathBuf {
    let built_here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cuda/include");
    [
        built_here.clone(),
        PathBuf::from("cuda/include"),
        PathBuf::from("../cuda/include"),
    ]
    .into_iter()
    .find(|d| d.join("kt_blocks.cuh").is_file())
    .unwrap_or(built_here)
}

#[test]
fn header_matches_rust_block_layouts() {
    let layouts = rust_layouts();
    let include = include_dir();
    let dir = std::env::temp_dir().join(format!("kt_cuda_layouts_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("layouts.cpp");
    let exe = dir.join("layouts");
    std::fs::write(&src, program(&layouts)).unwrap();

    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".to_string());
    let built = Command::new(&cxx)
        .args(["-std=c++17", "-Wall", "-Werror", "-I"])
        .arg(&include)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C++ compiler {cxx:?} (set CXX): {e}"));
    assert!(
        built.status.success(),
        "compiling kt_blocks.cuh failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&exe).output().expect("run the layout program");
    assert!(run.status.success());
    let text = String::from_utf8(run.stdout).unwrap();
    std::fs::remove_dir_all(&dir).ok();

    let mut lines = text.lines();
    let mut checked = 0;
    for l in &layouts {
        let expect = std::iter::once(("size", l.size)).chain(l.fields.iter().copied());
        for (field, rust) in expect {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("output ended before {} {field}", l.c_name));
            let parts: Vec<&str> = line.split(' ').collect();
            assert_eq!(parts[..2], [l.c_name, field], "unexpected line {line:?}");
            let c: usize = parts[2].parse().unwrap();
            assert_eq!(c, rust, "{} {field}: header {c}, Rust {rust}", l.c_name);
            checked += 1;
        }
    }
    assert!(lines.next().is_none(), "extra output");
    assert_eq!(
        checked,
        12 + layouts.iter().map(|l| l.fields.len()).sum::<usize>()
    );
}
