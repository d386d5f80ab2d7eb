//! Launch wrapper of `cuda/moe_gating.cu`: the fused MoE router of DeepSeek V2 and V3 for a
//! batch of tokens, from f32 router logits to the top-k expert ids and their weights.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::error::{launch_err, shape, CudaResult};
use super::modules::MOE_GATING;
use super::runtime::{DeviceBuf, GpuStream};

/// How router logits become scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scoring {
    /// DeepSeek V2: softmax over the experts.
    Softmax,
    /// DeepSeek V3: an independent sigmoid per expert.
    Sigmoid,
}

/// How a group of experts is scored for group-limited routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupScore {
    /// DeepSeek V2 `group_limited_greedy`: the group's best score.
    Max,
    /// DeepSeek V3 `noaux_tc`: the sum of the group's two best (bias-corrected) scores.
    Top2Sum,
}

/// A router's shape and rules. Experts are chosen by score (plus the correction bias when
/// one is given), only from the `topk_group` best of `n_group` groups; ties go to the lowest
/// index. The weights are the unbiased scores of the chosen experts,
/// `(normalize ? w / (sum(w) + 1e-20) : w) * scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GatingConfig {
    pub n_experts: usize,
    pub top_k: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub scoring: Scoring,
    pub group_score: GroupScore,
    pub normalize: bool,
    pub scale: f32,
}

/// Kernel limits (see cuda/moe_gating.cu).
pub const MAX_EXPERTS: usize = 512;
pub const MAX_GROUPS: usize = 64;
pub const MAX_TOP_K: usize = 32;
const WARPS_PER_BLOCK: usize = 4;

impl GatingConfig {
    /// DeepSeek V2 `greedy`: softmax, top-k over all experts. V2 scales by
    /// `routed_scaling_factor` only when it does not normalize.
    pub fn deepseek_v2_greedy(n_experts: usize, top_k: usize, norm_topk_prob: bool, routed_scaling_factor: f32) -> Self {
        GatingConfig {
            n_experts,
            top_k,
            n_group: 1,
            topk_group: 1,
            scoring: Scoring::Softmax,
            group_score: GroupScore::Max,
            normalize: norm_topk_prob,
            scale: if norm_topk_prob { 1.0 } else { routed_scaling_factor },
        }
    }

    /// DeepSeek V2 `group_limited_greedy`: softmax, groups ranked by their best score.
    pub fn deepseek_v2_group_limited(
        n_experts: usize,
        top_k: usize,
        n_group: usize,
        topk_group: usize,
        norm_topk_prob: bool,
        routed_scaling_factor: f32,
    ) -> Self {
        GatingConfig { n_group, topk_group, ..Self::deepseek_v2_greedy(n_experts, top_k, norm_topk_prob, routed_scaling_factor) }
    }

    /// DeepSeek V3 `noaux_tc`: sigmoid, choice by score + correction bias, groups ranked by
    /// the sum of their two best; weights normalized if asked, then always scaled.
    pub fn deepseek_v3(
        n_experts: usize,
        top_k: usize,
        n_group: usize,
        topk_group: usize,
        norm_topk_prob: bool,
        routed_scaling_factor: f32,
    ) -> Self {
        GatingConfig {
            n_experts,
            top_k,
            n_group,
            topk_group,
            scoring: Scoring::Sigmoid,
            group_score: GroupScore::Top2Sum,
            normalize: norm_topk_prob,
            scale: routed_scaling_factor,
        }
    }

