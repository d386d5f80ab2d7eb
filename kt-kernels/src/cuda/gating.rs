//! Launch wrapper of `cuda/moe_gating.cu`: the fused MoE router of DeepSeek V2 and V3 for a
//! batch of tokens, from f32 router logits to the top-k expert ids and their weights. It
//! takes the CPU reference's [`RouterConfig`] and follows `kt_kernels::ops::route` rule for
//! rule: selection by score (plus the correction bias for noaux_tc), group-limited methods
//! keep the `topk_group` best groups, ties go to the lowest index, ids come best first, and
//! weights are `(norm_topk_prob ? w / (sum(w) + 1e-20) : w) * routed_scaling_factor`.

use std::ffi::c_void;

use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use crate::ops::{RouterConfig, Scoring, TopkMethod};

use super::error::{launch_err, shape, CudaResult};
use super::modules::MOE_GATING;
use super::runtime::{launch_raw, DeviceBuf, GpuStream, HostFlag, LaunchOrder, PinnedBuf};
use half::bf16;

/// Kernel limits (see cuda/moe_gating.cu).
/// (n_experts: a warp holds the scores in 8 registers per lane; DeepSeek V3 has 256.)
pub const MAX_EXPERTS: usize = 256;
pub const MAX_GROUPS: usize = 64;
pub const MAX_TOP_K: usize = 32;
const WARPS_PER_BLOCK: usize = 4;
/// Threads per block of `kt_add_norm_route_signal` (`KT_ROUTE_THREADS`): also the block size
/// of `add_rmsnorm_w32`, whose sum order it repeats.
const ROUTE_THREADS: u32 = 256;
/// Router rows (experts) per block of `kt_add_norm_route_signal` (`KT_ROUTE_EPB`): few, so the
/// router's bytes stream through many multiprocessors at once (each block also normalizes
/// the row, which is small).
const ROUTE_EXPERTS_PER_BLOCK: usize = 2;

/// The kernel's integer parameters for `cfg` (n_group, topk_group, scoring, group score),
/// after the reference's own validation and the kernel's limits.
fn kernel_params(cfg: &RouterConfig, has_bias: bool) -> CudaResult<[i32; 4]> {
    const OP: &str = "moe_gating";
    cfg.validate().map_err(|e| shape(OP, e.to_string()))?;
    match (cfg.method, has_bias) {
        (TopkMethod::NoauxTc, false) => {
            return Err(shape(OP, "noaux_tc needs e_score_correction_bias"))
        }
        (m, true) if m != TopkMethod::NoauxTc => {
            return Err(shape(
                OP,
                format!("a correction bias was given but {m:?} does not use one"),
            ))
        }
        _ => {}
    }
    // Greedy is the grouped kernel with one group kept whole.
    let (n_group, topk_group) = match cfg.method {
        TopkMethod::Greedy => (1, 1),
        _ => (cfg.n_group, cfg.topk_group),
    };
    if cfg.n_experts > MAX_EXPERTS || n_group > MAX_GROUPS || cfg.top_k > MAX_TOP_K {
        return Err(shape(
            OP,
            format!(
                "{} experts, {n_group} groups, top_k {}: the kernel takes at most {MAX_EXPERTS}, {MAX_GROUPS}, {MAX_TOP_K}",
                cfg.n_experts, cfg.top_k
            ),
        ));
    }
    let scoring = match cfg.scoring {
        Scoring::Softmax => 0,
        Scoring::Sigmoid => 1,
    };
    let group_score = match cfg.method {
        TopkMethod::NoauxTc => 1, // sum of the two best
        _ => 0,                   // the best
    };
    Ok([n_group as i32, topk_group as i32, scoring, group_score])
}

/// The validated launch of one gating call: the grid and the kernel's integer arguments
/// from `tokens` on (tokens, n_experts, top_k, n_group, topk_group, scoring, group_score,
/// normalize).
struct Launch {
    config: LaunchConfig,
    ints: [i32; 8],
}

