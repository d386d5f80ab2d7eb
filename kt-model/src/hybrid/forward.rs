//! The hybrid forward call: embeddings gathered on the CPU, every layer on the GPU stream
//! with the routed experts on the CPU in the middle of each MoE layer, the final norm and
//! the output head (see the module docs of `hybrid` for the order of work).

use std::time::Instant;

use half::bf16;
use kt_kernels::cuda::linear::{GemmNt, Strides};
use kt_kernels::cuda::mla::{MlaBatch, CACHE_ROW, KV_LORA_RANK, ROPE_DIM};
use kt_kernels::cuda::moe_experts::PackedWords;
use kt_kernels::cuda::{device_exclusive, DeviceBuf, GpuEvent, GpuStream, HostFlag, LaunchOrder};
use kt_kernels::ops::RouterConfig;

use super::error::{HybridError, HybridResult};
use super::gpu_experts::{cpu_experts, DecodeResident, GpuExperts, Resident};
use super::graph::{DecodeGraph, Head};
use super::layer::{GpuFfn, GpuLayer, GpuMlp, GpuQkv, GpuQuery, GpuRouter};
use super::scratch::Scratch;
use super::timing::{accumulate, HybridTimes, LayerMarks};
use super::weights::GpuLinear;
use super::{HybridCache, HybridModel, Workspaces, BLOCK_SIZE};
use crate::config::DeepSeekConfig;
use crate::deepseek::fused_moe::FusedMoe;
use crate::deepseek::{ForwardTrace, LogitRows, Routing};

