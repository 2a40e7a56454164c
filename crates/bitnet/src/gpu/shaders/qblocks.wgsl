// The Q8_0 and Q6_K output products, as the CPU computes them: the f32 row quantized per
// block of p.block values (32: Q8_0's activations; 256: Q8_K) to int8 in -127..=127 with
// d = 1 / (127 / max|x|) (0 for a zero block); then per weight block the exact integer
// Σ_g sc_g · Σ_{i∈g} w_i q_i over groups of p.group values, times d_w · d_x, added up.
// Weights come repacked at upload: int8 values four to a word (Q6_K's codes minus 32), one
// integer scale per group (1 for Q8_0), one f32 scale per block.

struct P {
    k: u32,
    rows: u32,
    block: u32,
    group: u32,
    _a: u32,
    _b: u32,
    _c: u32,
    _d: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> xq: array<u32>;
@group(0) @binding(3) var<storage, read_write> xd: array<f32>;

// One workgroup per (block, token).
@compute @workgroup_size(64)
fn quantize(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wg.x;
    let t = wg.y;
    let base = t * p.k + b * p.block;
    var amax = 0.0;
    for (var i = lid; i < p.block; i += WG) {
        amax = max(amax, abs(x[base + i]));
    }
    let a = wg_max(amax, lid);
    var s = 0.0;
    if (a > 0.0) {
        s = 127.0 / a;
    }
    for (var w = lid; w < p.block / 4u; w += WG) {
        var packed = 0u;
        for (var j = 0u; j < 4u; j++) {
            let v = i32(clamp(round(x[base + 4u * w + j] * s), -127.0, 127.0));
            packed = packed | ((bitcast<u32>(v) & 0xffu) << (8u * j));
        }
        xq[base / 4u + w] = packed;
    }
    if (lid == 0u) {
        var d = 0.0;
        if (a > 0.0) {
            d = 1.0 / s;
        }
        xd[t * (p.k / p.block) + b] = d;
    }
}
