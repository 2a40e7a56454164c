//! Byte-level BPE (GPT-2 style) over raw bytes.
//!
//! Vocabulary strings are stored in the GPT-2 "byte-level" alphabet (each byte shown as a
//! printable character, space as `Ġ`, newline as `Ċ`). We map them back to bytes once at load
//! time, so encoding works on the input's own bytes: a word's initial symbols are its bytes'
//! ids, and merges are looked up by id pair.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;

use rustc_hash::FxHashMap;

/// GPT-2's `bytes_to_unicode`: the printable character that stands for each byte.
pub(crate) fn byte_to_char(b: u8) -> char {
    BYTE_CHARS[b as usize]
}

/// The inverse of `byte_to_char`, if `c` stands for a byte.
pub fn char_to_byte(c: char) -> Option<u8> {
    let c = c as u32;
    match c {
        0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => Some(c as u8),
        0x100..=0x143 => Some(SHIFTED[(c - 0x100) as usize]),
        _ => None,
    }
}

/// A vocabulary string in the byte-level alphabet, as the bytes it stands for; `None` when it
/// has a character outside that alphabet.
pub(crate) fn unmap_token(token: &str) -> Option<Vec<u8>> {
    token.chars().map(char_to_byte).collect()
}

const fn printable(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// `bytes_to_unicode`: printable bytes stand for themselves; the other 68 get U+0100.. in order.
static BYTE_CHARS: [char; 256] = {
    let mut t = ['\0'; 256];
    let mut n = 0u32;
    let mut b = 0usize;
    while b < 256 {
        t[b] = if printable(b as u8) {
            match char::from_u32(b as u32) {
                Some(c) => c,
                None => '\0',
            }
        } else {
            let c = match char::from_u32(0x100 + n) {
                Some(c) => c,
                None => '\0',
            };
            n += 1;
            c
        };
        b += 1;
    }
    t
};

/// The bytes that U+0100..=U+0143 stand for.
static SHIFTED: [u8; 68] = {
    let mut t = [0u8; 68];
    let mut n = 0usize;
    let mut b = 0usize;
    while b < 256 {
        if !printable(b as u8) {
            t[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    t
};

/// Words with more symbols than this merge through a heap instead of repeated scans.
const SCAN_LIMIT: usize = 32;
/// The per-word cache stops growing at this many entries.
const CACHE_CAPACITY: usize = 100_000;

/// Merged words by their bytes.
type WordCache = FxHashMap<Box<[u8]>, Box<[u32]>>;

/// The BPE model: byte ids, whole-word ids, merge ranks, and a cache of merged words.
pub(crate) struct Bpe {
    /// The id of each single byte.
    byte_ids: [u32; 256],
    /// Every ordinary token by its bytes (for `ignore_merges` and single-token words).
    words: FxHashMap<Box<[u8]>, u32>,
    /// `(left << 32 | right)` → (rank, merged id).
    merges: FxHashMap<u64, (u32, u32)>,
    /// Hugging Face's `ignore_merges`: a word that is itself a token is emitted as it is.
    ignore_merges: bool,
    cache: Mutex<WordCache>,
}

/// Why a BPE model could not be built.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BpeBuildError {
    /// No token stands for this byte.
    MissingByte(u8),
    /// Merge `index` names a token that is not in the vocabulary (or its result isn't).
    UnknownMergeToken { index: usize, token: String },
}

impl Bpe {
    /// `tokens`: each ordinary token's bytes with its id. `merges`: pairs of vocabulary
    /// strings (byte-level alphabet) in rank order, with their index in the file.
    pub(crate) fn new<'m>(
        tokens: impl Iterator<Item = (Vec<u8>, u32)>,
        by_string: &FxHashMap<&str, u32>,
        merges: impl Iterator<Item = (usize, &'m str, &'m str)>,
        ignore_merges: bool,
    ) -> Result<Bpe, BpeBuildError> {
        let mut words: FxHashMap<Box<[u8]>, u32> = FxHashMap::default();
        for (bytes, id) in tokens {
            // The first id wins if two tokens have the same bytes, as a dictionary would.
            words.entry(bytes.into_boxed_slice()).or_insert(id);
        }
        let mut byte_ids = [0u32; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = *words
                .get(&[b as u8][..])
                .ok_or(BpeBuildError::MissingByte(b as u8))?;
        }
        let mut merge_map: FxHashMap<u64, (u32, u32)> = FxHashMap::default();
        let mut merged = String::new();
        for (rank, (index, left, right)) in merges.enumerate() {
            let id_of = |token: &str| {
                by_string
                    .get(token)
                    .copied()
                    .ok_or_else(|| BpeBuildError::UnknownMergeToken {
                        index,
                        token: token.to_string(),
                    })
            };
            let (a, b) = (id_of(left)?, id_of(right)?);
            merged.clear();
            merged.push_str(left);
            merged.push_str(right);
            let m = id_of(&merged)?;
            // A pair listed twice keeps its first (best) rank.
            merge_map.entry(pair(a, b)).or_insert((rank as u32, m));
        }
        Ok(Bpe {
            byte_ids,
            words,
            merges: merge_map,
            ignore_merges,
            cache: Mutex::new(FxHashMap::default()),
        })
    }

    /// A handle for encoding many words: holds the cache for its lifetime, or works without
    /// one when another thread is using it.
    pub(crate) fn session(&self) -> BpeSession<'_> {
        BpeSession {
            bpe: self,
            cache: self.cache.try_lock().ok(),
            scratch: Vec::new(),
        }
    }

    #[inline]
    fn merge(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        self.merges.get(&pair(a, b)).copied()
    }

    /// Merges `ids` in place: always the pair of lowest rank, leftmost first among equals.
    fn merge_word(&self, ids: &mut Vec<u32>) {
        if ids.len() > SCAN_LIMIT {
            self.merge_word_heap(ids);
            return;
        }
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..ids.len().saturating_sub(1) {
                if let Some((rank, id)) = self.merge(ids[i], ids[i + 1]) {
                    if best.is_none_or(|(r, _, _)| rank < r) {
                        best = Some((rank, i, id));
                    }
                }
            }
            let Some((_, i, id)) = best else { break };
            ids[i] = id;
            ids.remove(i + 1);
        }
    }

    /// The same merges in O(n log n), for long words (runs of one character, long numbers of
    /// punctuation): a heap of candidate pairs keyed by (rank, position), stale ones skipped.
    fn merge_word_heap(&self, ids: &mut Vec<u32>) {
        const NONE: usize = usize::MAX;
        let n = ids.len();
        let mut next: Vec<usize> = (1..=n).map(|j| if j < n { j } else { NONE }).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.checked_sub(1).unwrap_or(NONE)).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        for i in 0..n.saturating_sub(1) {
            if let Some((rank, _)) = self.merge(ids[i], ids[i + 1]) {
                heap.push(Reverse((rank, i)));
            }
        }
        while let Some(Reverse((rank, i))) = heap.pop() {
            let j = next[i];
            if !alive[i] || j == NONE {
                continue;
            }
            let new = match self.merge(ids[i], ids[j]) {
                Some((r, new)) if r == rank => new,
                _ => continue,
            };
            ids[i] = new;
            alive[j] = false;
            next[i] = next[j];
            if next[j] != NONE {
                prev[next[j]] = i;
            }
            if prev[i] != NONE {
                if let Some((r, _)) = self.merge(ids[prev[i]], new) {
                    heap.push(Reverse((r, prev[i])));
                }
            }
            if next[i] != NONE {
                if let Some((r, _)) = self.merge(new, ids[next[i]]) {
                    heap.push(Reverse((r, i)));
                }
            }
        }
        let mut w = 0;
        for i in 0..n {
            if alive[i] {
                ids[w] = ids[i];
                w += 1;
            }
        }
        ids.truncate(w);
    }
}

