//! The kernels as operations on device buffers: each records its dispatches into a command
//! encoder (a forward pass submits once). Shapes are the caller's to keep consistent; the
//! model checks them once at upload.

use super::context::{elem_groups, row_groups, Gpu};
use crate::formats::types::{q6_k, q8_0, TensorType};
use crate::model::Activation;

fn bits(v: f32) -> u32 {
    v.to_bits()
}

/// Int8 activations on the device: `n_tokens × width` values four to a word, a scale and
/// `Σ q` per row.
pub(crate) struct Quantized {
    pub q: wgpu::Buffer,
    pub scales: wgpu::Buffer,
    pub qsums: wgpu::Buffer,
}

impl Quantized {
    pub fn new(gpu: &Gpu, n_tokens: usize, width: usize) -> Quantized {
        Quantized {
            q: gpu.buffer((n_tokens * width) as u64),
            scales: gpu.buffer(4 * n_tokens as u64),
            qsums: gpu.buffer(4 * n_tokens as u64),
        }
    }
}

/// How a row is normalized before quantization (the CPU's `norm_quantize`).
#[derive(Clone, Copy)]
pub(crate) struct NormSpec<'a> {
    /// The block's RMSNorm gain, if any.
    pub gain: Option<&'a wgpu::Buffer>,
    pub eps: f32,
    /// The second RMSNorm's epsilon, if there is one: the model's weightless
    /// pre-quantization norm, or a projection's own (`act_gain`).
    pub act_eps: Option<f32>,
    /// The second norm's gains (the BitNet embedding models' per-projection norm); unit
    /// gains when absent.
    pub act_gain: Option<&'a wgpu::Buffer>,
}

/// Quantizes `n_tokens` rows of `n` values of `x` (rows `x_stride` apart) into `out`, rows
/// `width` long (zeros past `n`; `width` a multiple of 4).
#[allow(clippy::too_many_arguments)]
pub(crate) fn quantize(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    x: &wgpu::Buffer,
    x_stride: usize,
    n_tokens: usize,
    n: usize,
    width: usize,
    norm: NormSpec<'_>,
    out: &Quantized,
) {
    let params = [
        n as u32,
        width as u32,
        norm.gain.is_some() as u32,
        norm.act_eps.is_some() as u32,
        bits(norm.eps),
        bits(norm.act_eps.unwrap_or(0.0)),
        x_stride as u32,
        norm.act_gain.is_some() as u32,
    ];
    let gain = norm.gain.unwrap_or(&gpu.dummy);
    let act_gain = norm.act_gain.unwrap_or(&gpu.dummy);
    gpu.dispatch(
        enc,
        &gpu.pipelines.quantize,
        params,
        &[x, gain, &out.q, &out.scales, &out.qsums, act_gain],
        (n_tokens as u32, 1, 1),
    );
}

/// A BitLinear layer on the device: I2_S weights in the file's layout (`rows × k/4` bytes),
/// the per-tensor weight scale (or a scale per 256-value block), the optional output scale (1
/// when absent) and bias.
pub(crate) struct Ternary {
    pub w: wgpu::Buffer,
    pub rows: usize,
    pub k: usize,
    pub wscale: f32,
    pub lscale: f32,
    pub bias: Option<wgpu::Buffer>,
    /// The BitNet embedding models' RMSNorm gains in front of this layer's quantization.
    pub norm_in: Option<wgpu::Buffer>,
    /// A scale per 256-value block (`rows × k/256`, row-major) in place of `wscale`: TQ2_0 and
    /// TQ1_0 weights whose blocks' scales differ.
    pub block_scales: Option<wgpu::Buffer>,
}

impl Ternary {
    /// Uploads I2_S bytes (`rows × k/4`, file layout).
    pub fn upload(
        gpu: &Gpu,
        packed: &[u8],
        k: usize,
        rows: usize,
        wscale: f32,
        lscale: Option<f32>,
        bias: Option<&[f32]>,
    ) -> Ternary {
        Ternary {
            w: gpu.upload(packed),
            rows,
            k,
            wscale,
            lscale: lscale.unwrap_or(1.0),
            bias: bias.map(|b| gpu.upload(b)),
            norm_in: None,
            block_scales: None,
        }
    }

    /// Uploads weights with a scale per 256-value block: the codes as I2_S bytes (`rows ×
    /// k/4`, file layout, TQ2_0's code 3 kept) and `rows × k/256` scales (`k` a multiple of
    /// 256).
    pub fn upload_blocks(
        gpu: &Gpu,
        packed: &[u8],
        block_scales: &[f32],
        k: usize,
        rows: usize,
        lscale: Option<f32>,
        bias: Option<&[f32]>,
    ) -> Ternary {
        Ternary {
            block_scales: Some(gpu.upload(block_scales)),
            ..Ternary::upload(gpu, packed, k, rows, 1.0, lscale, bias)
        }
    }
}

