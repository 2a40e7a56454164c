//! `/metrics` in the names that routers and autoscalers already read, so they plug in
//! unchanged: vLLM's (the Gateway API Inference Extension's endpoint picker reads
//! `vllm:num_requests_waiting`, `vllm:num_requests_running` and the KV cache use by default;
//! its `docs/proposals/003-model-server-protocol`) and llama-server's `llamacpp:` ones. Every
//! figure comes from the scheduler's [`Status`]; this file only names and formats them.
//! `docs/deploy.md` lists them.

use std::fmt::Write as _;

use bitnet::generate::scheduler::Status;

/// One metric family in Prometheus' text format. `labels` is `{…}` or empty.
fn family(out: &mut String, name: &str, kind: &str, help: &str, labels: &str, value: &str) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{labels} {value}"
    );
}

/// Appends the router-facing metrics for the scheduler's `st`, served as model `model`.
pub fn write(out: &mut String, st: &Status, model: &str) {
    // vLLM labels its metrics with the model's name; label values escape `\` and `"`.
    let escaped = model.replace('\\', "\\\\").replace('"', "\\\"");
    let vllm = format!("{{model_name=\"{escaped}\"}}");
    let waiting = st.queued.to_string();
    let running = st.slots_busy().to_string();
    let usage = format!("{:.6}", st.kv_cache_usage());
    let queries = st.prompt_tokens.to_string();
    let hits = st.cached_prompt_tokens.to_string();
    let m = |out: &mut String, name: &str, kind: &str, help: &str, value: &str| {
        family(out, name, kind, help, &vllm, value)
    };
    m(
        out,
        "vllm:num_requests_waiting",
        "gauge",
        "Requests waiting for a free slot.",
        &waiting,
    );
    m(
        out,
        "vllm:num_requests_running",
        "gauge",
        "Requests in a slot (taking in their prompt or generating).",
        &running,
    );
    // vLLM renamed gpu_cache_usage_perc to kv_cache_usage_perc; routers read either.
    for name in ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"] {
        m(
            out,
            name,
            "gauge",
            "KV cache positions held by running requests, as a fraction of all slots' (0 to 1; \
             the cache is in CPU memory).",
            &usage,
        );
    }
    m(
        out,
        "vllm:prefix_cache_queries_total",
        "counter",
        "Prompt tokens looked up in the slots' cached prefixes.",
        &queries,
    );
    m(
        out,
        "vllm:prefix_cache_hits_total",
        "counter",
        "Prompt tokens found in a slot's cached prefix (not run again).",
        &hits,
    );
    m(
        out,
        "vllm:prompt_tokens_total",
        "counter",
        "Prompt tokens of admitted requests.",
        &queries,
    );
    m(
        out,
        "vllm:generation_tokens_total",
        "counter",
        "Tokens generated.",
        &st.generated_tokens.to_string(),
    );

    let l = |out: &mut String, name: &str, kind: &str, help: &str, value: &str| {
        family(out, name, kind, help, "", value)
    };
    l(
        out,
        "llamacpp:prompt_tokens_total",
        "counter",
        "Prompt tokens run (those found in a cached prefix are not).",
        &st.prompt_tokens
            .saturating_sub(st.cached_prompt_tokens)
            .to_string(),
    );
    l(
        out,
        "llamacpp:tokens_predicted_total",
        "counter",
        "Tokens generated.",
        &st.generated_tokens.to_string(),
    );
    l(
        out,
        "llamacpp:n_decode_total",
        "counter",
        "Batched forward passes.",
        &st.steps.to_string(),
    );
    let per_decode = if st.steps == 0 {
        0.0
    } else {
        st.sequences_stepped as f64 / st.steps as f64
    };
    l(
        out,
        "llamacpp:n_busy_slots_per_decode",
        "gauge",
        "Mean sequences per forward pass.",
        &format!("{per_decode:.3}"),
    );
    l(
        out,
        "llamacpp:predicted_tokens_seconds",
        "gauge",
        "Generated tokens per second over recent steps, all slots together.",
        &format!("{:.3}", st.generation_tokens_per_s),
    );
    l(
        out,
        "llamacpp:requests_processing",
        "gauge",
        "Requests in a slot.",
        &running,
    );
    l(
        out,
        "llamacpp:requests_deferred",
        "gauge",
        "Requests waiting for a free slot.",
        &waiting,
    );
    l(
        out,
        "llamacpp:kv_cache_usage_ratio",
        "gauge",
        "KV cache positions held by running requests, as a fraction of all slots'.",
        &usage,
    );
    l(
        out,
        "llamacpp:kv_cache_tokens",
        "gauge",
        "KV cache positions held by running requests.",
        &st.kv_cache_tokens_used().to_string(),
    );

    // Ours, beside the bitnet_ families ops.rs writes.
    l(
        out,
        "bitnet_kv_cache_usage_ratio",
        "gauge",
        "KV cache positions held by running requests, as a fraction of all slots'.",
        &usage,
    );
    l(
        out,
        "bitnet_kv_cache_tokens_capacity",
        "gauge",
        "KV cache positions in all slots (--parallel × context).",
        &st.kv_cache_tokens_capacity().to_string(),
    );
    l(
        out,
        "bitnet_batch_sequences_total",
        "counter",
        "Sequences run over all forward passes (over bitnet_steps_total: the mean batch).",
        &st.sequences_stepped.to_string(),
    );
    l(
        out,
        "bitnet_shutting_down",
        "gauge",
        "1 while draining after SIGTERM (no new requests taken), else 0.",
        if st.shutting_down { "1" } else { "0" },
    );
}