    fn check(&self) -> CudaResult<()> {
        const OP: &str = "moe_gating";
        let c = self;
        let bad = |d: String| Err(shape(OP, d));
        if c.n_experts == 0 || c.n_experts > MAX_EXPERTS {
            return bad(format!("n_experts {} is not in 1..={MAX_EXPERTS}", c.n_experts));
        }
        if c.n_group == 0 || c.n_group > MAX_GROUPS || !c.n_experts.is_multiple_of(c.n_group) {
            return bad(format!("n_group {} must be in 1..={MAX_GROUPS} and divide n_experts {}", c.n_group, c.n_experts));
        }
        if c.topk_group == 0 || c.topk_group > c.n_group {
            return bad(format!("topk_group {} is not in 1..=n_group {}", c.topk_group, c.n_group));
        }
        let reachable = c.topk_group * (c.n_experts / c.n_group);
        if c.top_k == 0 || c.top_k > MAX_TOP_K || c.top_k > reachable {
            return bad(format!(
                "top_k {} must be in 1..={MAX_TOP_K} and at most the {reachable} experts of the chosen groups",
                c.top_k
            ));
        }
        Ok(())
    }
}

impl GpuStream {
    /// Routes `tokens` rows of `logits` (`[tokens, n_experts]`, f32): writes `ids` and
    /// `weights` (`[tokens, top_k]`, in selection order: best first). `bias` is V3's
    /// `e_score_correction_bias` (`[n_experts]`), added for choosing only.
    pub fn moe_gating(
        &self,
        cfg: &GatingConfig,
        logits: &DeviceBuf<f32>,
        bias: Option<&DeviceBuf<f32>>,
        tokens: usize,
        ids: &mut DeviceBuf<u32>,
        weights: &mut DeviceBuf<f32>,
    ) -> CudaResult<()> {
        const OP: &str = "moe_gating";
        cfg.check()?;
        let e = cfg.n_experts;
        if logits.len() != tokens * e {
            return Err(shape(OP, format!("logits have {} elements, expected tokens {tokens} x n_experts {e}", logits.len())));
        }
        if let Some(b) = bias {
            if b.len() != e {
                return Err(shape(OP, format!("bias has {} elements, expected n_experts {e}", b.len())));
            }
        }
        if ids.len() != tokens * cfg.top_k || weights.len() != tokens * cfg.top_k {
            return Err(shape(
                OP,
                format!("ids have {}, weights {} elements; expected tokens {tokens} x top_k {}", ids.len(), weights.len(), cfg.top_k),
            ));
        }
        if tokens == 0 {
            return Ok(());
        }
        let blocks = u32::try_from(tokens.div_ceil(WARPS_PER_BLOCK))
            .map_err(|_| shape(OP, format!("{tokens} tokens exceed the grid")))?;
        let smem = (WARPS_PER_BLOCK * (2 * e + cfg.n_group) * 4) as u32;
        let cfg_launch = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (WARPS_PER_BLOCK as u32 * 32, 1, 1), shared_mem_bytes: smem };
        let kernel = "kt_moe_gating".to_string();
        let f = self.kernels.get(&MOE_GATING, &kernel)?;
        let ints = [
            i32::try_from(tokens).map_err(|_| shape(OP, format!("{tokens} tokens do not fit in an i32")))?,
            e as i32,
            cfg.top_k as i32,
            cfg.n_group as i32,
            cfg.topk_group as i32,
            match cfg.scoring {
                Scoring::Softmax => 0,
                Scoring::Sigmoid => 1,
            },
            match cfg.group_score {
                GroupScore::Max => 0,
                GroupScore::Top2Sum => 1,
            },
            cfg.normalize as i32,
        ];
        let null: u64 = 0;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&logits.slice);
        match bias {
            Some(bias) => b.arg(&bias.slice),
            None => b.arg(&null),
        };
        b.arg(&mut ids.slice).arg(&mut weights.slice);
        for v in &ints {
            b.arg(v);
        }
        b.arg(&cfg.scale);
        // SAFETY: the arguments match kt_moe_gating (logits, bias or a null pointer, ids,
        // weights, tokens, n_experts, top_k, n_group, topk_group, scoring, group_score,
        // normalize, scale); cfg.check() holds the kernel's limits, lengths are checked above,
        // and the dynamic shared memory is what the kernel indexes per warp.
        unsafe { b.launch(cfg_launch) }
            .map(drop)
            .map_err(launch_err(kernel, format!("tokens {tokens}, {cfg:?}")))
    }
}
