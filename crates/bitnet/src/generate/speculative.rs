//! Prompt-lookup (n-gram) speculative decoding: drafts come from the text itself, no draft
//! model. The last few tokens are looked up earlier in the context (the prompt and what was
//! generated); the tokens that followed them there are the draft. One forward pass then runs
//! the sampled token and the draft together, and the sampler walks the rows: each draft token
//! it samples itself is kept, the first it does not ends the draft (its own token is kept
//! instead), and the cache is cut back to what was kept.
//!
//! Lossless: the logits of every position are the ones plain decoding computes (a batched
//! forward pass is bit-identical per position), and the sampler draws once per emitted
//! token, in the same order, from the same state. A run with a seed gives the same tokens
//! with and without speculation.

use std::sync::Arc;

use crate::model::{BitnetModel, CacheType, KvCache, Logits, ModelError};

/// How drafts are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecConfig {
    /// Most tokens drafted per step (llama.cpp's `--draft-max`).
    pub max_draft: usize,
    /// The shortest n-gram looked up: a shorter one matches by chance too often.
    pub min_ngram: usize,
    /// The longest n-gram looked up (the longest match is used first).
    pub max_ngram: usize,
}

impl Default for SpecConfig {
    fn default() -> SpecConfig {
        SpecConfig {
            max_draft: 8,
            min_ngram: 2,
            max_ngram: 4,
        }
    }
}

/// Speculative decoding with a draft model (llama-server's `--model-draft`): a smaller model
/// of the same vocabulary proposes a sequence's next tokens greedily, and one forward pass of
/// the served model verifies them as prompt lookup's drafts are verified (lossless: the same
/// tokens as without it). The draft model keeps its own KV cache per sequence (a
/// [`super::Session`]'s, a scheduler slot's), caught up with the sequence before each draft
/// (in a scheduler at most [`super::SchedulerConfig::prefill_chunk`] tokens a step) and
/// shifted with it. Its weights stay loaded while a scheduler sleeps; its caches do not.
#[derive(Clone)]
pub struct DraftModel {
    /// The draft model (its vocabulary must be the served model's).
    pub model: Arc<BitnetModel>,
    /// Most tokens drafted per step.
    pub max: usize,
    /// Fewest tokens worth verifying: a shorter draft is dropped.
    pub min: usize,
    /// The draft stops at a token the draft model gives less than this probability.
    pub p_min: f32,
}

impl std::fmt::Debug for DraftModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DraftModel")
            .field("max", &self.max)
            .field("min", &self.min)
            .field("p_min", &self.p_min)
            .finish_non_exhaustive()
    }
}

impl DraftModel {
    /// Checks the settings, and that the draft model's vocabulary is `target`'s.
    pub(crate) fn check(&self, target: &BitnetModel) -> Result<(), ModelError> {
        let refuse = |message: String| ModelError::Unsupported {
            file: "draft model".into(),
            message,
        };
        let (ours, theirs) = (target.config().n_vocab, self.model.config().n_vocab);
        if ours != theirs {
            return Err(refuse(format!(
                "its vocabulary has {theirs} tokens, the served model's {ours}: a draft model \
                 must share the served model's vocabulary"
            )));
        }
        if self.max == 0 || !(0.0..=1.0).contains(&self.p_min) {
            return Err(refuse(format!(
                "max {} and p_min {}: max must be at least 1 and p_min a probability, 0 to 1",
                self.max, self.p_min
            )));
        }
        Ok(())
    }
}

/// A draft model's cache for one sequence, and the tokens in it.
pub(crate) struct DraftCache {
    cache: KvCache,
    tokens: Vec<u32>,
}

impl DraftCache {
    pub(crate) fn new(
        config: &DraftModel,
        n_ctx: usize,
        cache_type: CacheType,
    ) -> Result<DraftCache, ModelError> {
        Ok(DraftCache {
            cache: config.model.new_cache(n_ctx, cache_type)?,
            tokens: Vec::new(),
        })
    }

    pub(crate) fn bytes(&self) -> usize {
        self.cache.bytes()
    }

    pub(crate) fn forget(&mut self) {
        self.tokens.clear();
        self.cache.clear();
    }

    /// The served model's context shift, `discarded` tokens after the first `kept` of
    /// `before` (the sequence's tokens before it), done to this cache too when it holds
    /// them; otherwise the next draft runs the shifted sequence again from where they part.
    pub(crate) fn shift(
        &mut self,
        config: &DraftModel,
        before: &[u32],
        kept: usize,
        discarded: usize,
    ) {
        let end = kept + discarded;
        if self.tokens.len() >= end && before.len() >= end && self.tokens[..end] == before[..end] {
            if config
                .model
                .shift_cache(&mut self.cache, kept, discarded)
                .is_ok()
            {
                self.tokens.drain(kept..end);
            } else {
                self.forget();
            }
        }
    }