/// Checks the logits, bias and output lengths of a gating call of `tokens` rows whose ids
/// and weights hold `outputs` elements each (`None` when there are no tokens to route).
fn plan(
    op: &'static str,
    cfg: &RouterConfig,
    logits: &DeviceBuf<f32>,
    bias: Option<&DeviceBuf<f32>>,
    tokens: usize,
    outputs: (usize, usize),
) -> CudaResult<Option<Launch>> {
    let [n_group, topk_group, scoring, group_score] = kernel_params(cfg, bias.is_some())?;
    let e = cfg.n_experts;
    if logits.len() != tokens * e {
        return Err(shape(
            op,
            format!(
                "logits have {} elements, expected tokens {tokens} x n_experts {e}",
                logits.len()
            ),
        ));
    }
    if let Some(b) = bias {
        if b.len() != e {
            return Err(shape(
                op,
                format!("bias has {} elements, expected n_experts {e}", b.len()),
            ));
        }
    }
    if outputs.0 != tokens * cfg.top_k || outputs.1 != tokens * cfg.top_k {
        return Err(shape(
            op,
            format!(
                "ids have {}, weights {} elements; expected tokens {tokens} x top_k {}",
                outputs.0, outputs.1, cfg.top_k
            ),
        ));
    }
    if tokens == 0 {
        return Ok(None);
    }
    let blocks = u32::try_from(tokens.div_ceil(WARPS_PER_BLOCK))
        .map_err(|_| shape(op, format!("{tokens} tokens exceed the grid")))?;
    let smem = (WARPS_PER_BLOCK * (2 * e + n_group as usize) * 4) as u32;
    let config = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (WARPS_PER_BLOCK as u32 * 32, 1, 1),
        shared_mem_bytes: smem,
    };
    let ints = [
        i32::try_from(tokens)
            .map_err(|_| shape(op, format!("{tokens} tokens do not fit in an i32")))?,
        e as i32,
        cfg.top_k as i32,
        n_group,
        topk_group,
        scoring,
        group_score,
        cfg.norm_topk_prob as i32,
    ];
    Ok(Some(Launch { config, ints }))
}

/// Checks a packed gating call (`x` whole rows of `tokens`, `pack_len` words of
/// [`packed_len`]); returns hidden, hidden as the kernel's i32, and the launch.
fn plan_packed(
    op: &'static str,
    cfg: &RouterConfig,
    logits: &DeviceBuf<f32>,
    bias: Option<&DeviceBuf<f32>>,
    tokens: usize,
    x: &DeviceBuf<f32>,
    pack_len: usize,
) -> CudaResult<(usize, i32, Launch)> {
    let k = cfg.top_k;
    if tokens == 0 || !x.len().is_multiple_of(tokens) {
        return Err(shape(
            op,
            format!(
                "x has {} elements, not whole rows of {tokens} tokens",
                x.len()
            ),
        ));
    }
    let hidden = x.len() / tokens;
    let want = packed_len(tokens, hidden, k);
    if pack_len != want {
        return Err(shape(
            op,
            format!(
                "pack has {pack_len} words, expected tokens {tokens} x (hidden {hidden} + 2 top_k {k}) = {want}"
            ),
        ));
    }
    let hidden_i = i32::try_from(hidden)
        .map_err(|_| shape(op, format!("hidden {hidden} does not fit in an i32")))?;
    let l = plan(op, cfg, logits, bias, tokens, (tokens * k, tokens * k))?
        .ok_or_else(|| shape(op, "no tokens to route"))?;
    Ok((hidden, hidden_i, l))
}

/// The length in 32-bit words of [`GpuStream::moe_gating_packed`]'s output: `tokens` rows
/// of `hidden`, then `tokens * top_k` ids and as many weights.
pub fn packed_len(tokens: usize, hidden: usize, top_k: usize) -> usize {
    tokens * (hidden + 2 * top_k)
}

