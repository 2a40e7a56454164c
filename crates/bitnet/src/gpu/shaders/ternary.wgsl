// The I2_S ternary product on int8 activations: out[t, r] = (Σ_k code_k·q_k − Σ_k q_k) / s_t ·
// wscale · lscale (+ bias), the integer sum exact. Weights in the file's I2_S layout (blocks
// of 128 values in 32 bytes: value j at byte j % 32, shift 6 − 2·(j / 32)), so the four bytes
// of weight word w of a block hold, at shift 6 − 2g, the codes of values 32g + 4w .. +3: the
// four int8 of activation word 8g + w of the same block. `dot4` is `dot4I8Packed` where the
// adapter has WGSL's packed_4x8_integer_dot_product, else a plain integer loop (prepended).
// One workgroup per (output row, token).

struct P {
    w_words: u32,
    rows: u32,
    a_words: u32,
    has_bias: u32,
    wscale: f32,
    lscale: f32,
    _a: u32,
    _b: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> q: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<f32>;
@group(0) @binding(4) var<storage, read> qsums: array<i32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wg);
    let t = wg.z;
    if (r >= p.rows) {
        return;
    }
    let wbase = r * p.w_words;
    let abase = t * p.a_words;
    var acc = 0;
    for (var i = lid; i < p.w_words; i += WG) {
        let word = w[wbase + i];
        let a = abase + (i / 8u) * 32u + (i % 8u);
        acc += dot4((word >> 6u) & 0x03030303u, q[a]);
        acc += dot4((word >> 4u) & 0x03030303u, q[a + 8u]);
        acc += dot4((word >> 2u) & 0x03030303u, q[a + 16u]);
        acc += dot4(word & 0x03030303u, q[a + 24u]);
    }
    let total = wg_sum_i(acc, lid);
    if (lid == 0u) {
        var o = f32(total - qsums[t]) / scales[t] * p.wscale;
        o = o * p.lscale;
        if (p.has_bias != 0u) {
            o = o + bias[r];
        }
        out[t * p.rows + r] = o;
    }
}
