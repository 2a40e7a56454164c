// Attention of p.n_tokens queries (positions pos0 ..) over one sequence's cache of one layer
// (`kv_dim` wide rows, keys already rotated), as the CPU's `attention`: scores = q·k · scale,
// softmax (max-subtracted), out = Σ_j p_j v_j, over the positions first ..= last: last is the
// query's own position (causal) or the sequence's last (p.causal = 0: the whole sequence is
// in this dispatch), first is 0 or, on a sliding-window layer (p.window > 0), the query's
// position + 1 − window. The queries are rows row0 .. of `q` (and
// their results the same rows of `out`): in a batch of sequences each sequence's rows are one
// dispatch. One workgroup per (token, head); the scores go through `scratch` (rows × n_head ×
// capacity, capacity at least every cache's). CACHE_T and `kv` are prepended: f32, or f16 two
// to a word. Also `kv_write`, which stores the new rows.

struct P {
    n_head: u32,
    group: u32,
    hd: u32,
    row0: u32,
    capacity: u32,
    pos0: u32,
    n_tokens: u32,
    scale: f32,
    window: u32,
    causal: u32,
    _p0: u32,
    _p1: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<CACHE_T>;
@group(0) @binding(3) var<storage, read> vc: array<CACHE_T>;
@group(0) @binding(4) var<storage, read_write> scratch: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wg.x;
    let t = wg.y;
    let pos = p.pos0 + t;
    var last = pos;
    if (p.causal == 0u) {
        last = p.pos0 + p.n_tokens - 1u;
    }
    var first = 0u;
    if (p.window != 0u && pos + 1u > p.window) {
        first = pos + 1u - p.window;
    }
    let visible = last + 1u - first;
    let h = p.n_head * p.hd;
    let kv_dim = (p.n_head / p.group) * p.hd;
    let row = p.row0 + t;
    let qb = row * h + head * p.hd;
    let off = (head / p.group) * p.hd;
    let sb = (row * p.n_head + head) * p.capacity;
    var m = -3.4028235e38;
    for (var j = lid; j < visible; j += WG) {
        var s = 0.0;
        for (var d = 0u; d < p.hd; d++) {
            s += kv_k((first + j) * kv_dim + off + d) * q[qb + d];
        }
        s = s * p.scale;
        scratch[sb + j] = s;
        m = max(m, s);
    }
    let mx = wg_max(m, lid);
    var sum = 0.0;
    for (var j = lid; j < visible; j += WG) {
        let e = exp(scratch[sb + j] - mx);
        scratch[sb + j] = e;
        sum += e;
    }
    let inv = 1.0 / wg_sum(sum, lid);
    storageBarrier();
    workgroupBarrier();
    for (var d = lid; d < p.hd; d += WG) {
        var o = 0.0;
        for (var j = 0u; j < visible; j++) {
            o += (scratch[sb + j] * inv) * kv_v((first + j) * kv_dim + off + d);
        }
        out[qb + d] = o;
    }
}
