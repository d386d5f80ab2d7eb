//! Where the hybrid decode chain's GPU time goes, kernel by kernel, on the V2-Lite shapes (hidden
//! 2048, 64 experts, top 6, 16 heads, ~1.1k cached keys): run on a GPU machine as
//! `chain_probe CUBIN_DIR` after `examples/chain_probe/build.sh CUBIN_DIR` (the cubins of
//! `examples/chain_probe/probe.cu` and of the library's `hybrid_ops.cu` / `mla_decode_small.cu`).
//! `cargo build --release -p kt-kernels --features cuda --example chain_probe`.
//!
//! Each case captures `LAUNCHES` launches into one CUDA graph (so the host's launch rate does not
//! count) and prints the mean microseconds per launch over `REPLAYS` replays: the kernel's
//! duration plus the graph's ~1 us between two nodes. Weights and caches rotate over copies that
//! together exceed the L2 (as in a decode step, where 27 layers' weights pass between two visits
//! of one layer), so their reads come from HBM. Cases:
//! - the FFN entry (`kt_add_norm_route_signal`) at the session's start (`old`) and in the
//!   configurations of `cuda/moe_gating.cu`'s template (`eN`: N experts per block, `s`: the
//!   pack's row written by every block before its ticket), with the pack and the flag in pinned
//!   host memory (as in the decode) and in device memory (what the PCIe writes and the system
//!   fence cost);
//! - the library's entry cut short after each of its steps (`stageN`, probe.cu; `stage6` is
//!   stage 5 with the ticket and the flag's signal of session 9, fences in every thread) and
//!   the entry as one thread-block cluster of 8 / 16 blocks (`cluster`, `cluster16`,
//!   probe.cu), beside an empty kernel (the graph's floor per node);
//! - the routing alone (`kt_moe_gating`, one token, one warp) and the unfused packed gating;
//! - the return kernel (`kt_wait_add2_rmsnorm_w32`) with its flag already raised, the routed sum
//!   in pinned memory (as in the decode) and in device memory;
//! - the MLA decode kernel and its combine, alone and in pairs; the rope + cache write and the
//!   query absorption GEMV, alone and in pairs.
//!
//! (A benchmark, so not a test; its numbers go to bench-results, never into asserts.)

use std::sync::Arc;

use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use half::bf16;
use kt_kernels::util::SplitMix64;

const LAUNCHES: usize = 64;
const REPLAYS: usize = 20;
/// Bytes of weights or cache rotated over in a case: above the H100's 50 MB L2.
const ROTATE_BYTES: usize = 96 << 20;

// V2-Lite's shapes
const HIDDEN: usize = 2048;
const EXPERTS: usize = 64;
const TOP_K: usize = 6;
const HEADS: usize = 16;
const NOPE: usize = 128;
const ROPE: usize = 64;
const RANK: usize = 512;
const ROW: usize = RANK + ROPE;
const KV_LEN: usize = 1100;
const BLOCK: usize = 64;
const MLA_SMEM: u32 = 95_232;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Probe {
    ctx: Arc<CudaContext>,
    s: Arc<CudaStream>,
    gating: Arc<CudaModule>,
    ops: Arc<CudaModule>,
    mla: Arc<CudaModule>,
    rng: SplitMix64,
}

/// Mirrors the C struct GemmNtArgs of cuda/hybrid_ops.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct GemmNtArgs {
    a_off: i64,
    a_batch: i64,
    a_row: i64,
    b_batch: i64,
    b_row: i64,
    o_off: i64,
    o_batch: i64,
    o_row: i64,
    m: i32,
    n: i32,
    k: i32,
}
// SAFETY: #[repr(C)] integers in the C struct's order, passed by value.
unsafe impl DeviceRepr for GemmNtArgs {}

/// Page-locked host memory and its device address.
struct Pinned {
    _host: cudarc::driver::PinnedHostSlice<u32>,
    dev: u64,
}

impl Probe {
    fn f32s(&mut self, n: usize, scale: f32) -> Res<CudaSlice<f32>> {
        let v: Vec<f32> = (0..n)
            .map(|_| (self.rng.next_f32() * 2.0 - 1.0) * scale)
            .collect();
        Ok(self.s.clone_htod(&v)?)
    }

    fn bf16s(&mut self, n: usize, scale: f32) -> Res<CudaSlice<bf16>> {
        let v: Vec<bf16> = (0..n)
            .map(|_| bf16::from_f32((self.rng.next_f32() * 2.0 - 1.0) * scale))
            .collect();
        Ok(self.s.clone_htod(&v)?)
    }

