// Float products and per-row float operations.

struct P {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
    e: f32,
    f: u32,
    g: u32,
    h: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> m: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

// F16 matrix (rows of k values, two to a word) times f32 rows: dst[t, r] = Σ_k m[r, k] x[t, k].
// p.a = k, p.b = rows. One workgroup per (row, token).
@compute @workgroup_size(64)
fn f16_matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wg);
    let t = wg.z;
    let k = p.a;
    if (r >= p.b) {
        return;
    }
    let half_k = k / 2u;
    var acc = 0.0;
    for (var i = lid; i < half_k; i += WG) {
        let wv = unpack2x16float(m[r * half_k + i]);
        acc += wv.x * src[t * k + 2u * i] + wv.y * src[t * k + 2u * i + 1u];
    }
    let total = wg_sum(acc, lid);
    if (lid == 0u) {
        dst[t * p.b + r] = total;
    }
}

// RMSNorm of each row of src (p.a long) with gain (m as f32 bits), into dst; p.e = eps,
// p.c = 1: round the result to f16 (the f16 cache mode's output product input, as ggml).
@compute @workgroup_size(64)
fn rms_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wg.x;
    let n = p.a;
    var ss = 0.0;
    for (var i = lid; i < n; i += WG) {
        let v = src[t * n + i];
        ss += v * v;
    }
    let s = 1.0 / sqrt(wg_sum(ss, lid) / f32(n) + p.e);
    for (var i = lid; i < n; i += WG) {
        var v = bitcast<f32>(m[i]) * (src[t * n + i] * s);
        if (p.c != 0u) {
            v = unpack2x16float(pack2x16float(vec2<f32>(v, 0.0))).x;
        }
        dst[t * n + i] = v;
    }
}
