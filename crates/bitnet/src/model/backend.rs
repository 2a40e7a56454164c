//! One transformer block, described once ([`layer_forward`]) over a [`Backend`] that runs
//! each step on whole matrices: the CPU's threads and SIMD kernels (`model::bitnet`), or the
//! GPU's compute shaders (`crate::gpu`, feature `gpu`). A backend is a type parameter, not a
//! trait object: each is compiled into its own copy of the block, with no dispatch per step,
//! so the CPU runs the code it ran before this description was shared.

use super::config::{Activation, Config};

/// One block's weights as a backend holds them: `L` a BitLinear layer, `G` a norm's gains.
/// The sub-norms exist only in the BitNet architectures, the Q/K head norms in Qwen3 and
/// Gemma 3, the post-norms in Gemma 3.
pub(crate) struct LayerWeights<L, G> {
    pub attn_norm: G,
    pub wq: L,
    pub wk: L,
    pub wv: L,
    pub q_norm: Option<G>,
    pub k_norm: Option<G>,
    pub attn_sub_norm: Option<G>,
    pub wo: L,
    pub post_attn_norm: Option<G>,
    pub ffn_norm: G,
    pub w_gate: L,
    pub w_up: L,
    pub ffn_sub_norm: Option<G>,
    pub w_down: L,
    pub post_ffn_norm: Option<G>,
}

/// The block's intermediate matrices (token-major rows), the backend's own buffers.
pub(crate) struct Scratch<'a, R: ?Sized> {
    pub q: &'a mut R,
    pub k: &'a mut R,
    pub v: &'a mut R,
    pub attn: &'a mut R,
    pub proj: &'a mut R,
    pub gate: &'a mut R,
    pub up: &'a mut R,
}

/// The steps of a block, each over every row of the batch at once. A backend knows the batch
/// it runs (its rows, their sequences, positions and caches) and its own scratch (quantized
/// activations, attention scores).
pub(crate) trait Backend {
    /// A BitLinear layer.
    type Linear;
    /// An RMSNorm's gains.
    type Gains;
    /// A matrix of float rows.
    type Rows: ?Sized;
    /// Why a step cannot run (`Infallible` on the CPU, which runs every step).
    type Error;

    /// Quantizes every row of `input` (`width` values each, after the RMSNorm `block_norm`
    /// when given, then the model's weightless pre-quantization norm if it has one) and runs
    /// each layer of `group` on it, writing its output.
    fn project<const N: usize>(
        &mut self,
        input: &Self::Rows,
        width: usize,
        block_norm: Option<&Self::Gains>,
        group: [(&Self::Linear, &mut Self::Rows); N],
    ) -> Result<(), Self::Error>;

    /// RMSNorm of every head of `heads` (rows `width` wide) with `gains` (Qwen3's and
    /// Gemma 3's Q/K norms).
    fn head_norm(
        &mut self,
        heads: &mut Self::Rows,
        width: usize,
        gains: &Self::Gains,
    ) -> Result<(), Self::Error>;

    /// Rotates every head of `q` and `k` by its row's position.
    fn rope(&mut self, q: &mut Self::Rows, k: &mut Self::Rows) -> Result<(), Self::Error>;

    /// Writes `k` and `v` to each row's sequence's cache of layer `l`, then attention of
    /// every query of `q` over its own sequence's cache into `out`.
    fn attend(
        &mut self,
        l: usize,
        q: &Self::Rows,
        k: &Self::Rows,
        v: &Self::Rows,
        out: &mut Self::Rows,
    ) -> Result<(), Self::Error>;

    /// `x += out`, after an RMSNorm of `out`'s rows with `post_norm` when given.
    fn add_residual(
        &mut self,
        x: &mut Self::Rows,
        out: &mut Self::Rows,
        post_norm: Option<&Self::Gains>,
    ) -> Result<(), Self::Error>;

    /// `up *= activation(gate)`, element by element.
    fn gate(
        &mut self,
        activation: Activation,
        gate: &Self::Rows,
        up: &mut Self::Rows,
    ) -> Result<(), Self::Error>;
}

/// One block over the rows `x` (residual stream, updated in place):
///
/// ```text
/// h = RMSNorm(x; attn_norm)
/// q, k, v = Lin(h; Wq), Lin(h; Wk), Lin(h; Wv)     one activation quantization of h
/// q, k = [HeadNorm(q; q_norm)], [HeadNorm(k; k_norm)]
/// q, k = RoPE(q, k); cache k, v
/// o = attention(q, cache)
/// x = x + [PostNorm](Lin([RMSNorm(o; attn_sub_norm)]; Wo))
/// h = RMSNorm(x; ffn_norm)
/// a = act(Lin(h; Wgate)) ⊙ Lin(h; Wup)
/// x = x + [PostNorm](Lin([RMSNorm(a; ffn_sub_norm)]; Wdown))
/// ```
pub(crate) fn layer_forward<B: Backend>(
    b: &mut B,
    c: &Config,
    l: usize,
    layer: &LayerWeights<B::Linear, B::Gains>,
    x: &mut B::Rows,
    s: Scratch<'_, B::Rows>,
) -> Result<(), B::Error> {
    let (h, qd) = (c.n_embd, c.q_dim());
    let Scratch {
        q,
        k,
        v,
        attn,
        proj,
        gate,
        up,
    } = s;

    // Attention.
    let group = [
        (&layer.wq, &mut *q),
        (&layer.wk, &mut *k),
        (&layer.wv, &mut *v),
    ];
    b.project(x, h, Some(&layer.attn_norm), group)?;
    if let Some(g) = &layer.q_norm {
        b.head_norm(q, qd, g)?;
    }
    if let Some(g) = &layer.k_norm {
        b.head_norm(k, c.kv_dim(), g)?;
    }
    b.rope(q, k)?;
    b.attend(l, q, k, v, attn)?;
    b.project(
        attn,
        qd,
        layer.attn_sub_norm.as_ref(),
        [(&layer.wo, &mut *proj)],
    )?;
    b.add_residual(x, proj, layer.post_attn_norm.as_ref())?;

    // Feed-forward: gated activation.
    let group = [(&layer.w_gate, &mut *gate), (&layer.w_up, &mut *up)];
    b.project(x, h, Some(&layer.ffn_norm), group)?;
    b.gate(c.activation, gate, up)?;
    b.project(
        up,
        c.n_ff,
        layer.ffn_sub_norm.as_ref(),
        [(&layer.w_down, &mut *proj)],
    )?;
    b.add_residual(x, proj, layer.post_ffn_norm.as_ref())
}
