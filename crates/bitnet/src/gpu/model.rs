//! The forward pass on the device: the model's weights uploaded once, and the block that
//! `model::backend` describes run by `GpuBackend` as kernels over device buffers, one
//! submission per chunk of tokens, the tokens of a batch's sequences together (each with its
//! own cache). Per call the host sends the new tokens' embedding rows and RoPE angles and
//! reads back only the logits asked for.

use std::sync::{Arc, Mutex};

use super::context::Gpu;
use super::ops::{
    self, AttnShape, DenseMatrix, DenseScratch, KvLayer, NormSpec, Quantized, Rows, Ternary,
};
use super::GpuError;
use crate::formats::types::TensorType;
use crate::model::backend::{layer_forward, Backend, LayerWeights, Scratch};
use crate::model::{Activation, CacheType, Config, RopeStyle};

/// Tokens run per submission (bounds the attention scores' scratch, `chunk × heads × ctx`).
const CHUNK: usize = 128;

/// One BitLinear layer as the model hands it over: I2_S bytes in the file's row layout.
pub(crate) struct LinearSource<'a> {
    pub packed: std::borrow::Cow<'a, [u8]>,
    pub k: usize,
    pub rows: usize,
    pub wscale: f32,
    /// A scale per 256-value block (`rows × k/256`) in place of `wscale`.
    pub block_scales: Option<Vec<f32>>,
    pub lscale: Option<f32>,
    pub bias: Option<&'a [f32]>,
    /// Its own RMSNorm gains in front of the quantization (BitNet embedding models).
    pub norm_in: Option<&'a [f32]>,
}

/// One layer as the model hands it over.
pub(crate) struct LayerSource<'a> {
    pub attn_norm: &'a [f32],
    /// q, k, v, o, gate, up, down.
    pub linears: [LinearSource<'a>; 7],
    pub attn_sub_norm: Option<&'a [f32]>,
    pub ffn_norm: &'a [f32],
    pub ffn_sub_norm: Option<&'a [f32]>,
    pub q_norm: Option<&'a [f32]>,
    pub k_norm: Option<&'a [f32]>,
    pub post_attn_norm: Option<&'a [f32]>,
    pub post_ffn_norm: Option<&'a [f32]>,
}

/// One layer on the device.
type GpuLayer = LayerWeights<Ternary, wgpu::Buffer>;

/// What a sequence of a batch wants back ([`GpuModel::forward_batch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    /// The logits of its last row.
    Last,
    /// The logits of every row.
    All,
    /// Every row's final hidden state after the output norm.
    Hidden,
}

/// One sequence of a batch: `len` rows of the batch's input, at positions `pos0 ..` of
/// `cache`.
pub(crate) struct SeqIn<'a> {
    pub cache: &'a GpuKv,
    pub pos0: usize,
    pub len: usize,
    pub want: Want,
}

/// One sequence's KV cache on the device.
pub(crate) struct GpuKv {
    layers: Vec<KvLayer>,
    f16: bool,
    capacity: usize,
}

/// Device buffers of the forward pass for up to `CHUNK` tokens (the scores' scratch for a
/// cache of `capacity`), kept between calls.
struct Work {
    capacity: usize,
    /// Rows it holds: `CHUNK`, or a bidirectional model's whole batch.
    rows: usize,
    x: wgpu::Buffer,
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    attn: wgpu::Buffer,
    proj: wgpu::Buffer,
    gate: wgpu::Buffer,
    up: wgpu::Buffer,
    /// The head norms' and post-norms' output before it is copied or added back.
    tmp: wgpu::Buffer,
    acts: Quantized,
    scores: wgpu::Buffer,
    /// The rows whose logits (or hidden states) are wanted, gathered.
    gather: wgpu::Buffer,
    normed: wgpu::Buffer,
    dense: DenseScratch,
    logits: wgpu::Buffer,
}

/// A model's weights on the device, and how to run them.
pub(crate) struct GpuModel {
    gpu: Arc<Gpu>,
    c: Config,
    layers: Vec<GpuLayer>,
    /// The output matrix, or why the device cannot hold it: then only hidden states (the
    /// embedding models' output) run here, and logits are refused by that reason.
    output: Result<DenseMatrix, String>,
    output_norm: wgpu::Buffer,
    work: Mutex<Option<Work>>,
}

impl std::fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuModel")
            .field("adapter", self.gpu.adapter())
            .finish_non_exhaustive()
    }
}