/// `out[t, r] = Σ_k t[r, k] q[t, k] / s_t · wscale (· lscale) (+ bias)` for `n_tokens` rows of
/// `acts` (`k` wide); with block scales `Σ_b d_b Σ_{k∈b} t[r, k] q[t, k]` in place of the
/// scaled sum. `plain`: the integer-loop kernel even where `dot4I8Packed` exists (not for
/// block scales, whose kernel takes `dot4` as the adapter has it).
pub(crate) fn ternary(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    w: &Ternary,
    acts: &Quantized,
    n_tokens: usize,
    out: &wgpu::Buffer,
    plain: bool,
) {
    let pipeline = match (&gpu.pipelines.ternary_dot4, plain) {
        (Some(p), false) => p,
        _ => &gpu.pipelines.ternary_plain,
    };
    let params = [
        (w.k / 16) as u32,
        w.rows as u32,
        (w.k / 4) as u32,
        w.bias.is_some() as u32,
        bits(w.wscale),
        bits(w.lscale),
        0,
        0,
    ];
    let bias = w.bias.as_ref().unwrap_or(&gpu.dummy);
    if let Some(d) = &w.block_scales {
        let params = [
            (w.k / 16) as u32,
            w.rows as u32,
            (w.k / 4) as u32,
            w.bias.is_some() as u32,
            (w.k / 256) as u32,
            bits(w.lscale),
            0,
            0,
        ];
        gpu.dispatch(
            enc,
            &gpu.pipelines.ternary_blocks,
            params,
            &[&w.w, &acts.q, &acts.scales, d, bias, out],
            row_groups(w.rows, n_tokens),
        );
        return;
    }
    gpu.dispatch(
        enc,
        pipeline,
        params,
        &[&w.w, &acts.q, &acts.scales, &acts.qsums, bias, out],
        row_groups(w.rows, n_tokens),
    );
}

/// The output matrix on the device.
pub(crate) enum Dense {
    /// F16 rows, two values to a word.
    F16 { w: wgpu::Buffer },
    /// Q8_0 or Q6_K re-laid: int8 values four to a word, an integer scale per group of
    /// `group`, an f32 scale per block of `block`.
    Blocks {
        q: wgpu::Buffer,
        group_scales: wgpu::Buffer,
        block_scales: wgpu::Buffer,
        block: usize,
        group: usize,
    },
}

/// A dense matrix `rows × k` on the device.
pub(crate) struct DenseMatrix {
    pub m: Dense,
    pub rows: usize,
    pub k: usize,
}

impl DenseMatrix {
    /// Uploads `rows` rows of `k` values stored as `ty` (F16, Q8_0 or Q6_K; others: None).
    pub fn upload(
        gpu: &Gpu,
        ty: TensorType,
        data: &[u8],
        k: usize,
        rows: usize,
    ) -> Option<DenseMatrix> {
        let m = match ty {
            TensorType::F16 if k.is_multiple_of(2) => Dense::F16 {
                w: gpu.upload(&data[..rows * k * 2]),
            },
            TensorType::Q8_0 => {
                let n_blocks = rows * k / q8_0::BLOCK_LEN;
                let blocks = q8_0::blocks(&data[..n_blocks * 34]);
                let mut q = Vec::with_capacity(rows * k);
                let mut d = Vec::with_capacity(n_blocks);
                for b in blocks {
                    q.extend_from_slice(&b.qs);
                    d.push(b.scale());
                }
                Dense::Blocks {
                    q: gpu.upload(&q),
                    group_scales: gpu.upload(&vec![1i32; n_blocks]),
                    block_scales: gpu.upload(&d),
                    block: q8_0::BLOCK_LEN,
                    group: q8_0::BLOCK_LEN,
                }
            }
            TensorType::Q6K => {
                let n_blocks = rows * k / q6_k::BLOCK_LEN;
                let blocks = q6_k::blocks(&data[..n_blocks * 210]);
                let mut q = Vec::with_capacity(rows * k);
                let mut sc = Vec::with_capacity(n_blocks * 16);
                let mut d = Vec::with_capacity(n_blocks);
                for b in blocks {
                    // The codes minus 32, as `values()` gives them: Σ_g sc_g Σ v q is the
                    // CPU's Σ_g sc_g (Σ u q − 32 Σ q), the same integer.
                    q.extend_from_slice(&b.values());
                    sc.extend(b.scales.iter().map(|&s| s as i32));
                    d.push(b.scale());
                }
                Dense::Blocks {
                    q: gpu.upload(&q),
                    group_scales: gpu.upload(&sc),
                    block_scales: gpu.upload(&d),
                    block: q6_k::BLOCK_LEN,
                    group: 16,
                }
            }
            _ => return None,
        };
        Some(DenseMatrix { m, rows, k })
    }
}

