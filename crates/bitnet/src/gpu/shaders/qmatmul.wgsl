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
@group(0) @binding(1) var<storage, read> xq: array<u32>;
@group(0) @binding(2) var<storage, read> xd: array<f32>;
@group(0) @binding(3) var<storage, read> wq: array<u32>;
@group(0) @binding(4) var<storage, read> wsc: array<i32>;
@group(0) @binding(5) var<storage, read> wd: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

// One workgroup per (row, token); each thread takes whole blocks.
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wg);
    let t = wg.z;
    if (r >= p.rows) {
        return;
    }
    let nb = p.k / p.block;
    let ng = p.block / p.group;
    var acc = 0.0;
    for (var b = lid; b < nb; b += WG) {
        var bdot = 0;
        for (var g = 0u; g < ng; g++) {
            var gs = 0;
            let at = b * p.block + g * p.group;
            for (var i = 0u; i < p.group / 4u; i++) {
                gs += dot4(wq[(r * p.k + at) / 4u + i], xq[(t * p.k + at) / 4u + i]);
            }
            bdot += wsc[(r * nb + b) * ng + g] * gs;
        }
        acc += wd[r * nb + b] * xd[t * nb + b] * f32(bdot);
    }
    let total = wg_sum(acc, lid);
    if (lid == 0u) {
        out[t * p.rows + r] = total;
    }
}