/// What of a configuration the device's forward pass does not run, if anything. Every
/// option the CPU's forward pass gains must be refused here until the GPU runs it.
pub(crate) fn unsupported(c: &Config) -> Option<String> {
    if !c.head_dim.is_multiple_of(2) {
        return Some(format!("an odd head dimension ({})", c.head_dim));
    }
    // The activation (exhaustive in `ops::gate`), the embedding scale (the host's rows),
    // sliding windows, per-layer RoPE bases, the attention scale and bidirectional attention
    // (`ops::attention`), and a query width other than the embedding's all run.
    None
}

impl GpuKv {
    /// Layers it holds keys and values for.
    pub(crate) fn n_layer(&self) -> usize {
        self.layers.len()
    }
}

impl GpuModel {
    /// Uploads the weights. `output` is the output matrix: its type, bytes, rows.
    pub(crate) fn upload(
        gpu: Arc<Gpu>,
        c: &Config,
        layers: Vec<LayerSource<'_>>,
        output: (TensorType, &[u8]),
        output_norm: &[f32],
    ) -> Result<GpuModel, GpuError> {
        if let Some(what) = unsupported(c) {
            return Err(GpuError::Unsupported(what));
        }
        let (ty, bytes) = output;
        let output = if bytes.len() as u64 > gpu.max_binding() {
            Err(format!(
                "an output matrix of {} bytes (the device binds at most {})",
                bytes.len(),
                gpu.max_binding()
            ))
        } else {
            DenseMatrix::upload(&gpu, ty, bytes, c.n_embd, c.n_vocab)
                .ok_or_else(|| format!("a {ty} output matrix"))
        };
        let mut uploaded = Vec::with_capacity(layers.len());
        for layer in layers {
            let [q, k, v, o, g, u, d] = layer.linears.map(|l| {
                let mut t = match &l.block_scales {
                    Some(d) => {
                        Ternary::upload_blocks(&gpu, &l.packed, d, l.k, l.rows, l.lscale, l.bias)
                    }
                    None => {
                        Ternary::upload(&gpu, &l.packed, l.k, l.rows, l.wscale, l.lscale, l.bias)
                    }
                };
                t.norm_in = l.norm_in.map(|n| gpu.upload(n));
                t
            });
            uploaded.push(GpuLayer {
                attn_norm: gpu.upload(layer.attn_norm),
                wq: q,
                wk: k,
                wv: v,
                attn_sub_norm: layer.attn_sub_norm.map(|n| gpu.upload(n)),
                wo: o,
                ffn_norm: gpu.upload(layer.ffn_norm),
                w_gate: g,
                w_up: u,
                ffn_sub_norm: layer.ffn_sub_norm.map(|n| gpu.upload(n)),
                w_down: d,
                q_norm: layer.q_norm.map(|n| gpu.upload(n)),
                k_norm: layer.k_norm.map(|n| gpu.upload(n)),
                post_attn_norm: layer.post_attn_norm.map(|n| gpu.upload(n)),
                post_ffn_norm: layer.post_ffn_norm.map(|n| gpu.upload(n)),
            });
        }
        let model = GpuModel {
            output_norm: gpu.upload(output_norm),
            gpu,
            c: c.clone(),
            layers: uploaded,
            output,
            work: Mutex::new(None),
        };
        model.gpu.submit(model.gpu.encoder())?;
        Ok(model)
    }

    /// Why the device cannot compute logits (its output matrix), if it cannot.
    pub(crate) fn no_logits(&self) -> Option<&str> {
        self.output.as_ref().err().map(String::as_str)
    }

    /// The device.
    pub(crate) fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// A cache of `capacity` positions on the device.
    pub(crate) fn new_cache(&self, capacity: usize, ty: CacheType) -> Result<GpuKv, GpuError> {
        let f16 = ty == CacheType::F16;
        let bytes = (capacity * self.c.kv_dim() * if f16 { 2 } else { 4 }) as u64;
        if bytes > self.gpu.max_binding() {
            return Err(GpuError::Unsupported(format!(
                "a KV cache of {capacity} positions ({bytes} bytes per layer; the device binds \
                 at most {})",
                self.gpu.max_binding()
            )));
        }
        let layers = (0..self.c.n_layer)
            .map(|_| KvLayer {
                k: self.gpu.buffer(bytes),
                v: self.gpu.buffer(bytes),
            })
            .collect();
        self.gpu.submit(self.gpu.encoder())?;
        Ok(GpuKv {
            layers,
            f16,
            capacity,
        })
    }

