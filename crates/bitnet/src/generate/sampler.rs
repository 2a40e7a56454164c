//! The sampler chain, in llama.cpp's order and with its defaults: repetition / presence /
//! frequency penalties over the last `penalty_last_n` tokens, then top-k, top-p, min-p,
//! temperature, and a draw from a seeded RNG. Temperature ≤ 0 means greedy (argmax).

use std::collections::{HashMap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Sampling settings. `Default` gives llama.cpp's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// ≤ 0: greedy.
    pub temperature: f32,
    /// 0: off.
    pub top_k: usize,
    /// 1.0: off.
    pub top_p: f32,
    /// 0.0: off.
    pub min_p: f32,
    /// 1.0: off. Positive logits are divided by it, negative ones multiplied.
    pub repeat_penalty: f32,
    /// Subtracted once from the logit of every token seen in the window.
    pub presence_penalty: f32,
    /// Subtracted per occurrence in the window.
    pub frequency_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    /// Seeds the RNG: the same seed and settings give the same tokens.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> SamplerConfig {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding (argmax, ties to the lowest id).
    pub fn greedy() -> SamplerConfig {
        SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::default()
        }
    }

    /// Checks every value against its allowed range, so that a bad one is refused before any
    /// work instead of silently producing garbage (`min_p = 5` keeps no candidate, a NaN
    /// temperature makes every probability NaN, a zero repeat penalty divides by zero).
    pub fn validate(&self) -> Result<(), SamplerError> {
        let check = |param, value: f32, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(SamplerError { param, value })
            }
        };
        let t = self.temperature;
        check(Param::Temperature, t, t.is_finite())?;
        let p = self.top_p;
        check(Param::TopP, p, (0.0..=1.0).contains(&p))?;
        let p = self.min_p;
        check(Param::MinP, p, (0.0..=1.0).contains(&p))?;
        let r = self.repeat_penalty;
        check(Param::RepeatPenalty, r, r.is_finite() && r > 0.0)?;
        let p = self.presence_penalty;
        check(Param::PresencePenalty, p, (-2.0..=2.0).contains(&p))?;
        let f = self.frequency_penalty;
        check(Param::FrequencyPenalty, f, (-2.0..=2.0).contains(&f))?;
        Ok(())
    }
}

/// A sampling setting, with the names the command line and the JSON requests give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// `temperature` / `--temp`.
    Temperature,
    /// `top_p` / `--top-p`.
    TopP,
    /// `min_p` / `--min-p`.
    MinP,
    /// `repeat_penalty` / `--repeat-penalty`.
    RepeatPenalty,
    /// `presence_penalty` / `--presence-penalty`.
    PresencePenalty,
    /// `frequency_penalty` / `--frequency-penalty`.
    FrequencyPenalty,
}

impl Param {
    /// The request field (OpenAI's and llama.cpp server's name).
    pub fn field(self) -> &'static str {
        match self {
            Param::Temperature => "temperature",
            Param::TopP => "top_p",
            Param::MinP => "min_p",
            Param::RepeatPenalty => "repeat_penalty",
            Param::PresencePenalty => "presence_penalty",
            Param::FrequencyPenalty => "frequency_penalty",
        }
    }

    /// The command-line flag (llama.cpp's name).
    pub fn flag(self) -> &'static str {
        match self {
            Param::Temperature => "--temp",
            Param::TopP => "--top-p",
            Param::MinP => "--min-p",
            Param::RepeatPenalty => "--repeat-penalty",
            Param::PresencePenalty => "--presence-penalty",
            Param::FrequencyPenalty => "--frequency-penalty",
        }
    }

    /// What is allowed, in words.
    pub fn allowed(self) -> &'static str {
        match self {
            Param::Temperature => "a finite number (0 or below: greedy)",
            Param::TopP => "between 0 and 1 (1: off)",
            Param::MinP => "between 0 and 1 (0: off)",
            Param::RepeatPenalty => "a number above 0 (1: off)",
            Param::PresencePenalty | Param::FrequencyPenalty => "between -2 and 2 (0: off)",
        }
    }
}

/// A sampling value out of its range. Displays with the request field's name; the command
/// line uses [`SamplerError::for_flag`].
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("`{}` = {value} is out of range: it must be {}", .param.field(), .param.allowed())]
pub struct SamplerError {
    /// The setting.
    pub param: Param,
    /// Its value.
    pub value: f32,
}

impl SamplerError {
    /// The message with the command-line flag's name.
    pub fn for_flag(&self) -> String {
        format!(
            "{} {}: must be {}",
            self.param.flag(),
            self.value,
            self.param.allowed()
        )
    }
}

