// BitNet's activation quantization of each row (one workgroup per row), as the CPU's
// `norm_quantize`: RMSNorm with gain `g` (when has_gain), then the weightless RMSNorm (when
// has_act; with the gains g2 when act_gain, the BitNet embedding models' per-projection
// norm, else unit gains), then per-row absmax int8: a = max(max|x|, 1e-5), s = 127 / a,
// q = clamp(round_half_even(x * s), -128, 127). Rows are written `width` long (zeros past
// `n`), four int8 to a word; also each row's scale and Σ q (the ternary kernel subtracts it).

struct P {
    n: u32,
    width: u32,
    has_gain: u32,
    has_act: u32,
    eps: f32,
    act_eps: f32,
    x_stride: u32,
    act_gain: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> q: array<u32>;
@group(0) @binding(4) var<storage, read_write> scales: array<f32>;
@group(0) @binding(5) var<storage, read_write> qsums: array<i32>;
@group(0) @binding(6) var<storage, read> g2: array<f32>;

// 1 / sqrt(mean(v²) + eps), the CPU's `rms_norm` scale.
fn rms_scale(ss: f32, n: u32, eps: f32) -> f32 {
    return 1.0 / sqrt(ss / f32(n) + eps);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wg.x;
    let base = t * p.x_stride;
    var s1 = 1.0;
    var s2 = 1.0;
    if (p.has_gain != 0u) {
        var ss = 0.0;
        for (var i = lid; i < p.n; i += WG) {
            let v = x[base + i];
            ss += v * v;
        }
        s1 = rms_scale(wg_sum(ss, lid), p.n, p.eps);
    }
    if (p.has_act != 0u) {
        var ss = 0.0;
        for (var i = lid; i < p.n; i += WG) {
            let v = normed1(base, i, s1);
            ss += v * v;
        }
        s2 = rms_scale(wg_sum(ss, lid), p.n, p.act_eps);
    }
    var amax = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        amax = max(amax, abs(normed(base, i, s1, s2)));
    }
    let a = max(wg_max(amax, lid), 1e-5);
    let s = 127.0 / a;
    var sum = 0;
    let words = p.width / 4u;
    for (var w = lid; w < words; w += WG) {
        var packed = 0u;
        for (var j = 0u; j < 4u; j++) {
            let i = 4u * w + j;
            var v = 0;
            if (i < p.n) {
                v = i32(clamp(round(normed(base, i, s1, s2) * s), -128.0, 127.0));
            }
            sum += v;
            packed = packed | ((bitcast<u32>(v) & 0xffu) << (8u * j));
        }
        q[t * words + w] = packed;
    }
    let total = wg_sum_i(sum, lid);
    if (lid == 0u) {
        scales[t] = s;
        qsums[t] = total;
    }
}

// The row's value after the block's norm: g * (x * s1), as the CPU's `rms_norm`.
fn normed1(base: u32, i: u32, s1: f32) -> f32 {
    let v = x[base + i];
    if (p.has_gain != 0u) {
        return g[i] * (v * s1);
    }
    return v;
}

fn normed(base: u32, i: u32, s1: f32, s2: f32) -> f32 {
    let v = normed1(base, i, s1);
    if (p.has_act != 0u) {
        if (p.act_gain != 0u) {
            return g2[i] * (v * s2);
        }
        return 1.0 * (v * s2);
    }
    return v;
}
