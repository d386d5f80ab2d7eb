//! Optional stage timers of the forward pass: where a step's time goes, per layer.
//!
//! The forward pass marks the end of each stage with [`StageClock::lap`], which charges
//! the time since the previous mark to that stage. A clock without a [`StageTimes`] to fill
//! does nothing (it never reads the clock), so a forward call that was not asked for
//! timings pays one branch per stage.

use std::time::Instant;

/// What a slice of a layer's time was spent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Multi-head latent attention, projections included.
    Attention,
    /// The router's matmul and the top-k selection.
    Router,
    /// The routed experts (the fused MoE operator or the reference loop).
    RoutedExperts,
    /// The shared experts of an MoE layer, or the dense MLP of a dense layer.
    Mlp,
    /// Norms, residual adds, the embedding lookup and the final norm.
    Other,
    /// The output head (logits).
    LmHead,
}

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::Attention,
        Stage::Router,
        Stage::RoutedExperts,
        Stage::Mlp,
        Stage::Other,
        Stage::LmHead,
    ];

    /// A short snake_case name (JSON keys, legends).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Attention => "attention",
            Stage::Router => "router",
            Stage::RoutedExperts => "routed_experts",
            Stage::Mlp => "shared_or_dense_mlp",
            Stage::Other => "norms_other",
            Stage::LmHead => "lm_head",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Seconds per [`Stage`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Split(pub [f64; 6]);

impl Split {
    pub fn get(&self, s: Stage) -> f64 {
        self.0[s.index()]
    }

    pub fn total(&self) -> f64 {
        self.0.iter().sum()
    }

    /// Adds `other` stage by stage.
    pub fn add(&mut self, other: &Split) {
        self.0.iter_mut().zip(other.0).for_each(|(a, b)| *a += b);
    }
}

/// Accumulated stage times of any number of forward calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageTimes {
    /// Per decoder layer.
    pub layers: Vec<Split>,
    /// Outside the layers: the embedding lookup and final norm (`Other`), the output head
    /// (`LmHead`).
    pub head: Split,
    /// Per decoder layer: bytes of routed-expert weights the calls touched (each distinct
    /// expert a call chose, once per call); 0 for dense layers.
    pub routed_bytes: Vec<u64>,
    /// Forward calls and tokens they ran.
    pub calls: u64,
    pub tokens: u64,
}

impl StageTimes {
    /// Empty times for a model of `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        StageTimes {
            layers: vec![Split::default(); n_layers],
            routed_bytes: vec![0; n_layers],
            ..StageTimes::default()
        }
    }

    /// The whole model's split: every layer and the head.
    pub fn total(&self) -> Split {
        let mut t = self.head;
        self.layers.iter().for_each(|l| t.add(l));
        t
    }

    /// All routed-expert bytes touched.
    pub fn total_routed_bytes(&self) -> u64 {
        self.routed_bytes.iter().sum()
    }

    /// Grows the per-layer vectors to `n` layers (a fresh `StageTimes::default()`).
    fn fit(&mut self, n: usize) {
        if self.layers.len() < n {
            self.layers.resize(n, Split::default());
        }
        if self.routed_bytes.len() < n {
            self.routed_bytes.resize(n, 0);
        }
    }
}

/// Where the forward pass is: inside layer `l`, or in the head.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Place {
    Layer(usize),
    Head,
}

/// The laps of one forward call; a no-op without times to fill.
pub(crate) struct StageClock<'t> {
    times: Option<&'t mut StageTimes>,
    last: Option<Instant>,
}

impl<'t> StageClock<'t> {
    /// Starts timing (when `times` is given) a call of `tokens` tokens through `n_layers`.
    pub fn start(times: Option<&'t mut StageTimes>, n_layers: usize, tokens: usize) -> Self {
        let mut times = times;
        if let Some(t) = times.as_deref_mut() {
            t.fit(n_layers);
            t.calls += 1;
            t.tokens += tokens as u64;
        }
        let last = times.as_ref().map(|_| Instant::now());
        StageClock { times, last }
    }

    /// Charges the time since the previous lap to `stage` at `place`.
    #[inline]
    pub fn lap(&mut self, place: Place, stage: Stage) {
        if let (Some(t), Some(last)) = (self.times.as_deref_mut(), self.last.as_mut()) {
            let now = Instant::now();
            let s = now.duration_since(*last).as_secs_f64();
            *last = now;
            let split = match place {
                Place::Layer(l) => &mut t.layers[l],
                Place::Head => &mut t.head,
            };
            split.0[stage.index()] += s;
        }
    }

    /// True when laps are recorded (callers skip bookkeeping that only timing needs).
    pub fn is_on(&self) -> bool {
        self.times.is_some()
    }

    /// Adds `bytes` of routed-expert weights touched in layer `l`.
    pub fn add_routed_bytes(&mut self, l: usize, bytes: u64) {
        if let Some(t) = self.times.as_deref_mut() {
            t.routed_bytes[l] += bytes;
        }
    }
}
