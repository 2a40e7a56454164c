// Stores p.n_tokens new key and value rows (kv_dim each; rows row0 .. of `k` and `v`) at
// positions pos0 .. of one layer's cache; f32, or f16 two to a word (prepended: CACHE_T and
// `store`).

struct P {
    kv_dim: u32,
    pos0: u32,
    n_tokens: u32,
    row0: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> kc: array<CACHE_T>;
@group(0) @binding(4) var<storage, read_write> vc: array<CACHE_T>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    store(id.x);
}
