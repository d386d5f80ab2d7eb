//! `kt-bench matmul`: quantized GEMV / GEMM throughput on DeepSeek shapes.
//!
//! GEMV (few tokens) is memory-bound: it is reported as effective weight bandwidth and
//! its fraction of the read bandwidth measured in the same run. To measure DRAM and not
//! the cache, calls cycle through enough copies of the matrix to exceed 16 x the
//! last-level cache, at least 1 GiB ([`machine::cycle_bytes`]).
//! GEMM is compute-bound: reported as GOP/s (2 per multiply-add) and its fraction of the
//! arithmetic peak measured in the same run.
//!
//! `--resident` times one copy over and over instead, so a matrix that fits the caches is
//! read from them: the kernel's own speed, which bounds what the GEMV can reach from DRAM
//! (a kernel slower per core than the core's share of the DRAM bandwidth is compute-bound).

use std::time::Instant;

use kt_kernels::cpu::{self, Isa};
use kt_kernels::quant::{self, QType};
use kt_kernels::util::SplitMix64;

use crate::machine;
use crate::moe::variant_of;
use crate::probe_rounds::ProbeRounds;
use crate::read_ceiling;

#[derive(clap::Args)]
pub struct Args {
    /// Weight formats (ggml names).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q4_k,q5_k,q2_k,q6_k,q8_0,bf16"
    )]
    pub formats: Vec<String>,
    /// Shapes as ROWSxCOLS (out x in): DeepSeek-V3 expert up/down, V2-Lite expert up/down, V3 dense.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2048x7168,7168x2048,1408x2048,2048x1408,18432x7168"
    )]
    pub shapes: Vec<String>,
    /// Token counts.
    #[arg(long, value_delimiter = ',', default_value = "1,512")]
    pub tokens: Vec<usize>,
    /// Threads (default: all cores, or KT_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Minimum seconds of timed calls per case.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// Time one copy of each matrix (cache-resident when it fits) instead of cycling
    /// through copies totalling 16 x the last-level cache (at least 1 GiB).
    #[arg(long)]
    pub resident: bool,
    /// Print one JSON object per case.
    #[arg(long)]
    pub json: bool,
    /// Streamed GEMVs: also time the read ceiling, each call's matrix read again in one
    /// job with each of the read probe's patterns at one and at four items a thread and
    /// nothing else done, taking turns with the GEMV call by call (`read_ceiling`); reports
    /// each, and the GEMV against the fastest. A timed GEMV that would follow a read form
    /// follows an untimed GEMV instead (`read_ceiling::needs_lead_in`).
    #[arg(long)]
    pub ceiling: bool,
}

/// One read form of `--ceiling`, timed beside the GEMV.
#[derive(serde::Serialize)]
struct CeilingForm {
    pattern: &'static str,
    items_per_thread: usize,
    ms_per_call: f64,
    weight_gbps: f64,
    bandwidth_fraction_paired: Option<f64>,
}

#[derive(serde::Serialize)]
struct Row {
    format: String,
    rows: usize,
    cols: usize,
    tokens: usize,
    isa: String,
    threads: usize,
    resident: bool,
    /// Bytes of weights the timed calls cycled through (copies of the matrix).
    cycled_bytes: usize,
    ms_per_call: f64,
    weight_gbps: f64,
    dram_gbps: f64,
    /// The start probe's fastest pass (`dram_gbps` is its best pattern's median pass).
    dram_gbps_best_pass: f64,
    bandwidth_fraction: f64,
    /// GEMVs (weights streamed, not resident): `weight_gbps` against read probes taken
    /// between the calls (`probe_rounds`), and those readings.
    #[serde(skip_serializing_if = "Option::is_none")]
    bandwidth_fraction_paired: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dram_gbps_around: Vec<f64>,
    gops: f64,
    peak_gops: f64,
    peak_kind: &'static str,
    peak_fraction: f64,
    /// With --ceiling: the read forms timed beside the GEMV, and the GEMV's `weight_gbps`
    /// over the fastest one's (medians of calls taking turns).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    read_ceiling: Vec<CeilingForm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    of_read_ceiling: Option<f64>,
}

pub(crate) fn parse_shape(s: &str) -> Result<(usize, usize), String> {
    let (r, c) = s
        .split_once('x')
        .ok_or_else(|| format!("shape {s:?} is not ROWSxCOLS"))?;
    let p = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("shape {s:?}: {v:?} is not a number"))
    };
    Ok((p(r)?, p(c)?))
}

