// The ternary product with a scale per 256-value block (llama.cpp's TQ2_0 and TQ1_0 files whose
// blocks' f16 scales differ), as the CPU's per-block kernels compute it: per block the exact
// integer Σ_k t_k·q_k (codes in the I2_S layout of `ternary.wgsl`, t = code − 1; TQ2_0's code
// 3 is the value 2), times the block's scale, added in block order from 0.0 in f32; then
// / s_t · lscale (+ bias). One workgroup per (output row, token); each pass over the row
// takes four blocks (16 weight words each, one per thread), whose integer sums are reduced
// in the workgroup's memory before one thread adds their scaled values in order.

struct P {
    w_words: u32,
    rows: u32,
    a_words: u32,
    has_bias: u32,
    n_blocks: u32,
    lscale: f32,
    _a: u32,
    _b: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> q: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<f32>;
// Each row's block scales, row-major (rows × n_blocks).
@group(0) @binding(4) var<storage, read> dscale: array<f32>;
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
    var sum = 0.0;
    for (var b0 = 0u; b0 < p.n_blocks; b0 += 4u) {
        let i = b0 * 16u + lid;
        var acc = 0;
        if (i < p.w_words) {
            let word = w[wbase + i];
            let a = abase + (i / 8u) * 32u + (i % 8u);
            for (var g = 0u; g < 4u; g++) {
                let qa = q[a + 8u * g];
                acc += dot4((word >> (6u - 2u * g)) & 0x03030303u, qa) - dot4(0x01010101u, qa);
            }
        }
        red_i[lid] = acc;
        workgroupBarrier();
        // The product is stored before it is added, so no compiler can fuse the two.
        if (lid < 4u && b0 + lid < p.n_blocks) {
            var dot = 0;
            for (var j = 0u; j < 16u; j++) {
                dot += red_i[lid * 16u + j];
            }
            red_f[lid] = dscale[r * p.n_blocks + b0 + lid] * f32(dot);
        }
        workgroupBarrier();
        if (lid == 0u) {
            for (var j = 0u; j < 4u && b0 + j < p.n_blocks; j++) {
                sum = sum + red_f[j];
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        var o = sum / scales[t];
        o = o * p.lscale;
        if (p.has_bias != 0u) {
            o = o + bias[r];
        }
        out[t * p.rows + r] = o;
    }
}
