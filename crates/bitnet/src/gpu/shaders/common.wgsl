// Shared by every kernel: 64 threads per workgroup and tree reductions over them.
// Reductions end with a barrier so the scratch array can be reused at once.

const WG: u32 = 64u;
var<workgroup> red_f: array<f32, 64>;
var<workgroup> red_i: array<i32, 64>;

fn wg_sum(v: f32, lid: u32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red_f[lid] = red_f[lid] + red_f[lid + s];
        }
        workgroupBarrier();
    }
    let r = red_f[0];
    workgroupBarrier();
    return r;
}

fn wg_max(v: f32, lid: u32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red_f[lid] = max(red_f[lid], red_f[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red_f[0];
    workgroupBarrier();
    return r;
}

fn wg_sum_i(v: i32, lid: u32) -> i32 {
    red_i[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red_i[lid] = red_i[lid] + red_i[lid + s];
        }
        workgroupBarrier();
    }
    let r = red_i[0];
    workgroupBarrier();
    return r;
}

// Output rows are spread over x and y (a dispatch dimension holds at most 65535 workgroups;
// a vocabulary has more rows).
fn row_of(wg: vec3<u32>) -> u32 {
    return wg.y * 65535u + wg.x;
}

// Lane i (0..3) of a word of four int8, sign-extended.
fn lane_i8(w: u32, i: u32) -> i32 {
    return bitcast<i32>(w << (24u - 8u * i)) >> 24u;
}