/// A `rows x cols` matrix of `q`: 64 distinct rows of random normal weights quantized
/// with the reference quantizer, repeated (quantizing hundreds of millions of weights
/// would take longer than the benchmark, and repeated rows read the same from DRAM).
pub(crate) fn make_weights(
    q: QType,
    rows: usize,
    cols: usize,
    seed: u64,
) -> Result<Vec<u8>, kt_kernels::KtError> {
    let row_bytes = q.row_bytes(cols)?;
    let distinct = rows.min(64);
    let mut rng = SplitMix64::new(seed);
    let mut f = vec![0f32; distinct * cols];
    rng.fill_normal(&mut f, 0.05);
    let mut base = vec![0u8; distinct * row_bytes];
    quant::quantize(q, &f, &mut base)?;
    let mut w = Vec::with_capacity(rows * row_bytes);
    for r in 0..rows {
        let s = (r % distinct) * row_bytes;
        w.extend_from_slice(&base[s..s + row_bytes]);
    }
    Ok(w)
}

pub fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let pool = machine::pool(a.threads)?;
    let isa: Isa = cpu::isa::selected()?;
    let m = machine::measure(pool, isa)?;
    // At most a quarter of the free memory: a small machine with a large last-level cache
    // measures less cleanly rather than running out of memory.
    let cycle = match machine::available_memory_bytes() {
        Some(avail) => machine::cycle_bytes().min(avail / 4),
        None => machine::cycle_bytes(),
    };
    if !a.json {
        println!(
            "kt-bench matmul | {} | isa {} | {} threads | read bandwidth {:.1} GB/s | peak {:.0} GOP/s ({})",
            m.cpu, m.isa, m.threads, m.dram_gbps, m.peak_gops, m.peak_kind
        );
        let ceiling = if a.ceiling {
            format!(" {:>7} {:>7}", "ceiling", "of ceil")
        } else {
            String::new()
        };
        println!(
            "{:<6} {:>11} {:>6} {:>10} {:>9} {:>6} {:>7} {:>9} {:>6}{ceiling}",
            "format", "shape", "tokens", "ms/call", "GB/s", "of bw", "beside", "GOP/s", "of pk"
        );
    }
    let mut probe_buf: Option<ProbeRounds> = None;
    for f in &a.formats {
        let q = QType::from_name(f).ok_or_else(|| format!("unknown format {f:?}"))?;
        for s in &a.shapes {
            let (rows, cols) = parse_shape(s)?;
            if let Err(e) = q.row_bytes(cols) {
                // e.g. V2-Lite's 1408-wide down rows in a K-quant: GGUF files store those in
                // Q5_0 / Q8_0 instead. Say so and go on with the other cases.
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({"format": q.name(), "rows": rows, "cols": cols, "skipped": e.to_string()})
                    );
                } else {
                    println!(
                        "{:<6} {:>11}  skipped: {e}",
                        q.name(),
                        format!("{rows}x{cols}")
                    );
                }
                continue;
            }
            let mat = make_weights(q, rows, cols, 1)?;
            for &tokens in &a.tokens {
                let copies = if tokens <= cpu::GEMV_MAX_TOKENS && !a.resident {
                    cycle.div_ceil(mat.len()).max(1)
                } else {
                    1
                };
                let extra: Vec<Vec<u8>> = (1..copies).map(|_| mat.clone()).collect();
                let all: Vec<&[u8]> = std::iter::once(&mat[..])
                    .chain(extra.iter().map(|v| &v[..]))
                    .collect();
                let mut rng = SplitMix64::new(2);
                let mut x = vec![0f32; tokens * cols];
                rng.fill_normal(&mut x, 1.0);
                let mut out = vec![0f32; tokens * rows];
                let call = |i: usize, out: &mut [f32]| {
                    cpu::matmul_with(
                        isa,
                        pool,
                        q,
                        all[i % all.len()],
                        rows,
                        cols,
                        &x,
                        tokens,
                        out,
                    )
                };
                for i in 0..3.max(all.len()) {
                    call(i, &mut out)?;
                }
                // streamed GEMVs: the read probe between the calls too (one buffer for
                // every case, made at the first)
                let mut probes = (copies > 1).then(|| {
                    let p = probe_buf.get_or_insert_with(|| ProbeRounds::new(pool));
                    p.restart();
                    p
                });
                // setting 0 the GEMV, 1.. the read forms (streamed GEMVs with --ceiling)
                let forms = if a.ceiling && probes.is_some() {
                    read_ceiling::forms()
                } else {
                    Vec::new()
                };
                let settings = 1 + forms.len();
                let mut times = vec![Vec::new(); settings];
                let mut rounds = vec![Vec::new(); settings];
                let start = Instant::now();
                let mut i = 0;
                let mut last = None;
                while (start.elapsed().as_secs_f64() < a.seconds
                    || times.iter().any(|t| t.len() < 5))
                    && times[0].len() < 10_000
                {
                    let v = variant_of(i, all.len(), settings);
                    if read_ceiling::needs_lead_in(v, last) {
                        // the copy half a cycle away: not the one the next calls read
                        call(i + all.len() / 2, &mut out)?;
                    }
                    last = Some(v);
                    rounds[v].push(probes.as_mut().map_or(0, |p| p.round().0));
                    let t = Instant::now();
                    match v.checked_sub(1) {
                        None => call(i, &mut out)?,
                        Some(f) => {
                            let item = forms[f].item_bytes(mat.len(), pool.threads());
                            let part = [all[i % all.len()]];
                            read_ceiling::read_parts(pool, &part, item, forms[f].pattern);
                        }
                    }
                    times[v].push(t.elapsed().as_secs_f64());
                    i += 1;
                }
                if let Some(p) = probes.as_mut() {
                    p.finish();
                }
                // per setting: the median call and its fraction of the probes beside it
                let timed: Vec<(f64, Option<f64>)> = times
                    .iter_mut()
                    .zip(&rounds)
                    .map(|(times, rounds)| {
                        let each_gbps: Vec<f64> =
                            times.iter().map(|t| mat.len() as f64 / t / 1e9).collect();
                        let paired = probes.as_ref().and_then(|p| p.fraction(&each_gbps, rounds));
                        times.sort_by(|x, y| x.total_cmp(y));
                        (times[times.len() / 2], paired)
                    })
                    .collect();
                let (secs, paired) = timed[0];
                let gbps = mat.len() as f64 / secs / 1e9;
                let read_ceiling: Vec<CeilingForm> = forms
                    .iter()
                    .zip(&timed[1..])
                    .map(|(f, &(secs, paired))| CeilingForm {
                        pattern: f.pattern.name,
                        items_per_thread: f.items_per_thread,
                        ms_per_call: secs * 1e3,
                        weight_gbps: mat.len() as f64 / secs / 1e9,
                        bandwidth_fraction_paired: paired,
                    })
                    .collect();
                let fastest = read_ceiling
                    .iter()
                    .max_by(|x, y| x.weight_gbps.total_cmp(&y.weight_gbps));
                let of_read_ceiling = fastest.map(|c| gbps / c.weight_gbps);
                let ceiling_cols = match fastest {
                    Some(c) => format!(
                        " {:>7} {:>6.0}%",
                        c.bandwidth_fraction_paired
                            .map_or("-".to_string(), |f| format!("{:.0}%", 100.0 * f)),
                        100.0 * gbps / c.weight_gbps
                    ),
                    None if a.ceiling => format!(" {:>7} {:>7}", "-", "-"),
                    None => String::new(),
                };
                let gops = 2.0 * (rows * cols * tokens) as f64 / secs / 1e9;
                let row = Row {
                    format: q.name().into(),
                    rows,
                    cols,
                    tokens,
                    isa: isa.to_string(),
                    threads: pool.threads(),
                    resident: a.resident,
                    cycled_bytes: all.len() * mat.len(),
                    ms_per_call: secs * 1e3,
                    weight_gbps: gbps,
                    dram_gbps: m.dram_gbps,
                    dram_gbps_best_pass: m.dram_gbps_best_pass,
                    bandwidth_fraction: gbps / m.dram_gbps,
                    bandwidth_fraction_paired: paired,
                    dram_gbps_around: probes.map(|p| p.readings.clone()).unwrap_or_default(),
                    gops,
                    peak_gops: m.peak_gops,
                    peak_kind: m.peak_kind,
                    peak_fraction: gops / m.peak_gops,
                    read_ceiling,
                    of_read_ceiling,
                };
                if a.json {
                    println!("{}", serde_json::to_string(&row)?);
                } else {
                    // "beside": against the probes read between the calls
                    let beside = row
                        .bandwidth_fraction_paired
                        .map_or("-".to_string(), |f| format!("{:.0}%", 100.0 * f));
                    println!(
                        "{:<6} {:>11} {:>6} {:>10.4} {:>9.1} {:>5.0}% {:>7} {:>9.1} {:>5.1}%{ceiling_cols}",
                        row.format,
                        format!("{rows}x{cols}"),
                        tokens,
                        row.ms_per_call,
                        gbps,
                        100.0 * row.bandwidth_fraction,
                        beside,
                        gops,
                        100.0 * row.peak_fraction
                    );
                }
            }
        }
    }
    Ok(())
}
