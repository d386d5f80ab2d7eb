//! `--ceiling` of `kt-bench matmul` and `kt-bench moe`: the read forms are timed beside the
//! kernel and reported, and the cases it does not apply to are refused, naming the flag.

mod common;

use common::kt_bench;

#[test]
fn matmul_reports_every_read_form_beside_the_gemv() {
    let r = kt_bench(&[
        "matmul",
        "--formats",
        "q4_k",
        "--shapes",
        "256x512",
        "--tokens",
        "1",
        "--seconds",
        "0.05",
        "--ceiling",
        "--json",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let stdout = String::from_utf8_lossy(&r.stdout);
    let row: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON row");
    let forms = row["read_ceiling"].as_array().expect("read forms");
    // every pattern of the probe, with one and with four items a thread
    let patterns = kt_kernels::cpu::membw::PATTERNS;
    assert_eq!(forms.len(), 2 * patterns.len(), "{row}");
    for p in &patterns {
        for n in [1, 4] {
            assert!(
                forms
                    .iter()
                    .any(|f| f["pattern"] == p.name && f["items_per_thread"] == n),
                "{} x {n}: {row}",
                p.name
            );
        }
    }
    for f in forms {
        let g = f["weight_gbps"].as_f64().unwrap();
        assert!(g.is_finite() && g > 0.0, "{f}");
    }
    // the GEMV against the fastest form: its GB/s over the fastest's
    let fastest = forms
        .iter()
        .map(|f| f["weight_gbps"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let of = row["of_read_ceiling"].as_f64().expect("of_read_ceiling");
    let want = row["weight_gbps"].as_f64().unwrap() / fastest;
    assert!((of - want).abs() <= 1e-9 * want, "{of} vs {want}");
}

#[test]
fn ceiling_is_refused_where_it_does_not_apply() {
    for (args, says) in [
        (
            &["moe", "--tokens", "2", "--ceiling"][..],
            "--ceiling times the one-token read ceiling",
        ),
        (
            &["moe", "--format", "int4", "--ceiling"][..],
            "--ceiling applies to the GGUF formats",
        ),
    ] {
        let r = kt_bench(args);
        assert!(!r.status.success(), "{args:?} ran");
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