impl GpuStream {
    /// Routes `tokens` rows of `logits` (`[tokens, n_experts]`, f32): writes `ids` and
    /// `weights` (`[tokens, top_k]`, best first). `bias` is V3's `e_score_correction_bias`
    /// (`[n_experts]`), required by noaux_tc and refused by the other methods.
    pub fn moe_gating(
        &self,
        cfg: &RouterConfig,
        logits: &DeviceBuf<f32>,
        bias: Option<&DeviceBuf<f32>>,
        tokens: usize,
        ids: &mut DeviceBuf<u32>,
        weights: &mut DeviceBuf<f32>,
    ) -> CudaResult<()> {
        let outputs = (ids.len(), weights.len());
        let Some(l) = plan("moe_gating", cfg, logits, bias, tokens, outputs)? else {
            return Ok(());
        };
        let kernel = "kt_moe_gating";
        let f = self.kernels.get(&MOE_GATING, kernel)?;
        let null: u64 = 0;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&logits.slice);
        match bias {
            Some(bias) => b.arg(&bias.slice),
            None => b.arg(&null),
        };
        b.arg(&mut ids.slice).arg(&mut weights.slice);
        for v in &l.ints {
            b.arg(v);
        }
        b.arg(&cfg.routed_scaling_factor);
        // SAFETY: the arguments match kt_moe_gating (logits, bias or a null pointer, ids,
        // weights, tokens, n_experts, top_k, n_group, topk_group, scoring, group_score,
        // normalize, scale); plan() checked the kernel's limits and the lengths, and the
        // dynamic shared memory is what the kernel indexes per warp.
        unsafe { b.launch(l.config) }
            .map(drop)
            .map_err(launch_err(kernel, || format!("tokens {tokens}, {cfg:?}")))
    }

    /// [`Self::moe_gating`] into one packed buffer of 32-bit words (`pack`, of
    /// [`packed_len`]`(tokens, hidden, top_k)`): the rows of `x` (`[tokens, hidden]`, f32
    /// bits, copied unchanged), then the ids, then the weights (f32 bits), each
    /// `[tokens, top_k]`. One copy then moves all the routed experts' inputs to the host.
    pub fn moe_gating_packed(
        &self,
        cfg: &RouterConfig,
        logits: &DeviceBuf<f32>,
        bias: Option<&DeviceBuf<f32>>,
        tokens: usize,
        x: &DeviceBuf<f32>,
        pack: &mut DeviceBuf<u32>,
    ) -> CudaResult<()> {
        const OP: &str = "moe_gating_packed";
        let (hidden, hidden_i, l) = plan_packed(OP, cfg, logits, bias, tokens, x, pack.len())?;
        let kernel = "kt_moe_gating_packed";
        let f = self.kernels.get(&MOE_GATING, kernel)?;
        let null: u64 = 0;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&logits.slice);
        match bias {
            Some(bias) => b.arg(&bias.slice),
            None => b.arg(&null),
        };
        b.arg(&x.slice).arg(&mut pack.slice).arg(&hidden_i);
        for v in &l.ints {
            b.arg(v);
        }
        b.arg(&cfg.routed_scaling_factor);
        // SAFETY: the arguments match kt_moe_gating_packed (logits, bias or a null pointer,
        // x, pack, hidden, then kt_moe_gating's tokens .. scale); plan() checked the limits
        // and the logits / bias lengths, x is tokens x hidden and pack holds the rows, ids
        // and weights the kernel writes (checked above).
        unsafe { b.launch(l.config) }
            .map(drop)
            .map_err(launch_err(kernel, || {
                format!("tokens {tokens}, hidden {hidden}, {cfg:?}")
            }))
    }

    /// [`Self::moe_gating_packed`] straight into page-locked host memory (`pack`, written
    /// through its device address: no copy), then raises `flag` to `value` once every word
    /// is written and fenced, so a host that sees the value reads the whole pack. One block
    /// routes all tokens (the decode graph's single token); the words are those of
    /// [`Self::moe_gating_packed`] bit for bit. Capturable into a graph.
    ///
    /// # Safety
    /// The kernel writes `pack` while the host may look at it: the caller keeps host
    /// accesses to `pack` out of the window from this launch until `flag` reaches `value`
    /// (and out of the next such launch's window), and keeps `pack` and `flag` alive while
    /// the launch is queued or in a graph that may run.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn moe_gating_packed_signal(
        &self,
        cfg: &RouterConfig,
        logits: &DeviceBuf<f32>,
        bias: Option<&DeviceBuf<f32>>,
        tokens: usize,
        x: &DeviceBuf<f32>,
        pack: &mut PinnedBuf<u32>,
        flag: &HostFlag,
        value: u32,
    ) -> CudaResult<()> {
        const OP: &str = "moe_gating_packed_signal";
        let (hidden, hidden_i, mut l) = plan_packed(OP, cfg, logits, bias, tokens, x, pack.len())?;
        l.config.grid_dim = (1, 1, 1);
        let pack_dev = pack.device_ptr()?;
        let flag_dev = flag.device_ptr();
        let kernel = "kt_moe_gating_packed_signal";
        let f = self.kernels.get(&MOE_GATING, kernel)?;
        let null: u64 = 0;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&logits.slice);
        match bias {
            Some(bias) => b.arg(&bias.slice),
            None => b.arg(&null),
        };
        b.arg(&x.slice).arg(&pack_dev).arg(&hidden_i);
        for v in &l.ints {
            b.arg(v);
        }
        b.arg(&cfg.routed_scaling_factor).arg(&flag_dev).arg(&value);
        // SAFETY: the arguments match kt_moe_gating_packed_signal (kt_moe_gating_packed's,
        // then the flag's device address and value); plan_packed() checked the limits and
        // lengths (pack holds the rows, ids and weights), the block loops over the tokens;
        // the caller's contract covers the host's accesses to pack and the lifetimes.
        unsafe { b.launch(l.config) }
            .map(drop)
            .map_err(launch_err(kernel, || {
                format!("tokens {tokens}, hidden {hidden}, {cfg:?}")
            }))
    }

    /// The decode graph's FFN entry of a MoE layer for one token in one launch: `x += d`,
    /// `xn` / `xn32` = the RMSNorm of the new `x` with `norm_w` (bf16 and f32), the router's
    /// f32 `logits` = `router_w` (`[n_experts, n]`, f32) times `xn32`, then the routing of
    /// [`Self::moe_gating_packed_signal`] into the pinned `pack` (the row `xn32`, ids,
    /// weights) and `flag` raised to `value`. Bit for bit what `add_rmsnorm_w32`, `gemm_nt`
    /// (its warp-per-column GEMV) and the packed gating write. `counter` is one zeroed word
    /// the launch's blocks count themselves in (left at 0 for the next launch). Needs
    /// `n % 4 == 0`. Capturable into a graph.
    ///
    /// # Safety
    /// As [`Self::moe_gating_packed_signal`] for `pack` and `flag`; `counter` is used by no
    /// other work running at the same time.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn add_norm_route_signal(
        &self,
        cfg: &RouterConfig,
        x: &mut DeviceBuf<f32>,
        d: &DeviceBuf<bf16>,
        norm_w: &DeviceBuf<f32>,
        eps: f32,
        xn: &mut DeviceBuf<bf16>,
        xn32: &mut DeviceBuf<f32>,
        router_w: &DeviceBuf<f32>,
        logits: &mut DeviceBuf<f32>,
        counter: &mut DeviceBuf<u32>,
        bias: Option<&DeviceBuf<f32>>,
        pack: &mut PinnedBuf<u32>,
        flag: &HostFlag,
        value: u32,
    ) -> CudaResult<()> {
        const OP: &str = "add_norm_route_signal";
        let n = norm_w.len();
        let e = cfg.n_experts;
        let rows_ok = [x.len(), d.len(), xn.len(), xn32.len()]
            .iter()
            .all(|&l| l == n);
        if n == 0
            || !n.is_multiple_of(4)
            || !rows_ok
            || router_w.len() != e * n
            || counter.len() != 1
        {
            return Err(shape(
                OP,
                format!(
                    "one row of n = {n} (the norm's length, a multiple of 4): x {}, d {}, xn {}, xn32 {}; router {} (n_experts {e} x n); counter {}",
                    x.len(),
                    d.len(),
                    xn.len(),
                    xn32.len(),
                    router_w.len(),
                    counter.len()
                ),
            ));
        }
        let (_, _, l) = plan_packed(OP, cfg, logits, bias, 1, xn32, pack.len())?;
        let [_, _, top_k, n_group, topk_group, scoring, group_score, normalize] = l.ints;
        let n_i =
            i32::try_from(n).map_err(|_| shape(OP, format!("n {n} does not fit in an i32")))?;
        let blocks = u32::try_from(e.div_ceil(ROUTE_EXPERTS_PER_BLOCK))
            .map_err(|_| shape(OP, format!("{e} experts exceed the grid")))?;
        let smem = ((2 * n + 3 * e + n_group as usize) * 4) as u32;
        let kernel = "kt_add_norm_route_signal";
        let f = self.kernels.get_with_smem(&MOE_GATING, kernel, smem)?;
        let (pack_dev, flag_dev) = (pack.device_ptr()?, flag.device_ptr());
        let null: u64 = 0;
        let e_i = e as i32;
        let config = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (ROUTE_THREADS, 1, 1),
            shared_mem_bytes: smem,
        };
        let dims = || format!("n {n}, {cfg:?}");
        // SAFETY: the arguments match kt_add_norm_route_signal; the rows, the router, the
        // logits (plan_packed: n_experts) and the pack (one row, ids, weights) have the lengths
        // the kernel indexes (checked), n % 4 == 0 for its 16-byte loads of 16-byte aligned
        // buffers, the grid covers the experts at KT_ROUTE_EPB per block, the dynamic shared
        // memory holds the row, the norm's weights, the logits and the routing's scratch; the
        // caller's contract covers pack, flag and counter. As a programmatic dependent the
        // kernel reads only the router and the norm's weights (which no kernel writes) before
        // griddepcontrol.wait, and writes nothing before it.
        let s = &self.stream;
        let (xp, _g1) = x.slice.device_ptr_mut(s);
        let (dp, _g2) = d.slice.device_ptr(s);
        let (nwp, _g3) = norm_w.slice.device_ptr(s);
        let (xnp, _g4) = xn.slice.device_ptr_mut(s);
        let (xn32p, _g5) = xn32.slice.device_ptr_mut(s);
        let (rp, _g6) = router_w.slice.device_ptr(s);
        let (lp, _g7) = logits.slice.device_ptr_mut(s);
        let (cp, _g8) = counter.slice.device_ptr_mut(s);
        let bp = match bias {
            Some(bias) => bias.slice.device_ptr(s).0,
            None => null,
        };
        let mut params: [*mut c_void; 22] = [
            &xp as *const _ as *mut c_void,
            &dp as *const _ as *mut c_void,
            &nwp as *const _ as *mut c_void,
            &xnp as *const _ as *mut c_void,
            &xn32p as *const _ as *mut c_void,
            &rp as *const _ as *mut c_void,
            &lp as *const _ as *mut c_void,
            &cp as *const _ as *mut c_void,
            &bp as *const _ as *mut c_void,
            &pack_dev as *const _ as *mut c_void,
            &n_i as *const _ as *mut c_void,
            &eps as *const _ as *mut c_void,
            &e_i as *const _ as *mut c_void,
            &top_k as *const _ as *mut c_void,
            &n_group as *const _ as *mut c_void,
            &topk_group as *const _ as *mut c_void,
            &scoring as *const _ as *mut c_void,
            &group_score as *const _ as *mut c_void,
            &normalize as *const _ as *mut c_void,
            &cfg.routed_scaling_factor as *const _ as *mut c_void,
            &flag_dev as *const _ as *mut c_void,
            &value as *const _ as *mut c_void,
        ];
        let programmatic = self.programmatic(LaunchOrder::Programmatic);
        // SAFETY: see above; each pointer names a live value of the kernel's type.
        unsafe { launch_raw(s, &f, config, &mut params, programmatic, 1) }
            .map_err(launch_err(kernel, dims))
    }
}