    /// A context shift of `cache` (llama.cpp's): positions `keep .. keep + n` of the `len`
    /// cached are dropped and the later ones moved down, each key rotated back by the angles
    /// whose cosines and (negated) sines are `cos` and `sin` (`head_dim/2` each: the CPU's
    /// table for `n`), values unchanged; one submission for every layer.
    pub(crate) fn shift_cache(
        &self,
        cache: &GpuKv,
        (keep, n, len): (usize, usize, usize),
        cos: &[f32],
        sin: &[f32],
    ) -> Result<(), GpuError> {
        let moved = len.saturating_sub(keep + n);
        if n == 0 || moved == 0 {
            return Ok(());
        }
        let (g, c) = (&*self.gpu, &self.c);
        let kv_dim = c.kv_dim();
        let bytes = (moved * kv_dim * if cache.f16 { 2 } else { 4 }) as u64;
        let (tmp_k, tmp_v) = (g.buffer(bytes), g.buffer(bytes));
        let mut table = cos.to_vec();
        table.extend_from_slice(sin);
        let table = g.upload(&table);
        let shape = (
            kv_dim,
            c.head_dim,
            cache.f16,
            c.rope_style == RopeStyle::Interleaved,
        );
        let mut enc = g.encoder();
        for layer in &cache.layers {
            let tmp = (&tmp_k, &tmp_v);
            ops::kv_shift(g, &mut enc, layer, shape, (keep, n, moved), &table, tmp);
        }
        g.submit(enc)
    }

    fn work(&self, capacity: usize, rows: usize) -> Work {
        let c = &self.c;
        let g = &self.gpu;
        let n = rows as u64;
        let qd = c.q_dim() as u64;
        let (h, kv, ff, v) = (
            c.n_embd as u64,
            c.kv_dim() as u64,
            c.n_ff as u64,
            c.n_vocab as u64,
        );
        let widest = self
            .layers
            .iter()
            .flat_map(|l| [l.wq.k, l.wo.k, l.w_gate.k, l.w_down.k])
            .max()
            .unwrap_or(0)
            .max(c.n_embd.max(c.n_ff));
        Work {
            capacity,
            rows,
            x: g.buffer(4 * n * h),
            q: g.buffer(4 * n * qd),
            k: g.buffer(4 * n * kv),
            v: g.buffer(4 * n * kv),
            attn: g.buffer(4 * n * qd),
            proj: g.buffer(4 * n * h),
            gate: g.buffer(4 * n * ff),
            up: g.buffer(4 * n * ff),
            tmp: g.buffer(4 * n * h.max(qd)),
            acts: Quantized::new(g, rows, widest),
            scores: g.buffer(4 * n * c.n_head as u64 * capacity as u64),
            gather: g.buffer(4 * n * h),
            normed: g.buffer(4 * n * h),
            dense: DenseScratch::new(g, rows, c.n_embd),
            logits: g.buffer(4 * n * v),
        }
    }