impl HybridModel<'_> {
    /// Runs `tokens` at the positions that follow what `cache` holds, appends them to the
    /// cache and returns the logits of the rows `rows` asks for (`[rows, vocab]`, f32).
    pub fn forward(
        &mut self,
        tokens: &[u32],
        cache: &mut HybridCache,
        rows: LogitRows,
    ) -> HybridResult<Vec<f32>> {
        self.forward_timed(tokens, cache, rows, None, None)
    }

    /// Whether calls without trace or timing pipeline the layers: the host queues the next
    /// layer's GPU work before it runs the current layer's routed experts (the default; the
    /// same logits bit for bit). Off, every call runs the layers one after the other.
    pub fn set_pipelined(&mut self, on: bool) {
        self.pipelined = on;
    }

    /// Whether calls without trace or timing pipeline their layers: pipelining is on and the
    /// device took the probe wait of a scratch's host flag (a property of the device, probed
    /// when a call first built a scratch; false before the first call).
    pub fn pipelines(&self) -> bool {
        let mut probed = [&self.scratch_one, &self.scratch_many]
            .into_iter()
            .flatten();
        self.pipelined && probed.any(|s| s.flag.is_some())
    }

    /// [`Self::forward`], recording each layer's residual stream and each MoE layer's
    /// routing in `trace` (downloads: for tests) and adding the time split to `times`
    /// (events on the stream: only when given).
    pub fn forward_timed(
        &mut self,
        tokens: &[u32],
        cache: &mut HybridCache,
        rows: LogitRows,
        trace: Option<&mut ForwardTrace>,
        times: Option<&mut HybridTimes>,
    ) -> HybridResult<Vec<f32>> {
        let c = &self.config;
        let (t_n, hidden) = (tokens.len(), c.hidden_size);
        if t_n == 0 {
            return Err(HybridError::Input("no input tokens".into()));
        }
        if let Some(i) = tokens.iter().position(|&t| t as usize >= c.vocab_size) {
            return Err(HybridError::Input(format!(
                "token {i} is id {}, past the vocabulary of {}",
                tokens[i], c.vocab_size
            )));
        }
        let start = cache.len;
        if start + t_n > cache.capacity {
            return Err(HybridError::Input(format!(
                "{t_n} tokens after {start} overflow the cache of {} positions",
                cache.capacity
            )));
        }
        if cache.layers.len() != self.layers.len() {
            return Err(HybridError::Input(format!(
                "a cache of {} layers for a model of {}",
                cache.layers.len(),
                self.layers.len()
            )));
        }
        // Until this call returns no other thread queues flag-gated work or waits for the
        // whole device (module docs): held across the scratch's probe wait, the pipeline
        // and the graph.
        let _exclusive = device_exclusive();
        let timing = times.is_some();
        // A single-token call without trace or timing replays the decode graph of this cache
        // (`graph.rs`), captured after the first such call ran eagerly. The graph names the
        // cache, the single-token scratch and the workspaces by address: other calls leave
        // the first two in place (multi-token calls have a scratch of their own), and a call
        // that grew the workspaces makes the graph stale, so it goes.
        let graphable = self.graphed
            && t_n == 1
            && trace.is_none()
            && !timing
            && self.gpu_experts.as_ref().is_none_or(|g| t_n <= g.threshold);
        if self
            .graph
            .as_ref()
            .is_some_and(|g| g.ws_allocations != self.ws.allocations())
        {
            self.graph = None;
        }
        let replay = graphable && self.graph.as_ref().is_some_and(|g| g.cache_id == cache.id);
        let slot = match t_n {
            1 => &mut self.scratch_one,
            _ => &mut self.scratch_many,
        };
        if slot.as_ref().is_none_or(|x| x.tokens != t_n) {
            *slot = None; // free the old set first
            *slot = Some(Scratch::new(
                &self.gpu,
                self.gpu.stream(),
                c,
                &self.widths,
                t_n,
            )?);
        }
        let pipelined = self.pipelined && trace.is_none() && !timing;
        let HybridModel {
            gpu,
            config: c,
            token_embd,
            layers,
            output_norm,
            output,
            fused,
            router,
            scale,
            scratch_one,
            scratch_many,
            ws,
            gpu_experts,
            graph,
            graph_error,
            graph_launches,
            graph_captures,
            prefetch,
            defer_experts,
            ..
        } = self;
        let s = gpu.stream();
        let sc = match t_n {
            1 => scratch_one,
            _ => scratch_many,
        }
        .as_mut()
        .expect("built above");

        // long chunks: the routed experts on the GPU, their weights streamed per layer; a
        // single token: its choices among the resident experts on the GPU with
        // `decode_resident` (`gpu_experts/decode.rs`)
        let (mut gpu_experts, resident): (Option<&mut GpuExperts>, Option<&Resident>) =
            match gpu_experts.as_mut() {
                Some(g) if t_n > g.threshold => (Some(g), None),
                Some(g) if t_n == 1 => (None, g.decode_resident()),
                _ => (None, None),
            };
        if resident.is_some() && sc.decode.is_none() {
            sc.decode = Some(DecodeResident::new(s, c)?);
        }
        // single-token steps defer `defer_experts` CPU choices a MoE layer to the next one
        // (`deepseek/defer.rs`); the last MoE layer keeps all of its own
        let last_moe = layers
            .iter()
            .rposition(|l| matches!(l.ffn, GpuFfn::Moe { .. }));
        let defer = match t_n {
            1 => *defer_experts,
            _ => 0,
        };
        sc.defer.begin(defer, last_moe);

        let mut x = vec![0.0f32; t_n * hidden];
        for (&tok, row) in tokens.iter().zip(x.chunks_exact_mut(hidden)) {
            token_embd.dequantize_row(tok as usize, row)?;
        }
        s.copy_from_host(&x, &mut sc.x)?;
        if let Some(g) = graph.as_mut().filter(|_| replay) {
            let out = g.replay(s, fused.as_ref(), sc, cache, *prefetch)?;
            cache.len += 1;
            *graph_launches += 1;
            return Ok(out);
        }
        let positions: Vec<u32> = (start..start + t_n).map(|p| p as u32).collect();
        s.copy_from_host(&positions, &mut sc.positions)?;
        let batch = s.mla_batch(c.n_heads, &[t_n], &[start + t_n], &cache.table, BLOCK_SIZE)?;
        let step = Step {
            s,
            c,
            t_n,
            scale: *scale,
            router,
            fused: fused.as_ref(),
            timing,
            side: None,
            resident,
        };

        if let Some(g) = gpu_experts.as_deref_mut() {
            g.begin(gpu, t_n)?;
        }
        let mut marks: Vec<LayerMarks> = Vec::with_capacity(layers.len());
        // Without trace or timing, the layers run pipelined (see `pipeline.rs`) when the
        // device can make the stream wait for a host flag. Chunks with the routed experts on
        // the GPU have no CPU work to overlap: they run layer after layer.
        match sc.flag.take_if(|_| pipelined && gpu_experts.is_none()) {
            Some(flag) => {
                let run = step.layers_pipelined(layers, sc, cache, &batch, ws, &flag);
                sc.flag = Some(flag);
                run?;
            }
            None => step.layers_sequential(
                layers,
                sc,
                cache,
                &batch,
                ws,
                trace,
                &mut marks,
                gpu_experts,
            )?,
        }
        cache.len += t_n;

        let first = match rows {
            LogitRows::All => 0,
            LogitRows::Last => t_n - 1,
        };
        let n_rows = t_n - first;
        let mut head = LayerMarks {
            start: LayerMarks::mark(timing, s)?,
            ..Default::default()
        };
        s.rmsnorm_w32(
            &sc.x,
            hidden,
            t_n,
            output_norm,
            &mut sc.fin,
            None,
            c.rms_norm_eps,
        )?;
        let mut logits = s.alloc_zeroed::<f32>(n_rows * c.vocab_size)?;
        if first == 0 {
            output.apply_f32(s, &sc.fin, n_rows, &mut logits, &mut ws.gemm)?;
        } else {
            let mut last = s.alloc_zeroed::<bf16>(hidden)?;
            s.copy_cols_bf16(
                &sc.fin,
                first * hidden,
                hidden,
                &mut last,
                0,
                hidden,
                1,
                hidden,
            )?;
            output.apply_f32(s, &last, 1, &mut logits, &mut ws.gemm)?;
        }
        head.end = LayerMarks::mark(timing, s)?;
        let wait = Instant::now();
        let out = s.download(&logits)?;
        head.cpu_wait_s = wait.elapsed().as_secs_f64();
        if let Some(t) = times {
            accumulate(t, &marks, &head, t_n)?;
        }
        // the workspaces now fit a single-token step: capture it for the next calls (a
        // device that refuses a piece keeps the eager steps; the reason is kept)
        if graphable && graph_error.is_none() && sc.flag.is_some() {
            let head = Head {
                norm: output_norm,
                output,
            };
            *graph = None; // the old graph's buffers go before the new one's come
            match DecodeGraph::capture(gpu, &step, layers, head, sc, cache, ws) {
                Ok(g) => {
                    *graph = Some(g);
                    *graph_captures += 1;
                }
                Err(e) => *graph_error = Some(e.to_string()),
            }
        }
        Ok(out)
    }
}