#[inline]
fn pair(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

/// Encoding state for one call: the cache lock (if we got it) and a scratch buffer.
pub(crate) struct BpeSession<'a> {
    bpe: &'a Bpe,
    cache: Option<std::sync::MutexGuard<'a, WordCache>>,
    scratch: Vec<u32>,
}

impl BpeSession<'_> {
    /// Appends the ids of one pre-tokenized word.
    #[inline]
    pub(crate) fn encode_word(&mut self, word: &[u8], out: &mut Vec<u32>) {
        let bpe = self.bpe;
        if let [b] = word {
            out.push(bpe.byte_ids[*b as usize]);
            return;
        }
        if bpe.ignore_merges {
            if let Some(&id) = bpe.words.get(word) {
                out.push(id);
                return;
            }
        }
        if let Some(cache) = &self.cache {
            if let Some(ids) = cache.get(word) {
                out.extend_from_slice(ids);
                return;
            }
        }
        self.scratch.clear();
        self.scratch
            .extend(word.iter().map(|&b| bpe.byte_ids[b as usize]));
        bpe.merge_word(&mut self.scratch);
        out.extend_from_slice(&self.scratch);
        if let Some(cache) = &mut self.cache {
            if cache.len() < CACHE_CAPACITY {
                cache.insert(word.into(), self.scratch.as_slice().into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet_round_trips() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'\t'), 'ĉ');
        assert_eq!(byte_to_char(b'A'), 'A');
        assert_eq!(byte_to_char(0xAD), 'Ń');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(char_to_byte(' '), None);
        assert_eq!(unmap_token("Ġworld"), Some(b" world".to_vec()));
        let mapped: String = "é\n".bytes().map(byte_to_char).collect();
        assert_eq!(mapped, "Ã©Ċ");
    }

    /// A toy vocabulary: all bytes plus merges over `a`, `b`, `c`.
    fn toy() -> Bpe {
        let mut strings: Vec<String> = (0..=255u8).map(|b| byte_to_char(b).to_string()).collect();
        for s in ["ab", "bc", "abc", "aa", "aaaa", "cc"] {
            strings.push(s.to_string());
        }
        let by_string: FxHashMap<&str, u32> = strings
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i as u32))
            .collect();
        let merges = [
            ("b", "c"),
            ("a", "b"),
            ("a", "a"),
            ("aa", "aa"),
            ("c", "c"),
            ("ab", "c"),
        ];
        let tokens = strings
            .iter()
            .enumerate()
            .map(|(i, s)| (unmap_token(s).unwrap_or_default(), i as u32));
        Bpe::new(
            tokens,
            &by_string,
            merges.iter().enumerate().map(|(i, (a, b))| (i, *a, *b)),
            false,
        )
        .unwrap_or_else(|e| panic!("toy vocabulary: {e:?}"))
    }

    #[test]
    fn scan_and_heap_merge_the_same_way() {
        let bpe = toy();
        let mut state = 0x2545F4914F6CDD1Du64;
        for len in 2..80 {
            for _ in 0..20 {
                let word: Vec<u32> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        bpe.byte_ids[b"abcx"[(state % 4) as usize] as usize]
                    })
                    .collect();
                let mut by_scan = word.clone();
                loop {
                    // The reference: the plain scan, whatever the length.
                    let best = (0..by_scan.len().saturating_sub(1))
                        .filter_map(|i| bpe.merge(by_scan[i], by_scan[i + 1]).map(|m| (m, i)))
                        .min_by_key(|&((rank, _), i)| (rank, i));
                    let Some(((_, id), i)) = best else { break };
                    by_scan[i] = id;
                    by_scan.remove(i + 1);
                }
                let mut by_heap = word.clone();
                bpe.merge_word_heap(&mut by_heap);
                assert_eq!(by_scan, by_heap);
            }
        }
    }

    #[test]
    fn merges_follow_rank_order() {
        let bpe = toy();
        let mut out = Vec::new();
        let mut session = bpe.session();
        // "abc": (b,c) has rank 0 so it merges first; then (a, bc) has no merge.
        session.encode_word(b"abc", &mut out);
        assert_eq!(out, [u32::from(b'a'), 257]);
    }
}
