//! Random inputs and the obvious-way reference for the kernel property tests
//! (`kernels_props.rs`, `t16_props.rs`).

/// A xorshift64 stream from `seed` (0 stays 0).
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// `n` ternary values in {-1, 0, 1} drawn from `next`.
pub fn ternary(next: &mut impl FnMut() -> u64, n: usize) -> Vec<i8> {
    (0..n).map(|_| (next() % 3) as i8 - 1).collect()
}

/// `n` int8 activations over the whole range, drawn from `next`.
pub fn int8(next: &mut impl FnMut() -> u64, n: usize) -> Vec<i8> {
    (0..n).map(|_| next() as u8 as i8).collect()
}

/// `out[tok · rows + r] = Σ_c t[r, c] · acts[tok, c]` for `rows × k` weights, the obvious way.
pub fn reference(t: &[i8], acts: &[i8], rows: usize, k: usize) -> Vec<i32> {
    let tokens = acts.len() / k;
    let mut out = vec![0i32; tokens * rows];
    for tok in 0..tokens {
        for r in 0..rows {
            out[tok * rows + r] = (0..k)
                .map(|c| t[r * k + c] as i32 * acts[tok * k + c] as i32)
                .sum();
        }
    }
    out
}