/// Scratch for the 8-bit output products: the quantized input rows.
pub(crate) struct DenseScratch {
    pub xq: wgpu::Buffer,
    pub xd: wgpu::Buffer,
}

impl DenseScratch {
    pub fn new(gpu: &Gpu, n_tokens: usize, k: usize) -> DenseScratch {
        DenseScratch {
            xq: gpu.buffer((n_tokens * k) as u64),
            xd: gpu.buffer((4 * n_tokens * k.div_ceil(32)) as u64),
        }
    }
}

/// `out[t, r] = Σ_k m[r, k] x[t, k]` for `n_tokens` f32 rows of `x`.
pub(crate) fn dense(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    m: &DenseMatrix,
    x: &wgpu::Buffer,
    n_tokens: usize,
    scratch: &DenseScratch,
    out: &wgpu::Buffer,
) {
    match &m.m {
        Dense::F16 { w } => gpu.dispatch(
            enc,
            &gpu.pipelines.f16_matmul,
            [m.k as u32, m.rows as u32, 0, 0, 0, 0, 0, 0],
            &[x, w, out],
            row_groups(m.rows, n_tokens),
        ),
        Dense::Blocks {
            q,
            group_scales,
            block_scales,
            block,
            group,
        } => {
            let params = [
                m.k as u32,
                m.rows as u32,
                *block as u32,
                *group as u32,
                0,
                0,
                0,
                0,
            ];
            gpu.dispatch(
                enc,
                &gpu.pipelines.q_quantize,
                params,
                &[x, &scratch.xq, &scratch.xd],
                ((m.k / block) as u32, n_tokens as u32, 1),
            );
            gpu.dispatch(
                enc,
                &gpu.pipelines.q_matmul,
                params,
                &[&scratch.xq, &scratch.xd, q, group_scales, block_scales, out],
                row_groups(m.rows, n_tokens),
            );
        }
    }
}

/// RMSNorm of `n_tokens` rows of `n` (gain `g`, as f32) into `out`; `round_f16`: each result
/// rounded to f16 (the f16 cache mode's input to the output product).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rms_norm(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    x: &wgpu::Buffer,
    g: &wgpu::Buffer,
    n_tokens: usize,
    n: usize,
    eps: f32,
    round_f16: bool,
    out: &wgpu::Buffer,
) {
    gpu.dispatch(
        enc,
        &gpu.pipelines.rms_norm,
        [n as u32, 0, round_f16 as u32, 0, bits(eps), 0, 0, 0],
        &[x, g, out],
        (n_tokens as u32, 1, 1),
    );
}

/// `x += y` over `n` values.
pub(crate) fn add(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    n: usize,
) {
    gpu.dispatch(
        enc,
        &gpu.pipelines.add,
        [n as u32, 0, 0, 0, 0, 0, 0, 0],
        &[x, y],
        elem_groups(n),
    );
}

/// `up *= act(gate)` over `n` values.
pub(crate) fn gate(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    up: &wgpu::Buffer,
    gate: &wgpu::Buffer,
    n: usize,
    activation: Activation,
) {
    let kind = match activation {
        Activation::Relu2 => 0,
        Activation::Silu => 1,
        Activation::GeluTanh => 2,
    };
    gpu.dispatch(
        enc,
        &gpu.pipelines.gate,
        [n as u32, kind, 0, 0, 0, 0, 0, 0],
        &[up, gate],
        elem_groups(n),
    );
}

/// RoPE in place on `n_tokens` rows of `heads` heads of `hd` dims; `table` holds the
/// cosines then the sines, `[n_tokens × hd/2]` each. `interleaved`: pairs (2k, 2k+1), else
/// (k, k + hd/2).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    x: &wgpu::Buffer,
    table: &wgpu::Buffer,
    n_tokens: usize,
    heads: usize,
    hd: usize,
    interleaved: bool,
) {
    let n = n_tokens * heads * hd / 2;
    gpu.dispatch(
        enc,
        &gpu.pipelines.rope,
        [
            n_tokens as u32,
            heads as u32,
            hd as u32,
            interleaved as u32,
            0,
            0,
            0,
            0,
        ],
        &[x, table],
        (n.div_ceil(64) as u32, 1, 1),
    );
}

/// One layer's keys and values for one sequence, `capacity × kv_dim` each.
pub(crate) struct KvLayer {
    pub k: wgpu::Buffer,
    pub v: wgpu::Buffer,
}