/// A seed that differs between calls (the clock mixed with a counter), for requests that ask
/// for a random one (`--seed -1`, llama.cpp's convention).
pub fn random_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // splitmix64 of the two, so close clock readings give unrelated seeds.
    let mut z = nanos ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A candidate token and its (adjusted) logit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Candidate {
    pub id: u32,
    pub logit: f32,
}

/// A seeded sampler with its penalty window.
pub struct Sampler {
    config: SamplerConfig,
    rng: ChaCha8Rng,
    recent: VecDeque<u32>,
}

impl Sampler {
    /// A sampler with `config`, its RNG seeded with `config.seed`.
    pub fn new(config: SamplerConfig) -> Sampler {
        Sampler {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            config,
            recent: VecDeque::new(),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Records a token (prompt or generated) in the penalty window.
    pub fn accept(&mut self, token: u32) {
        if self.config.penalty_last_n == 0 {
            return;
        }
        if self.recent.len() == self.config.penalty_last_n {
            self.recent.pop_front();
        }
        self.recent.push_back(token);
    }

    /// Forgets the penalty window (a new conversation).
    pub fn reset(&mut self) {
        self.recent.clear();
    }

    /// The sampler chain over a row of logits: penalties, then greedy's pick, or top-k,
    /// top-p, min-p and temperature and the survivors' probabilities. [`Sampler::sample`]
    /// draws from it; [`Sampler::distribution`] reports it.
    fn chain(&self, logits: &[f32]) -> Chain {
        let c = &self.config;
        let mut cands: Vec<Candidate> = logits
            .iter()
            .enumerate()
            .map(|(id, &logit)| Candidate {
                id: id as u32,
                logit,
            })
            .collect();
        apply_penalties(
            &mut cands,
            &self.recent,
            c.repeat_penalty,
            c.presence_penalty,
            c.frequency_penalty,
        );
        if c.temperature <= 0.0 {
            return Chain::Greedy(argmax(&cands));
        }
        top_k(&mut cands, c.top_k);
        top_p(&mut cands, c.top_p);
        min_p(&mut cands, c.min_p);
        for cand in &mut cands {
            cand.logit /= c.temperature;
        }
        let probs = softmax(&cands);
        Chain::Candidates(cands, probs)
    }

    /// The probabilities [`Sampler::sample`] draws the next token from, after penalties,
    /// top-k, top-p, min-p and temperature, most likely first (greedy: the pick with 1).
    /// Tokens the chain dropped are not listed. The RNG is not touched.
    pub fn distribution(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        match self.chain(logits) {
            Chain::Greedy(id) => vec![(id, 1.0)],
            Chain::Candidates(cands, probs) => {
                let mut out: Vec<(u32, f32)> = cands.iter().map(|c| c.id).zip(probs).collect();
                out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                out
            }
        }
    }

    /// Picks the next token from a row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let (cands, probs) = match self.chain(logits) {
            Chain::Greedy(id) => return id,
            Chain::Candidates(cands, probs) => (cands, probs),
        };
        let r: f32 = self.rng.random();
        let mut acc = 0.0;
        for (cand, p) in cands.iter().zip(&probs) {
            acc += p;
            if r < acc {
                return cand.id;
            }
        }
        cands.last().map_or(0, |c| c.id)
    }
}

/// What the sampler chain leaves: greedy's pick, or candidates with their probabilities.
enum Chain {
    Greedy(u32),
    Candidates(Vec<Candidate>, Vec<f32>),
}

/// The highest logit; ties go to the lowest id (what both reference engines do).
pub(crate) fn argmax(cands: &[Candidate]) -> u32 {
    let mut best: Option<Candidate> = None;
    for &c in cands {
        match best {
            Some(b) if c.logit > b.logit || (c.logit == b.logit && c.id < b.id) => best = Some(c),
            None if !c.logit.is_nan() => best = Some(c),
            _ => {}
        }
    }
    best.map_or(0, |c| c.id)
}

/// llama.cpp's penalties: for each token seen `n` times in the window, a positive logit is
/// divided by `repeat` (a negative one multiplied), then `n · frequency + presence` is
/// subtracted.
pub(crate) fn apply_penalties(
    cands: &mut [Candidate],
    recent: &VecDeque<u32>,
    repeat: f32,
    presence: f32,
    frequency: f32,
) {
    if recent.is_empty() || (repeat == 1.0 && presence == 0.0 && frequency == 0.0) {
        return;
    }
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for &t in recent {
        *counts.entry(t).or_default() += 1;
    }
    for c in cands.iter_mut() {
        if let Some(&n) = counts.get(&c.id) {
            if c.logit > 0.0 {
                c.logit /= repeat;
            } else {
                c.logit *= repeat;
            }
            c.logit -= n as f32 * frequency + presence;
        }
    }
}