    /// Runs one forward pass over several sequences at once (`serve`'s continuous batching):
    /// `x` holds every sequence's new embedding rows, `seqs` in order (`n × n_embd` in all),
    /// with RoPE's `cos` and `sin` for each row (`n × head_dim/2` each; `local` those of the
    /// sliding-window layers where their base differs). The rows go through the layers
    /// together, in chunks of at most `CHUNK` (all at once for a model without a causal mask,
    /// whose queries see their whole sequence), so each weight is read once per chunk for all
    /// sequences; each sequence's keys and values go to its own cache and its
    /// queries attend only over it. Returns what each sequence wants: the logits of its last
    /// row or of every row, or its rows' final hidden states after the output norm.
    ///
    /// A sequence's results do not depend on the rest of the batch: the quantization, the
    /// products and the norms work row by row and attention per (row, head).
    pub(crate) fn forward_batch(
        &self,
        x: &[f32],
        cos: &[f32],
        sin: &[f32],
        local: Option<(&[f32], &[f32])>,
        seqs: &[SeqIn<'_>],
    ) -> Result<Vec<Vec<f32>>, GpuError> {
        let (h, half) = (self.c.n_embd, self.c.head_dim / 2);
        let n = x.len() / h;
        if seqs.iter().map(|s| s.len).sum::<usize>() != n
            || cos.len() != n * half
            || local.is_some_and(|(c, _)| c.len() != n * half)
        {
            return Err(GpuError::Backend(
                "a batch whose rows do not match its sequences".into(),
            ));
        }
        // Each chunk's rows: at most `CHUNK`; without a causal mask whole sequences only (as
        // many as fit, a longer one alone), since a query sees its sequence's later keys.
        let mut lens = Vec::new();
        if self.c.causal {
            lens.extend((0..n).step_by(CHUNK).map(|s| CHUNK.min(n - s)));
        } else {
            let mut cur = 0;
            for seq in seqs {
                if cur > 0 && cur + seq.len > CHUNK {
                    lens.push(cur);
                    cur = 0;
                }
                cur += seq.len;
            }
            if cur > 0 {
                lens.push(cur);
            }
        }
        let chunk_rows = lens.iter().copied().max().unwrap_or(0).max(CHUNK);
        // One workgroup per row (a head norm's: per head) in one dimension of a dispatch.
        if chunk_rows * self.c.n_head.max(1) > 65535 {
            return Err(GpuError::Unsupported(format!(
                "a sequence of {chunk_rows} tokens without a causal mask (at most {} here)",
                65535 / self.c.n_head.max(1)
            )));
        }
        let capacity = seqs.iter().map(|s| s.cache.capacity).max().unwrap_or(0);
        let mut guard = self.work.lock().unwrap_or_else(|p| p.into_inner());
        if guard
            .as_ref()
            .is_none_or(|w| w.capacity < capacity || w.rows < chunk_rows)
        {
            let rows = chunk_rows.max(guard.as_ref().map_or(0, |w| w.rows));
            *guard = Some(self.work(capacity, rows));
        }
        let Some(work) = guard.as_mut() else {
            return Err(GpuError::Backend("no work buffers".into()));
        };
        // The sequence of every row, and its index in that sequence.
        let owner: Vec<(usize, usize)> = seqs
            .iter()
            .enumerate()
            .flat_map(|(s, seq)| (0..seq.len).map(move |i| (s, i)))
            .collect();
        let mut out = vec![Vec::new(); seqs.len()];
        let mut start = 0;
        for len in lens {
            // Each sequence's run of rows in this chunk (a long prompt spans chunks: its
            // later rows attend over what the earlier chunks wrote to its cache).
            let mut spans: Vec<(usize, Rows)> = Vec::new();
            for (r, &(s, i)) in owner[start..start + len].iter().enumerate() {
                match spans.last_mut() {
                    Some((last, rows)) if *last == s => rows.n_tokens += 1,
                    _ => spans.push((
                        s,
                        Rows {
                            row0: r,
                            pos0: seqs[s].pos0 + i,
                            n_tokens: 1,
                        },
                    )),
                }
            }
            let rows = start * half..(start + len) * half;
            let table = |cos: &[f32], sin: &[f32]| {
                let mut table = cos[rows.clone()].to_vec();
                table.extend_from_slice(&sin[rows.clone()]);
                table
            };
            let global = table(cos, sin);
            let local = local.map(|(cos, sin)| table(cos, sin));
            self.chunk(
                &mut *work,
                &x[start * h..(start + len) * h],
                (&global, local.as_deref()),
                &spans,
                seqs,
                &mut out,
            )?;
            start += len;
        }
        Ok(out)
    }

    /// One chunk of a batch: `spans` are its sequences' runs of rows; appends what each
    /// sequence wants of these rows to `out`.
    fn chunk(
        &self,
        w: &mut Work,
        x: &[f32],
        tables: (&[f32], Option<&[f32]>),
        spans: &[(usize, Rows)],
        seqs: &[SeqIn<'_>],
        out: &mut [Vec<f32>],
    ) -> Result<(), GpuError> {
        let (g, c) = (&*self.gpu, &self.c);
        let h = c.n_embd;
        let n = x.len() / h;
        g.queue.write_buffer(&w.x, 0, bytemuck::cast_slice(x));
        let table = g.upload(tables.0);
        let local = tables.1.map(|t| g.upload(t));
        let mut enc = g.encoder();
        let Work {
            capacity,
            x: wx,
            q,
            k,
            v,
            attn,
            proj,
            gate,
            up,
            tmp,
            acts,
            scores,
            ..
        } = &mut *w;
        let mut gpu = GpuBackend {
            g,
            c,
            enc: &mut enc,
            n,
            acts,
            scores,
            tmp,
            capacity: *capacity,
            table: &table,
            spans,
            seqs,
        };
        for (l, layer) in self.layers.iter().enumerate() {
            let is_local = c.sliding_window.as_ref().is_some_and(|w| w.is_local(l));
            gpu.table = match &local {
                Some(local) if is_local => local,
                _ => &table,
            };
            let scratch = Scratch {
                q,
                k,
                v,
                attn,
                proj,
                gate,
                up,
            };
            layer_forward(&mut gpu, c, l, layer, wx, scratch)?;
        }
        // The rows wanted back, in three groups: hidden states, logits after an f32 cache,
        // logits after an f16 one (whose normed rows are rounded to f16 first, as the CPU's
        // f16 mode does): (sequence, row in the chunk).
        let mut groups: [Vec<(usize, usize)>; 3] = Default::default();
        for &(s, rows) in spans {
            let seq = &seqs[s];
            let end = rows.row0 + rows.n_tokens;
            let wanted = match seq.want {
                Want::All | Want::Hidden => rows.row0..end,
                // Its last row, if this chunk holds it.
                Want::Last if rows.pos0 + rows.n_tokens == seq.pos0 + seq.len => end - 1..end,
                Want::Last => end..end,
            };
            let group = match seq.want {
                Want::Hidden => 0,
                Want::All | Want::Last => 1 + seq.cache.f16 as usize,
            };
            groups[group].extend(wanted.map(|r| (s, r)));
        }
        let mut pending = Some(enc);
        for (group, rows) in groups.iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let mut enc = pending.take().unwrap_or_else(|| g.encoder());
            // Gathered into consecutive rows, one copy per run of consecutive rows.
            let row_bytes = (4 * h) as u64;
            let mut i = 0;
            while i < rows.len() {
                let mut j = i + 1;
                while j < rows.len() && rows[j].1 == rows[j - 1].1 + 1 {
                    j += 1;
                }
                let (src, dst) = (rows[i].1 as u64 * row_bytes, i as u64 * row_bytes);
                enc.copy_buffer_to_buffer(&w.x, src, &w.gather, dst, (j - i) as u64 * row_bytes);
                i = j;
            }
            let k = rows.len();
            let round = group == 2;
            let e = &mut enc;
            let gain = &self.output_norm;
            ops::rms_norm(g, e, &w.gather, gain, k, h, c.rms_eps, round, &w.normed);
            let (data, width): (Vec<f32>, usize) = if group == 0 {
                (g.read(enc, &w.normed, k * h)?, h)
            } else {
                let output = self
                    .output
                    .as_ref()
                    .map_err(|w| GpuError::Unsupported(w.clone()))?;
                ops::dense(g, e, output, &w.normed, k, &w.dense, &w.logits);
                (g.read(enc, &w.logits, k * c.n_vocab)?, c.n_vocab)
            };
            for (&(s, _), row) in rows.iter().zip(data.chunks_exact(width)) {
                out[s].extend_from_slice(row);
            }
        }
        if let Some(enc) = pending {
            g.submit(enc)?;
        }
        Ok(())
    }
}

/// The device's steps of a block (`model::backend`): each records its kernels into one
/// command encoder, over the `n` rows of a chunk whose sequences' runs are `spans`.
struct GpuBackend<'a> {
    g: &'a Gpu,
    c: &'a Config,
    enc: &'a mut wgpu::CommandEncoder,
    n: usize,
    acts: &'a Quantized,
    scores: &'a wgpu::Buffer,
    tmp: &'a wgpu::Buffer,
    /// The scores' row stride: the work buffers' capacity, at least every cache's.
    capacity: usize,
    /// RoPE's cosines then sines for every row.
    table: &'a wgpu::Buffer,
    spans: &'a [(usize, Rows)],
    seqs: &'a [SeqIn<'a>],
}

