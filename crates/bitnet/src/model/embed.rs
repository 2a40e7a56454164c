//! Text embeddings: a sequence's final hidden states (after the output norm) pooled into one
//! vector and L2-normalised, as sentence-transformers and llama.cpp's `llama-embedding` do it
//! for the BitNet embedding models (Qwen3: last token, which is the appended EOS; Gemma 3:
//! mean).

use super::bitnet::{BatchEntry, BitnetModel, Logits};
use super::config::Pooling;
use super::kv_cache::CacheType;
use super::ModelError;

/// How embeddings are made from the hidden states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbedOptions {
    /// The pooling; `None`: the model's own ([`BitnetModel::default_pooling`]).
    pub pooling: Option<Pooling>,
    /// Divide each vector by its L2 norm (what the embedding models are trained for).
    pub normalize: bool,
    /// Keep only the first `n` dimensions (Matryoshka truncation), before normalising.
    pub dimensions: Option<usize>,
}

impl Default for EmbedOptions {
    fn default() -> EmbedOptions {
        EmbedOptions {
            pooling: None,
            normalize: true,
            dimensions: None,
        }
    }
}

/// Tokens run per batched forward pass: several short texts share one pass (each weight is
/// read once for all of them); a longer text runs alone.
pub const EMBED_BATCH_TOKENS: usize = 512;

impl BitnetModel {
    /// The pooling the model's file declares (`{arch}.pooling_type`); for a file without one,
    /// the last token for a causal model (the only one that sees the whole text) and the mean
    /// for a bidirectional one.
    pub fn default_pooling(&self) -> Pooling {
        let c = self.config();
        match c.pooling {
            Some(p) => p,
            None if c.causal => Pooling::Last,
            None => Pooling::Mean,
        }
    }

    /// One embedding per sequence of token ids, computed in batched forward passes of about
    /// [`EMBED_BATCH_TOKENS`] tokens. With [`Pooling::None`] each result holds every token's
    /// vector, `n_tokens × width`, each normalised on its own.
    ///
    /// Each sequence runs whole in one pass over a cache of its own, so results do not depend
    /// on what it is batched with (bit for bit, as [`BitnetModel::forward_batch`] promises).
    pub fn embed(
        &self,
        sequences: &[&[u32]],
        options: &EmbedOptions,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let c = self.config();
        let pooling = options.pooling.unwrap_or_else(|| self.default_pooling());
        let width = match options.dimensions {
            Some(0) => {
                return Err(ModelError::InvalidOption {
                    option: "dimensions",
                    message: "must be at least 1".into(),
                })
            }
            Some(d) if d > c.n_embd => {
                return Err(ModelError::InvalidOption {
                    option: "dimensions",
                    message: format!("{d} is more than the model's {} dimensions", c.n_embd),
                })
            }
            Some(d) => d,
            None => c.n_embd,
        };
        let mut out = Vec::with_capacity(sequences.len());
        let mut start = 0;
        while start < sequences.len() {
            // A group of sequences whose tokens fit the batch (at least one).
            let mut end = start + 1;
            let mut tokens = sequences[start].len();
            while end < sequences.len() && tokens + sequences[end].len() <= EMBED_BATCH_TOKENS {
                tokens += sequences[end].len();
                end += 1;
            }
            let group = &sequences[start..end];
            let mut caches = group
                .iter()
                .map(|s| self.new_cache(s.len().max(1), CacheType::F32))
                .collect::<Result<Vec<_>, _>>()?;
            let mut batch: Vec<BatchEntry<'_>> = group
                .iter()
                .zip(caches.iter_mut())
                .map(|(s, cache)| BatchEntry {
                    tokens: s,
                    cache,
                    logits: Logits::Hidden,
                })
                .collect();
            for hidden in self.forward_batch(&mut batch)? {
                out.push(pool(&hidden, c.n_embd, pooling, width, options.normalize));
            }
            start = end;
        }
        Ok(out)
    }
}

/// Pools `hidden` (`n × h`, row by row) into one vector (every row for [`Pooling::None`]),
/// keeps its first `width` values and L2-normalises it if asked.
pub fn pool(hidden: &[f32], h: usize, pooling: Pooling, width: usize, normalize: bool) -> Vec<f32> {
    let n = hidden.len() / h.max(1);
    let rows: Vec<Vec<f32>> = match pooling {
        Pooling::None => hidden.chunks_exact(h).map(<[f32]>::to_vec).collect(),
        Pooling::Last => vec![hidden[(n - 1) * h..n * h].to_vec()],
        Pooling::Cls => vec![hidden[..h].to_vec()],
        Pooling::Mean => {
            // Summed in f64: the mean of many rows keeps f32's precision.
            let mut sum = vec![0f64; h];
            for row in hidden.chunks_exact(h) {
                sum.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64);
            }
            vec![sum.iter().map(|s| (s / n as f64) as f32).collect()]
        }
    };
    let mut out = Vec::with_capacity(rows.len() * width);
    for mut row in rows {
        row.truncate(width);
        if normalize {
            l2_normalize(&mut row);
        }
        out.extend_from_slice(&row);
    }
    out
}

/// Divides `v` by its L2 norm (left as it is when the norm is 0), as torch's
/// `F.normalize(eps=1e-12)` does.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let norm = norm.max(1e-12);
    v.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_as_sentence_transformers_does() {
        let hidden = [1.0, 0.0, 3.0, 4.0, 5.0, 8.0];
        assert_eq!(pool(&hidden, 2, Pooling::Last, 2, false), vec![5.0, 8.0]);
        assert_eq!(pool(&hidden, 2, Pooling::Cls, 2, false), vec![1.0, 0.0]);
        assert_eq!(pool(&hidden, 2, Pooling::Mean, 2, false), vec![3.0, 4.0]);
        assert_eq!(pool(&hidden, 2, Pooling::Mean, 2, true), vec![0.6, 0.8]);
        assert_eq!(pool(&hidden, 2, Pooling::Last, 1, true), vec![1.0]);
        assert_eq!(pool(&hidden, 2, Pooling::None, 2, true).len(), 6);
        let mut zero = [0.0, 0.0];
        l2_normalize(&mut zero);
        assert_eq!(zero, [0.0, 0.0]);
    }
}
