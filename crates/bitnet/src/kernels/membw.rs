//! A memory read-bandwidth probe: the roofline that token generation (which reads every weight
//! once per token) is measured against.

use std::time::Instant;

/// A buffer kept for repeated bandwidth measurements: where the bandwidth moves from minute to
/// minute (shared cloud hosts), a roofline is only meaningful measured next to each timed run,
/// and allocating and touching the buffer each time would cost more than the measurement.
pub struct BandwidthProbe {
    map: memmap2::MmapMut,
}

impl BandwidthProbe {
    /// A `bytes`-byte buffer (rounded down to 8-byte words), every page backed; `None` when
    /// the memory cannot be mapped.
    pub fn new(bytes: usize) -> Option<Self> {
        let words = (bytes / 8).max(1);
        let mut map = memmap2::MmapMut::map_anon(words * 8).ok()?;
        // Huge pages where the OS gives them (as the model's weights get them when read into
        // memory): 4 KiB pages cost TLB misses and stop the hardware prefetchers at every
        // page, which would make the roofline a measure of paging rather than of memory.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        let buf: &mut [u64] = bytemuck::cast_slice_mut(&mut map[..]);
        // Written once so every page is really backed (and not the shared zero page).
        buf.iter_mut().enumerate().for_each(|(i, w)| *w = i as u64);
        Some(Self { map })
    }

    /// The buffer's size in bytes.
    pub fn bytes(&self) -> usize {
        self.map.len()
    }

    /// Best-of-`reps` read bandwidth in GB/s with `threads` threads each summing its share.
    pub fn measure(&self, threads: usize, reps: usize) -> f64 {
        let buf: &[u64] = bytemuck::cast_slice(&self.map[..]);
        let chunk = buf.len().div_ceil(threads.max(1));
        let mut best = 0f64;
        for _ in 0..reps.max(1) {
            let start = Instant::now();
            let total: u64 = std::thread::scope(|s| {
                let handles: Vec<_> = buf
                    .chunks(chunk)
                    .map(|part| s.spawn(move || sum(part)))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
            });
            let secs = start.elapsed().as_secs_f64();
            std::hint::black_box(total);
            best = best.max(buf.len() as f64 * 8.0 / secs / 1e9);
        }
        best
    }
}

/// Sums with eight independent lanes, which the compiler vectorizes; the loads dominate.
fn sum(part: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = part.chunks_exact(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(*v);
        }
    }
    let tail: u64 = chunks.remainder().iter().fold(0, |a, v| a.wrapping_add(*v));
    acc.iter().fold(tail, |a, v| a.wrapping_add(*v))
}