impl Backend for GpuBackend<'_> {
    type Linear = Ternary;
    type Gains = wgpu::Buffer;
    type Rows = wgpu::Buffer;
    type Error = GpuError;

    fn project<const N: usize>(
        &mut self,
        input: &wgpu::Buffer,
        width: usize,
        block_norm: Option<&wgpu::Buffer>,
        group: [(&Ternary, &mut wgpu::Buffer); N],
    ) -> Result<(), GpuError> {
        let norm = NormSpec {
            gain: block_norm,
            eps: self.c.rms_eps,
            act_eps: self.c.act_norm_eps,
            act_gain: None,
        };
        let (g, e, n) = (self.g, &mut *self.enc, self.n);
        if group.iter().all(|(lin, _)| lin.norm_in.is_none()) {
            let k = group[0].0.k;
            ops::quantize(g, e, input, width, n, width, k, norm, self.acts);
            for (lin, out) in group {
                ops::ternary(g, e, lin, self.acts, n, out, false);
            }
            return Ok(());
        }
        // As the CPU: each projection quantizes its input after its own norm, which takes
        // the place of the weightless one.
        for (lin, out) in group {
            let norm = match &lin.norm_in {
                Some(gains) => NormSpec {
                    act_eps: Some(self.c.rms_eps),
                    act_gain: Some(gains),
                    ..norm
                },
                None => norm,
            };
            ops::quantize(g, e, input, width, n, width, lin.k, norm, self.acts);
            ops::ternary(g, e, lin, self.acts, n, out, false);
        }
        Ok(())
    }

    fn head_norm(
        &mut self,
        heads: &mut wgpu::Buffer,
        width: usize,
        gains: &wgpu::Buffer,
    ) -> Result<(), GpuError> {
        // Every head a row; the kernel cannot write where it reads, so through `tmp`.
        let (g, c) = (self.g, self.c);
        let rows = self.n * width / c.head_dim;
        let e = &mut *self.enc;
        ops::rms_norm(
            g, e, heads, gains, rows, c.head_dim, c.rms_eps, false, self.tmp,
        );
        e.copy_buffer_to_buffer(self.tmp, 0, heads, 0, (4 * self.n * width) as u64);
        Ok(())
    }

    fn rope(&mut self, q: &mut wgpu::Buffer, k: &mut wgpu::Buffer) -> Result<(), GpuError> {
        let (g, e, c, n) = (self.g, &mut *self.enc, self.c, self.n);
        let interleaved = c.rope_style == RopeStyle::Interleaved;
        ops::rope(g, e, q, self.table, n, c.n_head, c.head_dim, interleaved);
        ops::rope(g, e, k, self.table, n, c.n_head_kv, c.head_dim, interleaved);
        Ok(())
    }

    fn attend(
        &mut self,
        l: usize,
        q: &wgpu::Buffer,
        k: &wgpu::Buffer,
        v: &wgpu::Buffer,
        out: &mut wgpu::Buffer,
    ) -> Result<(), GpuError> {
        let (g, e, c) = (self.g, &mut *self.enc, self.c);
        // As the CPU's `attention`: a sliding-window layer's queries see the last `window`
        // positions.
        let window = c
            .sliding_window
            .as_ref()
            .filter(|w| w.is_local(l))
            .map(|w| w.window.max(1));
        for &(s, rows) in self.spans {
            let cache = self.seqs[s].cache;
            let shape = AttnShape {
                n_head: c.n_head,
                n_head_kv: c.n_head_kv,
                hd: c.head_dim,
                capacity: self.capacity,
                f16: cache.f16,
                scale: c.attn_scale,
                window: window.unwrap_or(0),
                causal: c.causal,
            };
            let kvl = &cache.layers[l];
            ops::kv_write(g, e, shape, kvl, k, v, rows);
            ops::attention(g, e, shape, kvl, q, rows, self.scores, out);
        }
        Ok(())
    }

    fn add_residual(
        &mut self,
        x: &mut wgpu::Buffer,
        out: &mut wgpu::Buffer,
        post_norm: Option<&wgpu::Buffer>,
    ) -> Result<(), GpuError> {
        let (g, c, n) = (self.g, self.c, self.n);
        let Some(gains) = post_norm else {
            ops::add(g, self.enc, x, out, n * c.n_embd);
            return Ok(());
        };
        let e = &mut *self.enc;
        ops::rms_norm(g, e, out, gains, n, c.n_embd, c.rms_eps, false, self.tmp);
        ops::add(g, e, x, self.tmp, n * c.n_embd);
        Ok(())
    }

    fn gate(
        &mut self,
        activation: Activation,
        gate: &wgpu::Buffer,
        up: &mut wgpu::Buffer,
    ) -> Result<(), GpuError> {
        // `ops::gate` matches every activation: a new one gets a kernel before it compiles.
        ops::gate(self.g, self.enc, up, gate, self.n * self.c.n_ff, activation);
        Ok(())
    }
}