    fn pinned(&self, words: usize) -> Res<Pinned> {
        // SAFETY: flags 0; the memory is zeroed below before any kernel reads it.
        let mut host = unsafe { self.ctx.alloc_pinned_with_flags::<u32>(words, 0) }?;
        let ptr = host.as_mut_ptr()?;
        // SAFETY: `ptr` holds `words` u32 just allocated.
        unsafe { std::ptr::write_bytes(ptr, 0, words) };
        let mut dev: sys::CUdeviceptr = 0;
        // SAFETY: `ptr` is the start of a live cuMemHostAlloc block of this context.
        unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, ptr as *mut _, 0) }.result()?;
        Ok(Pinned { _host: host, dev })
    }

    /// Mean microseconds per launch of `launch(i)` for i in 0..LAUNCHES, captured as one graph.
    fn time(
        &self,
        name: &str,
        per_graph: usize,
        mut launch: impl FnMut(usize) -> Res<()>,
    ) -> Res<()> {
        self.s
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let captured = (0..LAUNCHES).try_for_each(&mut launch);
        let graph = self.s.end_capture(sys::CUgraphInstantiate_flags(0))?;
        captured?;
        let graph = graph.ok_or("empty capture")?;
        for _ in 0..3 {
            graph.launch()?;
        }
        let t0 = self
            .s
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))?;
        for _ in 0..REPLAYS {
            graph.launch()?;
        }
        let t1 = self
            .s
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))?;
        t1.synchronize()?;
        let us = t0.elapsed_ms(&t1)? as f64 * 1e3 / (REPLAYS * LAUNCHES) as f64;
        println!(
            "{name:<40} {us:8.2} us per launch ({:.2} us per kernel)",
            us / per_graph as f64
        );
        Ok(())
    }

    fn func(m: &Arc<CudaModule>, name: &str) -> Res<CudaFunction> {
        Ok(m.load_function(name)?)
    }
}