/// Highest logit first, ties by lowest id: a total order, so any way of sorting by it gives
/// the same sequence.
fn descending(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

fn sort_descending(cands: &mut [Candidate]) {
    cands.sort_by(descending);
}

/// Keeps the `k` highest logits (sorted, highest first). `k = 0` keeps all (sorted).
pub(crate) fn top_k(cands: &mut Vec<Candidate>, k: usize) {
    if k > 0 && k < cands.len() {
        // Select the k first (linear), then sort only them: sorting a 128k vocabulary every
        // token cost milliseconds. The order is total, so these are the full sort's first k.
        cands.select_nth_unstable_by(k - 1, descending);
        cands.truncate(k);
    }
    sort_descending(cands);
}

/// Probabilities of the candidates (softmax of their logits).
pub(crate) fn softmax(cands: &[Candidate]) -> Vec<f32> {
    let max = cands.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.logit));
    let exps: Vec<f32> = cands.iter().map(|c| (c.logit - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// Keeps the smallest set of most likely candidates whose probabilities add up to at least
/// `p` (at least one). Expects candidates sorted highest first.
pub(crate) fn top_p(cands: &mut Vec<Candidate>, p: f32) {
    if p >= 1.0 || cands.is_empty() {
        return;
    }
    sort_descending(cands);
    let probs = softmax(cands);
    let mut acc = 0.0;
    let mut keep = cands.len();
    for (i, q) in probs.iter().enumerate() {
        acc += q;
        if acc >= p {
            keep = i + 1;
            break;
        }
    }
    cands.truncate(keep.max(1));
}

/// Keeps candidates whose probability is at least `p` times the most likely one's.
pub(crate) fn min_p(cands: &mut Vec<Candidate>, p: f32) {
    if p <= 0.0 || cands.is_empty() {
        return;
    }
    let max = cands.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.logit));
    // p_i / p_max = exp(l_i - l_max) ≥ p  ⇔  l_i ≥ l_max + ln p
    let threshold = max + p.ln();
    cands.retain(|c| c.logit >= threshold);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(logits: &[f32]) -> Vec<Candidate> {
        logits
            .iter()
            .enumerate()
            .map(|(i, &l)| Candidate {
                id: i as u32,
                logit: l,
            })
            .collect()
    }

    fn ids(c: &[Candidate]) -> Vec<u32> {
        c.iter().map(|c| c.id).collect()
    }

    /// Logits whose softmax is exactly the given probabilities.
    fn from_probs(p: &[f32]) -> Vec<Candidate> {
        cands(&p.iter().map(|p| p.ln()).collect::<Vec<_>>())
    }

    #[test]
    fn out_of_range_values_are_refused_with_their_names() {
        assert_eq!(SamplerConfig::default().validate(), Ok(()));
        // Negative temperature is llama.cpp's greedy, so it is allowed.
        let ok = SamplerConfig {
            temperature: -1.0,
            top_p: 0.0,
            min_p: 1.0,
            repeat_penalty: 0.5,
            ..SamplerConfig::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = |c: SamplerConfig| c.validate().unwrap_err();
        let d = SamplerConfig::default;
        let e = bad(SamplerConfig {
            temperature: f32::NAN,
            ..d()
        });
        assert_eq!(e.param, Param::Temperature);
        assert_eq!(bad(SamplerConfig { top_p: 2.0, ..d() }).param, Param::TopP);
        let e = bad(SamplerConfig { min_p: 5.0, ..d() });
        assert_eq!(e.param, Param::MinP);
        assert_eq!(e.for_flag(), "--min-p 5: must be between 0 and 1 (0: off)");
        assert!(e.to_string().contains("`min_p` = 5"), "{e}");
        for r in [0.0, -1.0, f32::INFINITY] {
            let e = bad(SamplerConfig {
                repeat_penalty: r,
                ..d()
            });
            assert_eq!(e.param, Param::RepeatPenalty);
        }
        let e = bad(SamplerConfig {
            frequency_penalty: 3.0,
            ..d()
        });
        assert_eq!(e.param, Param::FrequencyPenalty);
    }

    #[test]
    fn random_seeds_differ() {
        assert_ne!(random_seed(), random_seed());
    }

    #[test]
    fn greedy_takes_the_argmax_with_ties_to_the_lowest_id() {
        assert_eq!(argmax(&cands(&[1.0, 3.0, 3.0, 2.0])), 1);
        let mut s = Sampler::new(SamplerConfig::greedy());
        assert_eq!(s.sample(&[0.5, -1.0, 7.0, 7.0]), 2);
    }

    #[test]
    fn top_k_keeps_k() {
        let mut c = cands(&[0.1, 5.0, 3.0, 4.0, -2.0]);
        top_k(&mut c, 3);
        assert_eq!(ids(&c), vec![1, 3, 2]);
        let mut c = cands(&[0.1, 5.0]);
        top_k(&mut c, 0);
        assert_eq!(ids(&c), vec![1, 0]);
        // The kept ones and their order are the full sort's, ties (many here) by lowest id.
        let logits: Vec<f32> = (0..997u32).map(|i| ((i * 7919) % 13) as f32).collect();
        for k in [1, 2, 40, 996, 997, 2000] {
            let mut c = cands(&logits);
            top_k(&mut c, k);
            let mut sorted = cands(&logits);
            sorted.sort_by(|a, b| b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id)));
            sorted.truncate(k);
            assert_eq!(ids(&c), ids(&sorted), "k = {k}");
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities 0.5, 0.3, 0.15, 0.05.
        let probs = [0.15, 0.5, 0.05, 0.3];
        let mut c = from_probs(&probs);
        top_p(&mut c, 0.8);
        assert_eq!(ids(&c), vec![1, 3]); // 0.5 + 0.3 = 0.8 ≥ 0.8
        let mut c = from_probs(&probs);
        top_p(&mut c, 0.81);
        assert_eq!(ids(&c), vec![1, 3, 0]);
        let mut c = from_probs(&probs);
        top_p(&mut c, 0.1);
        assert_eq!(ids(&c), vec![1]);
    }

    #[test]
    fn min_p_keeps_tokens_above_a_fraction_of_the_best() {
        let mut c = from_probs(&[0.15, 0.5, 0.05, 0.3]);
        min_p(&mut c, 0.2); // threshold 0.1
        let mut kept = ids(&c);
        kept.sort();
        assert_eq!(kept, vec![0, 1, 3]);
    }

    #[test]
    fn penalties_follow_llama_cpp() {
        let recent: VecDeque<u32> = [1, 1, 2].into_iter().collect();
        let mut c = cands(&[2.0, 2.0, -2.0, 2.0]);
        apply_penalties(&mut c, &recent, 2.0, 0.5, 0.25);
        // token 1: 2/2 - (2·0.25 + 0.5) = 0; token 2: -2·2 - (0.25 + 0.5) = -4.75
        assert_eq!(c[1].logit, 0.0);
        assert_eq!(c[2].logit, -4.75);
        assert_eq!((c[0].logit, c[3].logit), (2.0, 2.0));
    }

    #[test]
    fn the_penalty_window_slides() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 0.0,
            repeat_penalty: 100.0,
            penalty_last_n: 2,
            ..SamplerConfig::default()
        });
        s.accept(0);
        s.accept(1);
        // 0 and 1 penalized: 2 wins.
        assert_eq!(s.sample(&[3.0, 3.0, 1.0]), 2);
        s.accept(2);
        s.accept(2);
        // the window now holds [2, 2]: 0 wins again.
        assert_eq!(s.sample(&[3.0, 3.0, 1.0]), 0);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_follows_the_distribution() {
        let logits: Vec<f32> = [0.1f32, 0.2, 0.3, 0.4].iter().map(|p| p.ln()).collect();
        let config = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 42,
            ..SamplerConfig::default()
        };
        let draw = |config: &SamplerConfig| {
            let mut s = Sampler::new(config.clone());
            (0..4000).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = draw(&config);
        assert_eq!(a, draw(&config));
        let other = draw(&SamplerConfig {
            seed: 43,
            ..config.clone()
        });
        assert_ne!(a, other);
        for (id, p) in [0.1, 0.2, 0.3, 0.4].iter().enumerate() {
            let freq = a.iter().filter(|&&t| t == id as u32).count() as f32 / a.len() as f32;
            assert!((freq - p).abs() < 0.03, "token {id}: {freq} vs {p}");
        }
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        let logits = [0.0f32, 1.0];
        let share = |t: f32| {
            let mut s = Sampler::new(SamplerConfig {
                temperature: t,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed: 7,
                ..SamplerConfig::default()
            });
            (0..4000).filter(|_| s.sample(&logits) == 1).count() as f32 / 4000.0
        };
        let (cold, hot) = (share(0.25), share(4.0));
        // softmax([0, 4]) ≈ 0.982, softmax([0, 0.25]) ≈ 0.562
        assert!((cold - 0.982).abs() < 0.02, "{cold}");
        assert!((hot - 0.562).abs() < 0.03, "{hot}");
    }
}
