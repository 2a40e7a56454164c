// A context shift of one layer's keys (llama.cpp's K-shift): p.n_rows rows moved out of the
// cache into `src` are rotated back by the shift's angle and stored at positions dst0 .. of
// `dst`, f32 or f16 two to a word (prepended: CACHE_T, `ld` and `shift_store`). Each value is
// computed on its own with the CPU's expression for its half of the pair (`rope_neox`, or the
// interleaved pairs), so it matches the CPU's rotation of the same row.

struct P {
    kv_dim: u32,
    dst0: u32,
    n_rows: u32,
    hd: u32,
    interleaved: u32,
    _a: u32,
    _b: u32,
    _c: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> src: array<CACHE_T>;
// The cosines then the sines of the angle, hd/2 each.
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<CACHE_T>;

// Value e (row-major over the moved rows) after the rotation.
fn rotated(e: u32) -> f32 {
    let hh = p.hd / 2u;
    let i = e % p.hd;
    let head = e - i;
    var k = i % hh;
    var first = i < hh;
    var i0 = head + k;
    var i1 = head + k + hh;
    if (p.interleaved != 0u) {
        k = i / 2u;
        first = (i & 1u) == 0u;
        i0 = head + 2u * k;
        i1 = i0 + 1u;
    }
    let u = ld(i0);
    let v = ld(i1);
    let c = table[k];
    let s = table[hh + k];
    if (first) {
        return u * c - v * s;
    }
    return v * c + u * s;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    shift_store(id.y * 65535u * 64u + id.x);
}
