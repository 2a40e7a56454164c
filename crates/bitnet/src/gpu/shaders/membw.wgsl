// The device's memory bandwidth: every invocation reads a grid-strided share of `src` (16
// bytes at a time) and writes one word that depends on all of it, so nothing can be skipped.

struct P {
    n: u32,
    b: u32,
    c: u32,
    d: u32,
    e: u32,
    f: u32,
    g: u32,
    h: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256)
fn read_all(
    @builtin(global_invocation_id) id: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let stride = groups.x * 256u;
    var acc = vec4<u32>(0u);
    for (var i = id.x; i < p.n; i += stride) {
        acc ^= src[i];
    }
    out[id.x] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}