fn entry_cases(p: &mut Probe) -> Res<()> {
    let copies = ROTATE_BYTES / (EXPERTS * HIDDEN * 4);
    let routers: Vec<CudaSlice<f32>> = (0..copies)
        .map(|_| p.f32s(EXPERTS * HIDDEN, 0.05))
        .collect::<Res<_>>()?;
    let mut x = p.f32s(HIDDEN, 1.0)?;
    let d = p.bf16s(HIDDEN, 0.5)?;
    let norm_w = p.f32s(HIDDEN, 1.0)?;
    let mut xn = p.s.alloc_zeros::<bf16>(HIDDEN)?;
    let mut xn32 = p.s.alloc_zeros::<f32>(HIDDEN)?;
    let mut logits = p.s.alloc_zeros::<f32>(EXPERTS)?;
    let mut counter = p.s.alloc_zeros::<u32>(1)?;
    let words = HIDDEN + 2 * TOP_K;
    let pack_pinned = p.pinned(words)?;
    let flag_pinned = p.pinned(1)?;
    let pack_dev_buf = p.s.alloc_zeros::<u32>(words)?;
    let flag_dev_buf = p.s.alloc_zeros::<u32>(1)?;
    let (pack_dev, flag_dev) = {
        use cudarc::driver::DevicePtr;
        let (a, _ga) = pack_dev_buf.device_ptr(&p.s);
        let (b, _gb) = flag_dev_buf.device_ptr(&p.s);
        (a, b)
    };
    let null: u64 = 0;
    let (n, e, k) = (HIDDEN as i32, EXPERTS as i32, TOP_K as i32);
    let (n_group, topk_group, scoring, group_score, normalize) = (1i32, 1i32, 0i32, 0i32, 0i32);
    let (eps, scale) = (1e-6f32, 1.0f32);
    // the template's layout (the row, the norm's weights, the logits, the routing's scratch);
    // the session-start kernel uses the first n + 3 e + 1 floats of it
    let smem = ((2 * HIDDEN + 3 * EXPERTS + 1) * 4) as u32;
    // the graph's floor per node: an empty kernel of 32 blocks
    {
        let f = Probe::func(&p.gating, "kt_probe_empty")?;
        let s = p.s.clone();
        let zero = 0i32;
        p.time("empty kernel (32 blocks)", 1, |_| {
            let mut b = s.launch_builder(&f);
            b.arg(&zero);
            let cfg = LaunchConfig {
                grid_dim: (32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: kt_probe_empty takes one int and touches no memory.
            unsafe { b.launch(cfg) }?;
            Ok(())
        })?;
    }
    // (tag, kernel, blocks): the cluster kernel (probe.cu), the cut-short stages of the ticket
    // kernel (2 experts per block), then the template's configurations
    let names: Vec<(String, String, usize)> = [
        (
            "cluster",
            "kt_add_norm_route_signal_cluster".to_string(),
            8usize,
        ),
        ("stage1 norm", "kt_probe_entry_stage1".into(), 32),
        ("stage2 +logits", "kt_probe_entry_stage2".into(), 32),
        ("stage3 +ticket", "kt_probe_entry_stage3".into(), 32),
        ("stage4 +routing", "kt_probe_entry_stage4".into(), 32),
        ("stage5 +pack+flag", "kt_probe_entry_stage5".into(), 32),
        (
            "stage6 = 5, s9 ticket+signal",
            "kt_probe_entry_stage6".into(),
            32,
        ),
    ]
    .into_iter()
    .map(|(t, k, b)| (t.to_string(), k, b))
    .chain(
        [
            ("old", 8usize),
            ("e8", 8),
            ("e8s", 8),
            ("e4", 4),
            ("e4s", 4),
            ("e2", 2),
            ("e2s", 2),
            ("e1", 1),
            ("e1s", 1),
        ]
        .into_iter()
        .map(|(t, epb)| {
            (
                t.to_string(),
                format!("kt_probe_entry_{t}"),
                EXPERTS.div_ceil(epb),
            )
        }),
    )
    .chain(std::iter::once((
        "cluster16".to_string(),
        "kt_add_norm_route_signal_cluster16".to_string(),
        16,
    )))
    .collect();
    for (tag, kernel, blocks) in names {
        let f = Probe::func(&p.gating, &kernel)?;
        if kernel.ends_with("cluster16") {
            f.set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
                1,
            )?;
        }
        let blocks = blocks as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: smem,
        };
        for (place, pack, flag) in [
            ("pinned", pack_pinned.dev, flag_pinned.dev),
            ("device", pack_dev, flag_dev),
        ] {
            let name = format!("entry {tag} ({blocks} blocks), pack {place}");
            let s = p.s.clone();
            // a variant that cannot launch (a cluster shape the device refuses) is reported
            // and the probe goes on
            let timed = p.time(&name, 1, |i| {
                let mut b = s.launch_builder(&f);
                b.arg(&mut x)
                    .arg(&d)
                    .arg(&norm_w)
                    .arg(&mut xn)
                    .arg(&mut xn32);
                b.arg(&routers[i % routers.len()])
                    .arg(&mut logits)
                    .arg(&mut counter);
                b.arg(&null).arg(&pack).arg(&n).arg(&eps).arg(&e).arg(&k);
                b.arg(&n_group)
                    .arg(&topk_group)
                    .arg(&scoring)
                    .arg(&group_score);
                let value = i as u32 + 1;
                b.arg(&normalize).arg(&scale).arg(&flag).arg(&value);
                // SAFETY: the arguments of kt_add_norm_route_signal's signature; buffers sized
                // for n = 2048, 64 experts, top 6 (pack: row, ids, weights).
                unsafe { b.launch(cfg) }?;
                Ok(())
            });
            if let Err(err) = timed {
                println!("{name}: failed: {err}");
            }
        }
    }
    // the routing alone: one token, one warp (kt_moe_gating), and the unfused packed gating
    let ids_w = p.s.alloc_zeros::<u32>(TOP_K)?;
    let wts = p.s.alloc_zeros::<f32>(TOP_K)?;
    let f = Probe::func(&p.gating, "kt_moe_gating")?;
    let gsmem = ((4 * (2 * EXPERTS + 1)) * 4) as u32;
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: gsmem,
    };
    let one = 1i32;
    let s = p.s.clone();
    let (mut ids_w, mut wts) = (ids_w, wts);
    p.time("routing alone (kt_moe_gating, 1 token)", 1, |_| {
        let mut b = s.launch_builder(&f);
        b.arg(&logits)
            .arg(&null)
            .arg(&mut ids_w)
            .arg(&mut wts)
            .arg(&one)
            .arg(&e)
            .arg(&k);
        b.arg(&n_group)
            .arg(&topk_group)
            .arg(&scoring)
            .arg(&group_score)
            .arg(&normalize)
            .arg(&scale);
        // SAFETY: kt_moe_gating's arguments for one token of 64 logits, top 6.
        unsafe { b.launch(cfg) }?;
        Ok(())
    })?;
    // the routing inside one warp by the SM's clock (no launch, no memory trip)
    {
        let f = Probe::func(&p.gating, "kt_probe_routing_cycles")?;
        let rows = p.f32s(2 * EXPERTS, 4.0)?;
        let mut ids2 = p.s.alloc_zeros::<u32>(2 * TOP_K)?;
        let mut w2 = p.s.alloc_zeros::<f32>(2 * TOP_K)?;
        let mut cycles = p.s.alloc_zeros::<i64>(1)?;
        let reps = 1000i32;
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (32, 1, 1),
            shared_mem_bytes: ((4 * EXPERTS + 1) * 4) as u32,
        };
        let mut b = p.s.launch_builder(&f);
        b.arg(&rows).arg(&e).arg(&k).arg(&reps);
        b.arg(&mut ids2).arg(&mut w2).arg(&mut cycles);
        // SAFETY: kt_probe_routing_cycles' arguments: two rows of 64 logits, top 6, one warp,
        // shared memory for the rows and the routing's scratch.
        unsafe { b.launch(cfg) }?;
        let c = p.s.clone_dtoh(&cycles)?[0] as f64 / reps as f64;
        let khz = p
            .ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)?
            as f64;
        println!(
            "routing in one warp (64 logits, top 6): {c:.0} cycles = {:.3} us at {:.0} MHz",
            c / khz * 1e3,
            khz / 1e3
        );
    }
    let f = Probe::func(&p.gating, "kt_moe_gating_packed_signal")?;
    for (place, pack, flag) in [
        ("pinned", pack_pinned.dev, flag_pinned.dev),
        ("device", pack_dev, flag_dev),
    ] {
        let name = format!("packed gating + signal, pack {place}");
        p.time(&name, 1, |i| {
            let mut b = s.launch_builder(&f);
            b.arg(&logits)
                .arg(&null)
                .arg(&xn32)
                .arg(&pack)
                .arg(&n)
                .arg(&one)
                .arg(&e)
                .arg(&k);
            b.arg(&n_group)
                .arg(&topk_group)
                .arg(&scoring)
                .arg(&group_score)
                .arg(&normalize);
            let value = i as u32 + 1;
            b.arg(&scale).arg(&flag).arg(&value);
            // SAFETY: kt_moe_gating_packed_signal's arguments, one token; pack holds the row,
            // ids and weights.
            unsafe { b.launch(cfg) }?;
            Ok(())
        })?;
    }
    Ok(())
}

