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
