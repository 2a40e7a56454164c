//! Process figures reported by the commands.

/// Peak resident set size of this process (Linux: `VmHWM`), if the platform tells.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The figures llama.cpp prints after a generation, on stderr.
pub fn print_generation_summary(
    g: &bitnet::generate::Generation,
    peak_rss: Option<u64>,
    kv_cache_bytes: usize,
) {
    eprintln!(
        "prompt: {} tokens ({} cached) in {:.3} s, {:.2} t/s | generated: {} tokens in {:.3} s, \
         {:.2} t/s | time to first token {:.3} s | total {:.3} s | stop: {} | peak RSS {:.1} MB | \
         KV cache {:.1} MB",
        g.prompt_tokens,
        g.cached_tokens,
        g.prompt_time.as_secs_f64(),
        g.prompt_tokens_per_s(),
        g.generated.len(),
        g.generation_time.as_secs_f64(),
        g.generation_tokens_per_s(),
        g.time_to_first_token.as_secs_f64(),
        g.total_time.as_secs_f64(),
        g.stop.as_str(),
        peak_rss.unwrap_or(0) as f64 / 1e6,
        kv_cache_bytes as f64 / 1e6,
    );
}