fn return_cases(p: &mut Probe) -> Res<()> {
    let f = Probe::func(&p.ops, "kt_wait_add2_rmsnorm_w32")?;
    let mut x = p.f32s(HIDDEN, 1.0)?;
    let shared = p.bf16s(HIDDEN, 0.5)?;
    let w = p.f32s(HIDDEN, 1.0)?;
    let mut out = p.s.alloc_zeros::<bf16>(HIDDEN)?;
    let routed_pinned = p.pinned(HIDDEN)?;
    let flag = p.pinned(1)?;
    let routed_dev_buf = p.f32s(HIDDEN, 1.0)?;
    let routed_dev = {
        use cudarc::driver::DevicePtr;
        let (a, _g) = routed_dev_buf.device_ptr(&p.s);
        a
    };
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (n, eps, value) = (HIDDEN as i32, 1e-6f32, 0u32);
    let s = p.s.clone();
    for (place, routed) in [("pinned", routed_pinned.dev), ("device", routed_dev)] {
        let name = format!("return (flag raised), routed {place}");
        p.time(&name, 1, |_| {
            let mut b = s.launch_builder(&f);
            b.arg(&flag.dev)
                .arg(&value)
                .arg(&mut x)
                .arg(&routed)
                .arg(&shared)
                .arg(&w);
            b.arg(&mut out).arg(&n).arg(&eps);
            // SAFETY: kt_wait_add2_rmsnorm_w32's arguments for one row of 2048; the flag (0)
            // is already at the value, so the kernel does not wait.
            unsafe { b.launch(cfg) }?;
            Ok(())
        })?;
    }
    Ok(())
}