/// The shape of an attention call.
#[derive(Clone, Copy)]
pub(crate) struct AttnShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub hd: usize,
    /// The scores' scratch stride: at least the cache's positions.
    pub capacity: usize,
    /// Whether the cache holds f16 (two to a word), else f32.
    pub f16: bool,
    /// The scores' scale (1/√hd, or Gemma's `query_pre_attn_scalar`^-½).
    pub scale: f32,
    /// A sliding-window layer's window (each query sees the last `window` positions up to
    /// its own), 0 for none.
    pub window: usize,
    /// Each query sees the positions up to its own; else the whole sequence, which must be
    /// in this call's rows.
    pub causal: bool,
}

/// Where one sequence's new tokens are: rows `row0 .. row0 + n_tokens` of the batch's
/// activations, at positions `pos0 ..` of its cache.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rows {
    pub row0: usize,
    pub pos0: usize,
    pub n_tokens: usize,
}

/// Writes the key and value rows `rows` of `k` and `v` at their positions in `layer`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn kv_write(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    shape: AttnShape,
    layer: &KvLayer,
    k: &wgpu::Buffer,
    v: &wgpu::Buffer,
    rows: Rows,
) {
    let Rows {
        row0,
        pos0,
        n_tokens,
    } = rows;
    let kv_dim = shape.n_head_kv * shape.hd;
    let n = if shape.f16 {
        n_tokens * kv_dim / 2
    } else {
        n_tokens * kv_dim
    };
    gpu.dispatch(
        enc,
        &gpu.pipelines.kv_write[shape.f16 as usize],
        [
            kv_dim as u32,
            pos0 as u32,
            n_tokens as u32,
            row0 as u32,
            0,
            0,
            0,
            0,
        ],
        &[k, v, &layer.k, &layer.v],
        (n.div_ceil(64) as u32, 1, 1),
    );
}

/// A context shift of one layer: positions `keep .. keep + n` dropped and the `moved` after
/// them moved down by `n`, each key rotated back by RoPE's angle for `n` (`table`: its
/// cosines then its sines, negated, `hd/2` each; `interleaved` as [`rope`]) as the CPU's
/// `shift_cache` does, values unchanged. `tmp_k` and `tmp_v` hold `moved` rows (the kernel
/// cannot read where it writes, nor may a copy overlap itself).
#[allow(clippy::too_many_arguments)]
pub(crate) fn kv_shift(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    layer: &KvLayer,
    (kv_dim, hd, f16, interleaved): (usize, usize, bool, bool),
    (keep, n, moved): (usize, usize, usize),
    table: &wgpu::Buffer,
    (tmp_k, tmp_v): (&wgpu::Buffer, &wgpu::Buffer),
) {
    let row = (kv_dim * if f16 { 2 } else { 4 }) as u64;
    let (src, dst, bytes) = (
        (keep + n) as u64 * row,
        keep as u64 * row,
        moved as u64 * row,
    );
    enc.copy_buffer_to_buffer(&layer.k, src, tmp_k, 0, bytes);
    enc.copy_buffer_to_buffer(&layer.v, src, tmp_v, 0, bytes);
    enc.copy_buffer_to_buffer(tmp_v, 0, &layer.v, dst, bytes);
    let threads = if f16 {
        moved * kv_dim / 2
    } else {
        moved * kv_dim
    };
    gpu.dispatch(
        enc,
        &gpu.pipelines.kv_shift[f16 as usize],
        [
            kv_dim as u32,
            keep as u32,
            moved as u32,
            hd as u32,
            interleaved as u32,
            0,
            0,
            0,
        ],
        &[tmp_k, table, &layer.k],
        elem_groups(threads),
    );
}

/// Attention (as `shape` masks it) of the queries `rows` of `q` over `layer` (which already holds their keys
/// and values), into the same rows of `out`; `scratch` holds `rows × n_head × capacity`
/// scores for every row of the batch (`shape.capacity` at least the cache's).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    shape: AttnShape,
    layer: &KvLayer,
    q: &wgpu::Buffer,
    rows: Rows,
    scratch: &wgpu::Buffer,
    out: &wgpu::Buffer,
) {
    let Rows {
        row0,
        pos0,
        n_tokens,
    } = rows;
    gpu.dispatch(
        enc,
        &gpu.pipelines.attention[shape.f16 as usize],
        [
            shape.n_head as u32,
            (shape.n_head / shape.n_head_kv) as u32,
            shape.hd as u32,
            row0 as u32,
            shape.capacity as u32,
            pos0 as u32,
            n_tokens as u32,
            bits(shape.scale),
            shape.window as u32,
            shape.causal as u32,
            0,
            0,
        ],
        &[q, &layer.k, &layer.v, scratch, out],
        (shape.n_head as u32, n_tokens as u32, 1),
    );
}

/// `f16` bits of a row, for uploading an f16 cache in tests.
#[cfg(test)]
pub(crate) fn f16_bits(x: &[f32]) -> Vec<u16> {
    x.iter()
        .map(|&v| half::f16::from_f32(v).to_bits())
        .collect()
}
