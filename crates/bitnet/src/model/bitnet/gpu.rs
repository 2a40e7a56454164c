//! The model on the GPU backend: uploading its weights, and the forward pass on the device.
//! The steps are those of `layer_forward` (see `crate::gpu::GpuModel`); here the model hands
//! over its weights and the per-call inputs the host computes (embedding rows, RoPE angles).

use crate::gpu::{
    AdapterSummary, Device, Gpu, GpuError, GpuModel, LayerSource, LinearSource, SeqIn, Want,
};

use super::{BatchEntry, BitnetModel, Linear, Logits, ModelError};

impl BitnetModel {
    /// Runs the model on `device` from now on: [`Device::Gpu`] uploads the weights to the best
    /// adapter (a software one included) or fails naming why (an output matrix the device
    /// cannot hold leaves only hidden states, the embedding models' output, to it: logits
    /// are then refused naming why); [`Device::Auto`] does so only
    /// for a hardware GPU, and keeps the CPU otherwise (also when the GPU backend cannot run
    /// this model, with a warning in the log); [`Device::Cpu`] drops any upload. Caches made
    /// before belong to the old device: make new ones with [`BitnetModel::new_cache`].
    pub fn set_device(&mut self, device: Device) -> Result<(), ModelError> {
        self.gpu = None;
        let Some(gpu) = Gpu::open(device)? else {
            return Ok(());
        };
        match self.upload(gpu) {
            // `Auto` keeps the CPU for a model that could not compute logits here.
            Ok(m) if device == Device::Auto && m.no_logits().is_some() => {
                let what = m.no_logits().unwrap_or_default();
                log::warn!("running on the CPU: the GPU backend does not support {what}");
            }
            Ok(m) => self.gpu = Some(m),
            Err(GpuError::Unsupported(what)) if device == Device::Auto => {
                log::warn!("running on the CPU: the GPU backend does not support {what}");
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// The GPU adapter the model runs on, if it runs on one.
    pub fn gpu_adapter(&self) -> Option<AdapterSummary> {
        self.gpu.as_ref().map(|g| g.gpu().adapter().clone())
    }

    /// The memory read bandwidth (GB/s, best of `reps`) of the GPU the model runs on, over a
    /// `bytes`-long buffer (capped at the device's largest binding): what `bench` holds GPU
    /// decode against, as it holds the CPU's against the CPU's probe. `None` on the CPU.
    pub fn gpu_bandwidth(&self, bytes: u64, reps: usize) -> Option<Result<f64, GpuError>> {
        self.gpu
            .as_ref()
            .map(|g| crate::gpu::membw::bandwidth(g.gpu(), bytes, reps))
    }

    fn upload(&self, gpu: std::sync::Arc<Gpu>) -> Result<GpuModel, GpuError> {
        fn linear(lin: &Linear) -> Result<LinearSource<'_>, GpuError> {
            let w = lin.weight.as_ref();
            let (packed, wscale, block_scales) = match w.i2s_file_layout() {
                Some((packed, wscale)) => (packed, wscale, None),
                None => {
                    let (packed, d) = w.i2s_block_layout().ok_or_else(|| {
                        GpuError::Unsupported(format!("{} ternary weights", w.format()))
                    })?;
                    (packed.into(), 1.0, Some(d))
                }
            };
            Ok(LinearSource {
                packed,
                k: w.in_features(),
                rows: w.out_features(),
                wscale,
                block_scales,
                lscale: lin.scale,
                bias: lin.bias.as_deref(),
                norm_in: lin.norm_in.as_deref(),
            })
        }
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let linears = layer
                .linears()
                .into_iter()
                .map(linear)
                .collect::<Result<Vec<_>, _>>()?;
            let Ok(linears) = <[LinearSource<'_>; 7]>::try_from(linears) else {
                return Err(GpuError::Backend("a layer without seven linears".into()));
            };
            layers.push(LayerSource {
                attn_norm: &layer.attn_norm,
                linears,
                attn_sub_norm: layer.attn_sub_norm.as_deref(),
                ffn_norm: &layer.ffn_norm,
                ffn_sub_norm: layer.ffn_sub_norm.as_deref(),
                q_norm: layer.q_norm.as_deref(),
                k_norm: layer.k_norm.as_deref(),
                post_attn_norm: layer.post_attn_norm.as_deref(),
                post_ffn_norm: layer.post_ffn_norm.as_deref(),
            });
        }
        let output = (self.output.format(), self.output.raw());
        GpuModel::upload(gpu, &self.config, layers, output, &self.output_norm)
    }

    /// [`BitnetModel::forward_batch`] on the device (inputs already checked): one pass over
    /// every entry's tokens together, each with its own cache on the device; the host
    /// computes the embedding rows (scaled as the CPU scales them) and RoPE angles and reads
    /// back only what is wanted.
    pub(super) fn forward_batch_gpu(
        &self,
        gpu: &GpuModel,
        batch: &mut [BatchEntry<'_>],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let h = self.config.n_embd;
        let mut x = Vec::new();
        let mut positions = Vec::new();
        let mut seqs = Vec::with_capacity(batch.len());
        for entry in batch.iter() {
            let Some(cache) = entry.cache.device() else {
                return Err(GpuError::Unsupported(
                    "a KV cache made before the model moved to the GPU".into(),
                )
                .into());
            };
            let (pos0, n) = (entry.cache.len(), entry.tokens.len());
            for &t in entry.tokens {
                let at = x.len();
                x.resize(at + h, 0.0);
                self.token_embd.row_to_f32(t as usize, &mut x[at..]);
                if let Some(scale) = self.config.embd_scale {
                    x[at..].iter_mut().for_each(|v| *v *= scale);
                }
            }
            positions.extend(pos0..pos0 + n);
            let want = match entry.logits {
                Logits::Last => Want::Last,
                Logits::All => Want::All,
                Logits::Hidden => Want::Hidden,
            };
            seqs.push(SeqIn {
                cache,
                pos0,
                len: n,
                want,
            });
        }
        let (cos, sin) = self.rope_tables(&self.inv_freq, &positions);
        let local = self
            .inv_freq_local
            .as_ref()
            .map(|f| self.rope_tables(f, &positions));
        let local = local.as_ref().map(|(c, s)| (c.as_slice(), s.as_slice()));
        let out = gpu.forward_batch(&x, &cos, &sin, local, &seqs)?;
        drop(seqs);
        for entry in batch.iter_mut() {
            let len = entry.cache.len() + entry.tokens.len();
            entry.cache.set_len(len);
        }
        Ok(out)
    }
}