/// What every stage of one call shares.
#[derive(Clone, Copy)]
pub(super) struct Step<'s> {
    pub(super) s: &'s GpuStream,
    pub(super) c: &'s DeepSeekConfig,
    t_n: usize,
    scale: f32,
    pub(super) router: &'s RouterConfig,
    fused: Option<&'s FusedMoe>,
    timing: bool,
    /// A second stream the step may fork work onto that is independent of the main chain
    /// (the decode graph's capture: the two branches become parallel graph nodes); None:
    /// everything runs on `s`, in the same order within each branch, so the values are the
    /// same.
    side: Option<&'s GpuStream>,
    /// The resident experts a single-token step runs its choices among on the GPU
    /// (`decode_resident`); None: every choice on the CPU.
    resident: Option<&'s Resident>,
}

impl<'s> Step<'s> {
    /// The same step queued on stream `s` (a graph's capture stream).
    pub(super) fn on<'a>(&self, s: &'a GpuStream) -> Step<'a>
    where
        's: 'a,
    {
        Step { s, ..*self }
    }

    /// This step with `side` to fork independent work onto (see the field).
    pub(super) fn with_side<'a>(&self, side: &'a GpuStream) -> Step<'a>
    where
        's: 'a,
    {
        Step {
            side: Some(side),
            ..*self
        }
    }

    /// The stream for work that may run beside the main chain from here on: the side stream,
    /// ordered after everything queued on `s` so far, or `s` itself.
    fn fork(&self) -> HybridResult<&'s GpuStream> {
        match self.side {
            Some(side) => {
                side.wait_event(&self.s.record_event()?)?;
                Ok(side)
            }
            None => Ok(self.s),
        }
    }

    /// Orders what comes next on `s` after the work forked onto `branch` ([`Self::fork`]).
    fn join(&self, branch: &GpuStream) -> HybridResult<()> {
        if self.side.is_some() {
            self.s.wait_event(&branch.record_event()?)?;
        }
        Ok(())
    }

    /// Every layer of the call, one after the other: each MoE layer's GPU half, its routed
    /// experts, then the rest; per-layer marks when timing, residuals and routing into
    /// `trace` when given.
    #[allow(clippy::too_many_arguments)]
    fn layers_sequential(
        &self,
        layers: &[GpuLayer],
        sc: &mut Scratch,
        cache: &mut HybridCache,
        batch: &MlaBatch,
        ws: &mut Workspaces,
        mut trace: Option<&mut ForwardTrace>,
        marks: &mut Vec<LayerMarks>,
        mut gpu_experts: Option<&mut GpuExperts>,
    ) -> HybridResult<()> {
        let s = self.s;
        for (li, layer) in layers.iter().enumerate() {
            let mut m = LayerMarks {
                start: LayerMarks::mark(self.timing, s)?,
                ..Default::default()
            };
            self.layer_front(layer, sc, cache, li, batch, ws, false)?;
            if let GpuFfn::Moe {
                router,
                bias,
                shared,
            } = &layer.ffn
            {
                let want = trace.is_some();
                let routing = self.moe(
                    li,
                    router,
                    bias.as_ref(),
                    shared.as_ref(),
                    sc,
                    &mut m,
                    ws,
                    want,
                    gpu_experts.as_deref_mut(),
                )?;
                if let (Some(tr), Some(r)) = (trace.as_deref_mut(), routing) {
                    tr.routing.push((li, r));
                }
            }
            m.end = LayerMarks::mark(self.timing, s)?;
            if let Some(tr) = trace.as_deref_mut() {
                tr.layer_outputs.push(s.download(&sc.x)?);
            }
            marks.push(m);
        }
        Ok(())
    }

    /// Layer `li` up to its routed experts: `x += attention`, the FFN's norm into `sc.xn`
    /// / `sc.xn32`, and for a dense layer `x += mlp` (a MoE layer continues in `moe`).
    /// `normed`: `sc.xn` already holds the attention's norm of `x` (the decode graph's
    /// fused return from the previous layer's experts wrote it).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn layer_front(
        &self,
        layer: &GpuLayer,
        sc: &mut Scratch,
        cache: &mut HybridCache,
        li: usize,
        batch: &MlaBatch,
        ws: &mut Workspaces,
        normed: bool,
    ) -> HybridResult<()> {
        self.attention(layer, sc, cache, li, batch, ws, normed)?;
        self.ffn_front(layer, sc, ws)
    }

    /// Layer `li`'s part after the attention up to its routed experts: `x += sc.out`, the
    /// FFN's norm into `sc.xn` / `sc.xn32`, and for a dense layer `x += mlp`.
    pub(super) fn ffn_front(
        &self,
        layer: &GpuLayer,
        sc: &mut Scratch,
        ws: &mut Workspaces,
    ) -> HybridResult<()> {
        let s = self.s;
        // x += the attention block's output (sc.out), then the FFN's norm: one launch
        s.add_rmsnorm_w32(
            &mut sc.x,
            &sc.out,
            self.t_n,
            &layer.ffn_norm,
            &mut sc.xn,
            Some(&mut sc.xn32),
            self.c.rms_norm_eps,
        )?;
        if let GpuFfn::Dense(mlp) = &layer.ffn {
            let (gu, act) = sc.dense.as_mut().expect("sized for the dense MLP");
            self.mlp(mlp, &sc.xn, gu, act, &mut sc.out, ws)?;
            s.add_f32(&mut sc.x, &sc.out)?;
        }
        Ok(())
    }

    /// Asks the L2 for up to `budget` bytes of `layer`'s attention weights, in the order its
    /// attention reads them (the query and kv projections, the absorbed key and value
    /// up-projections, the output projection); the bytes asked. The decode graph issues it
    /// for the next layer while the GPU waits for the CPU experts, so those kernels start on
    /// cached weights; it changes no value.
    pub(super) fn prefetch_attention(
        &self,
        layer: &GpuLayer,
        budget: usize,
    ) -> HybridResult<usize> {
        let (s, a) = (self.s, &layer.attn);
        let projections: [Option<&GpuLinear>; 3] = match &a.qkv {
            GpuQkv::Stacked(w) => [Some(w), None, None],
            GpuQkv::StackedLoRA { a_kv, b, .. } => [Some(a_kv), Some(b), None],
            GpuQkv::Separate { q, kv_a } => match q {
                GpuQuery::Direct(w) => [Some(w), Some(kv_a), None],
                GpuQuery::LoRA { a: wa, b, .. } => [Some(wa), Some(kv_a), Some(b)],
            },
        };
        let mut used = 0;
        for w in projections.into_iter().flatten() {
            used += w.prefetch_l2(s, budget - used)?;
        }
        used += s.prefetch_l2(&a.k_b, budget - used)?;
        used += s.prefetch_l2(&a.v_b, budget - used)?;
        used += a.output.prefetch_l2(s, budget - used)?;
        Ok(used)
    }

    /// `sc.out = W_o attn(rmsnorm(x))` (the caller adds it to `x`), writing this call's rows
    /// of layer `li`'s cache; with `normed`, `sc.xn` holds `rmsnorm(x)` already.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention(
        &self,
        layer: &GpuLayer,
        sc: &mut Scratch,
        cache: &mut HybridCache,
        li: usize,
        batch: &MlaBatch,
        ws: &mut Workspaces,
        normed: bool,
    ) -> HybridResult<()> {
        let (s, t_n, c) = (self.s, self.t_n, self.c);
        let (h_n, nope, v, eps) = (c.n_heads, c.qk_nope_head_dim, c.v_head_dim, c.rms_norm_eps);
        let qk = nope + ROPE_DIM;
        let a = &layer.attn;
        if !normed {
            s.rmsnorm_w32(
                &sc.x,
                c.hidden_size,
                t_n,
                &layer.attn_norm,
                &mut sc.xn,
                None,
                eps,
            )?;
        }
        let layer_cache = &mut cache.layers[li];
        // The int4 projections are programmatic dependents of the kernel before each (a norm,
        // the decode graph's return from the CPU experts, the expansion GEMV): their first
        // weight loads overlap its end; none of those kernels writes weights.
        let pdl = LaunchOrder::Programmatic;
        // The projections, then one launch: the cache rows (normalized latent, rotated k_pe)
        // at the positions (one sequence, pages in order; read on the device so a captured
        // decode step writes each token's row) and the rotated q_pe into the MLA query rows
        // beside q_lat. `q_row`: the elements per token of the buffer the queries are in.
        // The rope launch is independent of the absorption below (other columns of q_lat):
        // with a side stream the two run side by side, joined before the attention.
        let rope;
        let (q, q_row) = match &a.qkv {
            GpuQkv::Stacked(w) => {
                let qkv = sc.qkv.as_mut().expect("sized for the stacked projection");
                w.apply_ordered(s, &sc.xn, t_n, qkv, &mut ws.gemm, pdl)?;
                rope = self.fork()?;
                rope.mla_rope_cache_write_stacked(
                    qkv,
                    h_n,
                    nope,
                    &mut sc.q_lat,
                    &a.kv_a_norm,
                    layer_cache,
                    &sc.positions,
                    &cache.rope,
                    eps,
                )?;
                (&*qkv, h_n * qk + CACHE_ROW)
            }
            GpuQkv::StackedLoRA { a_kv, a_norm, b } => {
                // as the separate LoRA below, with kv_a's rows stacked under q_a's: its
                // weights load while the return waits, q_b's while the norm runs
                let a_rank = a_norm.len();
                let akv = sc.q_akv.as_mut().expect("sized for the stacked query LoRA");
                a_kv.apply_ordered(s, &sc.xn, t_n, akv, &mut ws.gemm, pdl)?;
                let (_, qan) = sc.q_a.as_mut().expect("sized for the query LoRA");
                let akv = &*akv;
                s.rmsnorm_w32(akv, a_rank + CACHE_ROW, t_n, a_norm, qan, None, eps)?;
                b.apply_ordered(s, qan, t_n, &mut sc.q, &mut ws.gemm, pdl)?;
                rope = self.fork()?;
                rope.mla_rope_cache_write_kv_in(
                    &sc.q,
                    h_n,
                    nope,
                    &mut sc.q_lat,
                    akv,
                    a_rank,
                    &a.kv_a_norm,
                    layer_cache,
                    &sc.positions,
                    &cache.rope,
                    eps,
                )?;
                (&sc.q, h_n * qk)
            }
            GpuQkv::Separate { q, kv_a } => {
                match q {
                    GpuQuery::Direct(w) => {
                        w.apply_ordered(s, &sc.xn, t_n, &mut sc.q, &mut ws.gemm, pdl)?;
                        kv_a.apply(s, &sc.xn, t_n, &mut sc.kv, &mut ws.gemm)?;
                    }
                    GpuQuery::LoRA { a: wa, a_norm, b } => {
                        // Each projection a programmatic dependent of the kernel before it:
                        // q_a's weights load while the return from the CPU experts waits,
                        // kv_a's (same input) while q_a runs, q_b's while the norm runs (it
                        // signals its dependents at its start).
                        let (qa, qan) = sc.q_a.as_mut().expect("sized for the query LoRA");
                        wa.apply_ordered(s, &sc.xn, t_n, qa, &mut ws.gemm, pdl)?;
                        kv_a.apply_ordered(s, &sc.xn, t_n, &mut sc.kv, &mut ws.gemm, pdl)?;
                        s.rmsnorm_w32(qa, a_norm.len(), t_n, a_norm, qan, None, eps)?;
                        b.apply_ordered(s, qan, t_n, &mut sc.q, &mut ws.gemm, pdl)?;
                    }
                }
                rope = self.fork()?;
                rope.mla_rope_cache_write(
                    &sc.q,
                    h_n,
                    nope,
                    &mut sc.q_lat,
                    &sc.kv,
                    &a.kv_a_norm,
                    layer_cache,
                    &sc.positions,
                    &cache.rope,
                    eps,
                )?;
                (&sc.q, h_n * qk)
            }
        };
        // q_lat[t, h] = W_uk(h)^T q_nope[t, h], with q_pe beside it: the MLA query rows
        let absorb = GemmNt {
            batch: h_n,
            m: t_n,
            n: KV_LORA_RANK,
            k: nope,
            a: Strides {
                offset: 0,
                batch: qk,
                row: q_row,
            },
            b_batch: KV_LORA_RANK * nope,
            b_row: nope,
            out: Strides {
                offset: 0,
                batch: CACHE_ROW,
                row: h_n * CACHE_ROW,
            },
        };
        s.gemm_nt(&absorb, q, &a.k_b, &mut sc.q_lat)?;
        self.join(rope)?;
        s.mla_attention(
            batch,
            &sc.q_lat,
            layer_cache,
            self.scale,
            &mut sc.o_lat,
            &mut ws.mla,
        )?;
        // o[t, h] = W_uv(h) o_lat[t, h], heads concatenated, then W_o
        let expand = GemmNt {
            batch: h_n,
            m: t_n,
            n: v,
            k: KV_LORA_RANK,
            a: Strides {
                offset: 0,
                batch: KV_LORA_RANK,
                row: h_n * KV_LORA_RANK,
            },
            b_batch: v * KV_LORA_RANK,
            b_row: KV_LORA_RANK,
            out: Strides {
                offset: 0,
                batch: v,
                row: h_n * v,
            },
        };
        s.gemm_nt(&expand, &sc.o_lat, &a.v_b, &mut sc.heads)?;
        a.output
            .apply_ordered(s, &sc.heads, t_n, &mut sc.out, &mut ws.gemm, pdl)?;
        Ok(())
    }

    /// `out = down(silu(gate x) * up x)` for `x` `[T, hidden]`.
    pub(super) fn mlp(
        &self,
        mlp: &GpuMlp,
        x: &DeviceBuf<bf16>,
        gate_up: &mut DeviceBuf<bf16>,
        act: &mut DeviceBuf<bf16>,
        out: &mut DeviceBuf<bf16>,
        ws: &mut Workspaces,
    ) -> HybridResult<()> {
        let (s, t_n) = (self.s, self.t_n);
        mlp.gate_up.apply(s, x, t_n, gate_up, &mut ws.gemm)?;
        s.silu_mul(gate_up, act, t_n, mlp.width())?;
        mlp.down.apply(s, act, t_n, out, &mut ws.gemm)
    }

    /// `x += routed(xn) + shared(xn)` for MoE layer `li` (`sc.xn` / `sc.xn32` hold the
    /// normalized hidden state): router and gating on the GPU, the routed experts on the
    /// CPU while the GPU runs the shared experts, or with `gpu_experts` on the GPU after
    /// them. Returns the routing when `want_routing`.
    #[allow(clippy::too_many_arguments)]
    fn moe(
        &self,
        li: usize,
        router: &GpuRouter,
        bias: Option<&DeviceBuf<f32>>,
        shared: Option<&GpuMlp>,
        sc: &mut Scratch,
        m: &mut LayerMarks,
        ws: &mut Workspaces,
        want_routing: bool,
        gpu_experts: Option<&mut GpuExperts>,
    ) -> HybridResult<Option<Routing>> {
        if let Some(g) = gpu_experts {
            if g.splits(li) {
                return self.moe_split(g, li, router, bias, shared, sc, m, ws, want_routing);
            }
            self.route(router, bias, sc)?;
            return self.moe_on_gpu(g, li, shared, sc, m, ws, want_routing);
        }
        let fused = self.fused_for(li)?;
        m.copied_out = self.moe_gpu(li, router, bias, shared, sc, m, ws, self.timing)?;
        // each read waits for its copy; the experts follow: keep the CPU threads spinning
        fused.wake_threads();
        let wait = Instant::now();
        let (hx, hids, hw) = sc.unpack(sc.host_pack.as_slice()?);
        m.cpu_wait_s = wait.elapsed().as_secs_f64();
        let cpu = Instant::now();
        let routed = sc.host_routed.as_mut_slice()?;
        let resident = self.resident_experts(li);
        let defer = &mut sc.defer;
        let bytes = cpu_experts(
            fused,
            li,
            hx,
            hids,
            hw,
            resident,
            defer,
            routed,
            self.timing,
        )?;
        // one layer after the other: the deferred choices may as well run now (the same
        // values as when they overlap the next layer's GPU work)
        defer.deferred(fused)?;
        m.cpu_experts_s = cpu.elapsed().as_secs_f64();
        m.routed_bytes = bytes;
        let chosen = want_routing.then(|| (hids.to_vec(), hw.to_vec()));
        self.moe_back(li, shared.is_some(), sc, m)?;
        self.traced_routing(chosen, sc)
    }

    /// The routing a trace asks for: the host's copy of the choices (taken before the
    /// layer's update reuses the scratch) and the router's logits.
    fn traced_routing(
        &self,
        chosen: Option<(Vec<u32>, Vec<f32>)>,
        sc: &Scratch,
    ) -> HybridResult<Option<Routing>> {
        chosen
            .map(|(ids, weights)| {
                Ok(Routing {
                    logits: self.s.download(&sc.router)?,
                    ids,
                    weights,
                })
            })
            .transpose()
    }

    /// The CPU experts of MoE layer `li`.
    pub(super) fn fused_for(&self, li: usize) -> HybridResult<&FusedMoe> {
        self.fused.ok_or_else(|| {
            HybridError::Input(format!(
                "layer {li} is MoE but the model has no routed experts"
            ))
        })
    }

    /// The GPU half of a MoE layer before the CPU experts: router and gating, the copy of
    /// the normalized hidden state, ids and weights (packed) to pinned memory, then the
    /// shared experts. Returns an event recorded right after the copies when `copied_event`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn moe_gpu(
        &self,
        li: usize,
        router: &GpuRouter,
        bias: Option<&DeviceBuf<f32>>,
        shared: Option<&GpuMlp>,
        sc: &mut Scratch,
        m: &mut LayerMarks,
        ws: &mut Workspaces,
        copied_event: bool,
    ) -> HybridResult<Option<GpuEvent>> {
        let s = self.s;
        self.route_packed(router, bias, sc)?;
        m.routed = LayerMarks::mark(self.timing, s)?;
        s.copy_to_pinned(&sc.pack, &mut sc.host_pack)?;
        let copied = LayerMarks::mark(copied_event, s)?;
        // the choices among the resident experts, from the device's pack
        self.resident_choices(li, false, sc, ws)?;
        // queued now, run while the CPU computes the routed experts
        if let (Some(mlp), Some((gu, act, out))) = (shared, sc.shared.as_mut()) {
            self.mlp(mlp, &sc.xn, gu, act, out, ws)?;
        }
        m.shared_done = LayerMarks::mark(self.timing, s)?;
        Ok(copied)
    }

    /// The router's logits of `sc.xn` / `sc.xn32` and the gating's choices into `sc.ids` /
    /// `sc.weights`.
    fn route(
        &self,
        router: &GpuRouter,
        bias: Option<&DeviceBuf<f32>>,
        sc: &mut Scratch,
    ) -> HybridResult<()> {
        self.router_logits(router, sc)?;
        self.s.moe_gating(
            self.router,
            &sc.router,
            bias,
            self.t_n,
            &mut sc.ids,
            &mut sc.weights,
        )?;
        Ok(())
    }

    /// The router's logits and the gating's choices as [`Self::route`], written with
    /// `sc.xn32` into `sc.pack` (the CPU experts' inputs, one copy to the host).
    pub(super) fn route_packed(
        &self,
        router: &GpuRouter,
        bias: Option<&DeviceBuf<f32>>,
        sc: &mut Scratch,
    ) -> HybridResult<()> {
        self.router_logits(router, sc)?;
        self.s.moe_gating_packed(
            self.router,
            &sc.router,
            bias,
            self.t_n,
            &sc.xn32,
            &mut sc.pack,
        )?;
        Ok(())
    }

    /// [`Self::route_packed`] straight into the pinned `sc.host_pack` (no copy), then
    /// `ready` raised to `value` by the gating kernel (the decode graph's hand-off to the
    /// CPU experts).
    ///
    /// # Safety
    /// As [`GpuStream::moe_gating_packed_signal`]: the host reads `sc.host_pack` only
    /// between `ready` >= `value` and the point the next such launch waits for, and the
    /// scratch and flag outlive the graph that may replay this launch.
    pub(super) unsafe fn route_signal(
        &self,
        router: &GpuRouter,
        bias: Option<&DeviceBuf<f32>>,
        sc: &mut Scratch,
        ready: &HostFlag,
        value: u32,
    ) -> HybridResult<()> {
        self.router_logits(router, sc)?;
        // SAFETY: the caller's contract is the kernel's.
        unsafe {
            self.s.moe_gating_packed_signal(
                self.router,
                &sc.router,
                bias,
                self.t_n,
                &sc.xn32,
                &mut sc.host_pack,
                ready,
                value,
            )?
        };
        Ok(())
    }

    /// The decode graph's FFN entry of a MoE layer with an f32 router in one launch (after
    /// the attention, instead of [`Self::ffn_front`] and [`Self::route_signal`]): `x +=
    /// sc.out`, the FFN's norm `ffn_norm` into `sc.xn` / `sc.xn32`, the router's logits, the
    /// routing into the pinned `sc.host_pack`, and `ready` raised to `value`. The same values
    /// bit for bit.
    ///
    /// # Safety
    /// As [`Self::route_signal`].
    pub(super) unsafe fn add_norm_route_signal(
        &self,
        ffn_norm: &DeviceBuf<f32>,
        router: &DeviceBuf<f32>,
        bias: Option<&DeviceBuf<f32>>,
        sc: &mut Scratch,
        ready: &HostFlag,
        value: u32,
    ) -> HybridResult<()> {
        // SAFETY: the caller's contract is the kernel's; sc.route_counter serves only this
        // launch at a time (the stream runs them in order).
        unsafe {
            self.s.add_norm_route_signal(
                self.router,
                &mut sc.x,
                &sc.out,
                ffn_norm,
                self.c.rms_norm_eps,
                &mut sc.xn,
                &mut sc.xn32,
                router,
                &mut sc.router,
                &mut sc.route_counter,
                bias,
                &mut sc.host_pack,
                ready,
                value,
            )?
        };
        Ok(())
    }

    /// The router's logits of `sc.xn` / `sc.xn32` into `sc.router`.
    fn router_logits(&self, router: &GpuRouter, sc: &mut Scratch) -> HybridResult<()> {
        let (s, t_n, c) = (self.s, self.t_n, self.c);
        let (e_n, hidden) = (self.router.n_experts, c.hidden_size);
        match router {
            GpuRouter::F32(w) => s.gemm_nt(
                &GemmNt::linear(t_n, e_n, hidden),
                &sc.xn32,
                w,
                &mut sc.router,
            )?,
            GpuRouter::Bf16(w) => {
                s.gemm_nt(&GemmNt::linear(t_n, e_n, hidden), &sc.xn, w, &mut sc.router)?
            }
        }
        Ok(())
    }

    /// The GPU half after the CPU experts: the routed sum (in `sc.host_routed`) copied back
    /// and added to the residual stream with the shared experts' output.
    pub(super) fn moe_back(
        &self,
        li: usize,
        has_shared: bool,
        sc: &mut Scratch,
        m: &mut LayerMarks,
    ) -> HybridResult<()> {
        let s = self.s;
        m.back_queued = LayerMarks::mark(self.timing, s)?;
        s.copy_from_pinned(&sc.host_routed, &mut sc.routed)?;
        m.back_done = LayerMarks::mark(self.timing, s)?;
        self.add_routed(has_shared, sc)?;
        // then the resident choices' sum, as the decode graph's return adds it
        if let Some(out) = self.resident_out(li, &sc.decode)? {
            s.add_f32(&mut sc.x, out)?;
        }
        Ok(())
    }

    /// The experts of layer `li` whose choices this step runs on the GPU (the first ones):
    /// their count, 0 when every choice runs on the CPU.
    pub(super) fn resident_experts(&self, li: usize) -> usize {
        self.resident
            .filter(|r| r.has_layer(li))
            .map_or(0, |r| r.experts)
    }

    /// Queues layer `li`'s choices among the resident experts (none without), read from the
    /// gating's pack in pinned host memory (`on_host`, the decode graph) or on the device.
    pub(super) fn resident_choices(
        &self,
        li: usize,
        on_host: bool,
        sc: &mut Scratch,
        ws: &mut Workspaces,
    ) -> HybridResult<()> {
        let Some(r) = self.resident.filter(|r| r.has_layer(li)) else {
            return Ok(());
        };
        let d = sc.decode.as_mut().ok_or_else(|| {
            HybridError::Input("a single-token step's resident-expert buffers are missing".into())
        })?;
        let words = match on_host {
            true => PackedWords::Pinned(&sc.host_pack),
            false => PackedWords::Device(&sc.pack),
        };
        d.run(self.s, r, li, words, &sc.xn, &mut ws.gemm)
    }

    /// The sum of layer `li`'s resident choices ([`Self::resident_choices`]) in `decode`
    /// (the scratch's), when it has any.
    pub(super) fn resident_out<'a>(
        &self,
        li: usize,
        decode: &'a Option<DecodeResident>,
    ) -> HybridResult<Option<&'a DeviceBuf<f32>>> {
        if self.resident_experts(li) == 0 {
            return Ok(None);
        }
        match decode.as_ref() {
            Some(d) => Ok(Some(&d.out)),
            None => Err(HybridError::Input(
                "a single-token step's resident-expert buffers are missing".into(),
            )),
        }
    }

    /// `x += routed (+ the shared experts' output)`: a MoE layer's update of the residual.
    fn add_routed(&self, has_shared: bool, sc: &mut Scratch) -> HybridResult<()> {
        let s = self.s;
        match (has_shared, sc.shared.as_ref()) {
            (true, Some((_, _, out))) => s.add2_f32(&mut sc.x, &sc.routed, out)?,
            _ => s.add_f32(&mut sc.x, &sc.routed)?,
        }
        Ok(())
    }

    /// [`Self::moe`] with layer `li`'s routed experts split (`gpu_experts/split.rs`): the
    /// GPU half of the CPU path (routing and inputs to pinned memory, the shared experts
    /// queued), the GPU's experts queued, the CPU's run meanwhile, their sum copied back and
    /// added with the GPU's.
    #[allow(clippy::too_many_arguments)]
    fn moe_split(
        &self,
        g: &mut GpuExperts,
        li: usize,
        router: &GpuRouter,
        bias: Option<&DeviceBuf<f32>>,
        shared: Option<&GpuMlp>,
        sc: &mut Scratch,
        m: &mut LayerMarks,
        ws: &mut Workspaces,
        want_routing: bool,
    ) -> HybridResult<Option<Routing>> {
        let (s, fused) = (self.s, self.fused_for(li)?);
        // the choices on the GPU too (for its combine), then the CPU path's copy of them
        // with the inputs: the same kernels on the same inputs, the same values
        self.route(router, bias, sc)?;
        m.copied_out = self.moe_gpu(li, router, bias, shared, sc, m, ws, self.timing)?;
        let wait = Instant::now();
        let (hx, hids, hw) = sc.unpack(sc.host_pack.as_slice()?);
        m.cpu_wait_s = wait.elapsed().as_secs_f64();
        let on_gpu = g.forward_layer(
            li,
            s,
            &sc.xn,
            hids,
            &sc.weights,
            &mut sc.routed,
            &mut ws.gemm,
        )?;
        let routed = sc.host_routed.as_mut_slice()?;
        m.cpu_experts_s = g.run_cpu_share(fused, li, hx, hids, hw, on_gpu, routed)?;
        let chosen = want_routing.then(|| (hids.to_vec(), hw.to_vec()));
        g.add_cpu_share(s, &sc.host_routed, &mut sc.routed)?;
        self.add_routed(shared.is_some(), sc)?;
        self.traced_routing(chosen, sc)
    }

    /// The rest of [`Self::moe`] with the routed experts on the GPU: the shared experts
    /// queued while the host waits for the router's choices, then the experts of
    /// `gpu_experts` (layer `li`'s weights staged by then), both added to the residual.
    #[allow(clippy::too_many_arguments)]
    fn moe_on_gpu(
        &self,
        g: &mut GpuExperts,
        li: usize,
        shared: Option<&GpuMlp>,
        sc: &mut Scratch,
        m: &mut LayerMarks,
        ws: &mut Workspaces,
        want_routing: bool,
    ) -> HybridResult<Option<Routing>> {
        let s = self.s;
        s.copy_to_pinned(&sc.ids, &mut sc.host_ids)?;
        if let (Some(mlp), Some((gu, act, out))) = (shared, sc.shared.as_mut()) {
            self.mlp(mlp, &sc.xn, gu, act, out, ws)?;
        }
        // the read waits for the copy of the ids
        let wait = Instant::now();
        let ids = sc.host_ids.as_slice()?;
        m.cpu_wait_s = wait.elapsed().as_secs_f64();
        g.forward_layer(
            li,
            s,
            &sc.xn,
            ids,
            &sc.weights,
            &mut sc.routed,
            &mut ws.gemm,
        )?;
        let ids = want_routing.then(|| ids.to_vec());
        self.add_routed(shared.is_some(), sc)?;
        let Some(ids) = ids else {
            return Ok(None);
        };
        Ok(Some(Routing {
            logits: s.download(&sc.router)?,
            ids,
            weights: s.download(&sc.weights)?,
        }))
    }
}