fn mla_cases(p: &mut Probe, sms: usize) -> Res<()> {
    let pages = KV_LEN.div_ceil(BLOCK);
    let per_cache = pages * BLOCK * ROW;
    let copies = ROTATE_BYTES / (per_cache * 2);
    let caches: Vec<CudaSlice<bf16>> = (0..copies)
        .map(|_| p.bf16s(per_cache, 1.0))
        .collect::<Res<_>>()?;
    let table: Vec<i32> = (0..pages as i32).collect();
    let table = p.s.clone_htod(&table)?;
    let kv_lens = p.s.clone_htod(&[KV_LEN as i32])?;
    let q = p.bf16s(HEADS * ROW, 1.0)?;
    let tiles = KV_LEN.div_ceil(32);
    let splits = tiles.min(sms);
    let mut part_o = p.s.alloc_zeros::<f32>(splits * HEADS * RANK)?;
    let mut part_lse = p.s.alloc_zeros::<f32>(splits * HEADS)?;
    let mut o_lat = p.s.alloc_zeros::<bf16>(HEADS * RANK)?;
    let attn = Probe::func(&p.mla, "kt_mla_decode_small_bf16")?;
    attn.set_attribute(
        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        MLA_SMEM as i32,
    )?;
    let comb = Probe::func(&p.mla, "kt_mla_decode_small_combine")?;
    let (heads, bs, max_splits) = (HEADS as i32, BLOCK as i32, sms as i32);
    let scale_log2 = (1.0f32 / ((NOPE + ROPE) as f32).sqrt()) * std::f32::consts::LOG2_E;
    let attn_cfg = LaunchConfig {
        grid_dim: (1, splits as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: MLA_SMEM,
    };
    let comb_cfg = LaunchConfig {
        grid_dim: (HEADS as u32, (RANK / 128) as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let s = p.s.clone();
    let launch_attn =
        |i: usize, part_o: &mut CudaSlice<f32>, part_lse: &mut CudaSlice<f32>| -> Res<()> {
            let mut b = s.launch_builder(&attn);
            b.arg(&q)
                .arg(&caches[i % caches.len()])
                .arg(&table)
                .arg(&kv_lens)
                .arg(&heads);
            b.arg(&bs)
                .arg(&scale_log2)
                .arg(&max_splits)
                .arg(part_o)
                .arg(part_lse);
            // SAFETY: kt_mla_decode_small_bf16's arguments: 16 heads, 1100 keys in 18 pages of 64
            // (table 0..18), part_o / part_lse for `splits` = the grid's splits.
            unsafe { b.launch(attn_cfg) }?;
            Ok(())
        };
    let launch_comb = |part_o: &CudaSlice<f32>,
                       part_lse: &CudaSlice<f32>,
                       o_lat: &mut CudaSlice<bf16>|
     -> Res<()> {
        let mut b = s.launch_builder(&comb);
        b.arg(part_o)
            .arg(part_lse)
            .arg(&kv_lens)
            .arg(&heads)
            .arg(&max_splits)
            .arg(o_lat);
        // SAFETY: kt_mla_decode_small_combine's arguments for the partials above.
        unsafe { b.launch(comb_cfg) }?;
        Ok(())
    };
    p.time(
        &format!("mla small ({splits} splits, {KV_LEN} keys)"),
        1,
        |i| launch_attn(i, &mut part_o, &mut part_lse),
    )?;
    p.time("mla combine", 1, |_| {
        launch_comb(&part_o, &part_lse, &mut o_lat)
    })?;
    p.time("mla small + combine (pair)", 2, |i| {
        launch_attn(i, &mut part_o, &mut part_lse)?;
        launch_comb(&part_o, &part_lse, &mut o_lat)
    })?;

    // rope + cache write, then the absorption GEMV (q_lat[h, :512] = W_uk[h] q_nope[h])
    let rope_f = Probe::func(&p.ops, "kt_mla_rope_cache_write")?;
    let gemv_f = Probe::func(&p.ops, "kt_gemv_nt_v_bf16_bf16_bf16")?;
    let q_width = HEADS * (NOPE + ROPE);
    let qkv = p.bf16s(q_width + ROW, 1.0)?;
    let mut q_lat = p.s.alloc_zeros::<bf16>(HEADS * ROW)?;
    let kv_norm = p.f32s(RANK, 1.0)?;
    let mut cache = p.bf16s(per_cache, 1.0)?;
    let pos = p.s.clone_htod(&[(KV_LEN - 1) as u32])?;
    let cos = p.f32s(4096 * ROPE / 2, 1.0)?;
    let sin = p.f32s(4096 * ROPE / 2, 1.0)?;
    let w_copies = ROTATE_BYTES / (HEADS * RANK * NOPE * 2);
    let w_uk: Vec<CudaSlice<bf16>> = (0..w_copies)
        .map(|_| p.bf16s(HEADS * RANK * NOPE, 0.1))
        .collect::<Res<_>>()?;
    let row_i = (q_width + ROW) as i64;
    let (hh, qd, np, half, rope_rows, rank, toks) = (
        HEADS as i32,
        (NOPE + ROPE) as i32,
        NOPE as i32,
        (ROPE / 2) as i32,
        4096u32,
        RANK as i32,
        1i32,
    );
    let cache_rows = (pages * BLOCK) as i64;
    let kv_off = qkv.slice(q_width..);
    let eps = 1e-6f32;
    let rope_cfg = LaunchConfig {
        grid_dim: (2, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let args = GemmNtArgs {
        a_off: 0,
        a_batch: (NOPE + ROPE) as i64,
        a_row: row_i,
        b_batch: (RANK * NOPE) as i64,
        b_row: NOPE as i64,
        o_off: 0,
        o_batch: ROW as i64,
        o_row: (HEADS * ROW) as i64,
        m: 1,
        n: RANK as i32,
        k: NOPE as i32,
    };
    let gemv_cfg = LaunchConfig {
        // 8 warps of 4 columns (k = 128: the short-row kernel)
        grid_dim: ((RANK / 32) as u32, 1, HEADS as u32),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let launch_rope = |q_lat: &mut CudaSlice<bf16>, cache: &mut CudaSlice<bf16>| -> Res<()> {
        let mut b = s.launch_builder(&rope_f);
        b.arg(&qkv)
            .arg(&row_i)
            .arg(&hh)
            .arg(&qd)
            .arg(&np)
            .arg(q_lat);
        b.arg(&kv_off)
            .arg(&row_i)
            .arg(&kv_norm)
            .arg(cache)
            .arg(&pos)
            .arg(&cache_rows);
        b.arg(&cos)
            .arg(&sin)
            .arg(&half)
            .arg(&rope_rows)
            .arg(&rank)
            .arg(&toks)
            .arg(&eps);
        // SAFETY: kt_mla_rope_cache_write's arguments, one token of the stacked layout; the
        // position is below the cache's rows and the tables' 4096 rows.
        unsafe { b.launch(rope_cfg) }?;
        Ok(())
    };
    let launch_gemv = |i: usize, q_lat: &mut CudaSlice<bf16>| -> Res<()> {
        let mut b = s.launch_builder(&gemv_f);
        b.arg(&qkv).arg(&w_uk[i % w_uk.len()]).arg(q_lat).arg(&args);
        // SAFETY: kt_gemv_nt_v_bf16_bf16_bf16 over 16 heads of W_uk [512, 128], reading the
        // nope part of each head's query row and writing q_lat's latent slots.
        unsafe { b.launch(gemv_cfg) }?;
        Ok(())
    };
    p.time("rope + cache write", 1, |_| {
        launch_rope(&mut q_lat, &mut cache)
    })?;
    p.time("absorption gemv", 1, |i| launch_gemv(i, &mut q_lat))?;
    p.time("rope + absorption (pair)", 2, |i| {
        launch_rope(&mut q_lat, &mut cache)?;
        launch_gemv(i, &mut q_lat)
    })?;
    Ok(())
}

fn main() -> Res<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: chain_probe CUBIN_DIR")?;
    let ctx = CudaContext::new(0)?;
    // SAFETY: every buffer of the probe is allocated, written and used on its one stream, so
    // cudarc's per-buffer events (which a capture cannot wait on) are not needed.
    unsafe { ctx.disable_event_tracking() };
    let sms =
        ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as usize;
    println!("device {} ({sms} SMs)", ctx.name()?);
    let load = |f: &str| -> Res<Arc<CudaModule>> {
        let bytes = std::fs::read(format!("{dir}/{f}"))?;
        Ok(ctx.load_module(Ptx::from_binary(bytes))?)
    };
    let mut p = Probe {
        s: ctx.new_stream()?,
        gating: load("probe.cubin")?,
        ops: load("hybrid_ops.cubin")?,
        mla: load("mla_decode_small.cubin")?,
        ctx,
        rng: SplitMix64::new(8),
    };
    let which: Vec<String> = std::env::args().skip(2).collect();
    let wants = |c: &str| which.is_empty() || which.iter().any(|w| w == c);
    if wants("entry") {
        entry_cases(&mut p)?;
    }
    if wants("return") {
        return_cases(&mut p)?;
    }
    if wants("mla") {
        mla_cases(&mut p, sms)?;
    }
    Ok(())
}