    /// Up to `limit` tokens to follow `context` and `last` (the sequence so far and the token
    /// about to run): the draft model's greedy choices while each has at least
    /// [`DraftModel::p_min`] probability; none when fewer than [`DraftModel::min`]. The cache
    /// is first cut back to what it shares with the sequence, then caught up, at most `chunk`
    /// tokens a call (no draft until it has caught up).
    pub(crate) fn draft(
        &mut self,
        config: &DraftModel,
        context: &[u32],
        last: u32,
        limit: usize,
        chunk: usize,
    ) -> Vec<u32> {
        let min = config.min.max(1);
        // The sequence and a draft of n run through the draft model but the draft's last
        // token: total + n − 1 positions.
        let total = context.len() + 1;
        let limit = limit
            .min(config.max)
            .min((self.cache.capacity() + 1).saturating_sub(total));
        if limit < min {
            return Vec::new();
        }
        let at = |k: usize| context.get(k).copied().unwrap_or(last);
        // At least `last` runs, for fresh logits.
        let common = self
            .tokens
            .iter()
            .enumerate()
            .take_while(|&(k, &t)| k < total - 1 && t == at(k))
            .count();
        self.cache.truncate(common);
        self.tokens.truncate(common);
        let model = &config.model;
        let upto = total.min(common.saturating_add(chunk.max(1)));
        let fresh: Vec<u32> = (common..upto).map(at).collect();
        let Ok(mut row) = model.forward(&fresh, &mut self.cache, Logits::Last) else {
            // Not expected (these tokens ran in the served model); draft nothing rather than
            // fail the request.
            self.forget();
            return Vec::new();
        };
        self.tokens.extend_from_slice(&fresh);
        if upto < total {
            return Vec::new();
        }
        let mut draft = Vec::with_capacity(limit);
        loop {
            let (token, p) = most_likely(&row);
            // (NaN logits draft nothing.)
            if p.is_nan() || p < config.p_min {
                break;
            }
            draft.push(token);
            if draft.len() >= limit {
                break;
            }
            match model.forward(&[token], &mut self.cache, Logits::Last) {
                Ok(next) => row = next,
                Err(_) => break,
            }
            self.tokens.push(token);
        }
        if draft.len() < min {
            draft.clear();
        }
        draft
    }
}

/// The most likely token of a row of logits, and its probability.
fn most_likely(row: &[f32]) -> (u32, f32) {
    let (best, max) = row
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        });
    let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
    (best as u32, (1.0 / sum) as f32)
}

/// Figures of a speculative run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecStats {
    /// Verification passes run (forward passes with a draft).
    pub drafts: usize,
    /// Tokens drafted.
    pub drafted: usize,
    /// Drafted tokens the sampler kept.
    pub accepted: usize,
}

impl SpecStats {
    /// Accepted drafted tokens per drafted token (0 when none were drafted).
    pub fn acceptance(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }
}

/// The next draft's length after one of `len` tokens kept `kept`: the rejection point + 1, or
/// double the last length after a draft kept whole, at most `max` (drafts that keep failing
/// cost little, drafts that keep holding grow).
pub fn next_draft_len(current: usize, kept: usize, len: usize, max: usize) -> usize {
    if kept == len {
        (current.max(1) * 2).min(max)
    } else {
        (kept + 1).min(max)
    }
}

/// The draft for `context` (the whole sequence so far, its last token the one about to run):
/// the tokens that followed the most recent earlier occurrence of its last n tokens, for the
/// longest n from `max_ngram` down to `min_ngram` that occurs, at most `limit` of them.
pub fn ngram_draft(context: &[u32], config: &SpecConfig, limit: usize) -> Vec<u32> {
    match context.split_last() {
        Some((&last, prefix)) => ngram_draft_after(prefix, last, config, limit),
        None => Vec::new(),
    }
}

/// [`ngram_draft`] for the context `prefix` followed by `last`, as callers hold it (a
/// sequence's cached tokens and the token about to run), without copying the context.
pub fn ngram_draft_after(prefix: &[u32], last: u32, config: &SpecConfig, limit: usize) -> Vec<u32> {
    let limit = limit.min(config.max_draft);
    if limit == 0 {
        return Vec::new();
    }
    let len = prefix.len() + 1;
    let at = |i: usize| if i < prefix.len() { prefix[i] } else { last };
    for n in (config.min_ngram.max(1)..=config.max_ngram).rev() {
        if n >= len {
            continue;
        }
        // The most recent occurrence that ends before the pattern (the last n tokens) does.
        let found = (0..len - n)
            .rev()
            .find(|&start| (0..n).all(|k| at(start + k) == at(len - n + k)));
        if let Some(start) = found {
            // What followed, copied as LZ77 copies: past the end of the context the copy
            // reads its own output, so text repeating with a short period (a loop, a
            // list) drafts its continuation in full.
            let from = start + n;
            let mut draft = Vec::with_capacity(limit);
            for i in 0..limit {
                let j = from + i;
                let t = if j < len { at(j) } else { draft[j - len] };
                draft.push(t);
            }
            return draft;
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_what_followed_the_longest_recent_match() {
        let c = SpecConfig {
            max_draft: 3,
            min_ngram: 2,
            max_ngram: 3,
        };
        // "1 2 3 4 5 ... 1 2 3" → what followed 1 2 3: 4 5 6.
        assert_eq!(
            ngram_draft(&[1, 2, 3, 4, 5, 6, 9, 1, 2, 3], &c, 10),
            vec![4, 5, 6]
        );
        // The most recent occurrence wins.
        assert_eq!(
            ngram_draft(&[7, 8, 1, 7, 8, 2, 7, 8], &c, 10),
            vec![2, 7, 8]
        );
        // Limited by the caller (tokens left) and by max_draft.
        assert_eq!(ngram_draft(&[1, 2, 3, 4, 5, 6, 1, 2], &c, 1), vec![3]);
        // Running into the present, the copy goes on from its own output: a period-2 loop.
        assert_eq!(ngram_draft(&[9, 1, 2, 1, 2, 1, 2], &c, 10), vec![1, 2, 1]);
        assert_eq!(ngram_draft(&[5, 5, 5], &c, 10), vec![5, 5, 5]);
        // Below min_ngram nothing is drafted; nothing to draft at the very end.
        assert!(ngram_draft(&[5, 1, 2, 6, 2], &c, 10).is_empty());
        assert!(ngram_draft(&[1, 2], &c, 10).is_empty());
        assert!(ngram_draft(&[], &c, 10).is_empty());
    }
}
