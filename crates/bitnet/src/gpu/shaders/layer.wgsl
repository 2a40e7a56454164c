// The elementwise and attention steps of a layer.

struct P {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
    e: u32,
    f: u32,
    g: u32,
    h: f32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;

// x += y over p.a values.
@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.y * 65535u * 64u + id.x;
    if (i < p.a) {
        x[i] = x[i] + y[i];
    }
}

// The gated activation: x (up) *= act(y (gate)) over p.a values; p.b = 0: relu², 1: SiLU
// (x / (1 + e^-x), PyTorch's form), 2: PyTorch's gelu(approximate="tanh"),
// 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))).
@compute @workgroup_size(64)
fn gate(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.y * 65535u * 64u + id.x;
    if (i < p.a) {
        let g = y[i];
        if (p.b == 0u) {
            let r = max(g, 0.0);
            x[i] = x[i] * (r * r);
        } else if (p.b == 1u) {
            x[i] = x[i] * (g / (1.0 + exp(-g)));
        } else {
            // tanh's argument clamped to ±10, where f32's tanh is already ±1: some drivers
            // compute tanh through exponentials that overflow to inf/inf further out.
            let u = clamp(0.7978846 * (g + 0.044715 * g * g * g), -10.0, 10.0);
            x[i] = x[i] * (0.5 * g * (1.0 + tanh(u)));
        }
    }
}

// RoPE in place on x: p.a tokens of p.b heads of p.c dims (row stride p.b·p.c), by the
// angles whose cosines and sines are y[t·(hd/2) + k] and y[(p.a + t)·(hd/2) + k]; p.d = 0:
// pairs (k, k + hd/2) (NEOX), 1: pairs (2k, 2k + 1).
@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    let hh = p.c / 2u;
    let n = p.a * p.b * hh;
    if (i >= n) {
        return;
    }
    let k = i % hh;
    let head = (i / hh) % p.b;
    let t = i / (hh * p.b);
    let c = y[t * hh + k];
    let s = y[p.a * hh + t * hh + k];
    let base = t * p.b * p.c + head * p.c;
    var i0 = base + k;
    var i1 = base + k + hh;
    if (p.d != 0u) {
        i0 = base + 2u * k;
        i1 = i0 + 1u;
    }
    let u = x[i0];
    let v = x[i1];
    x[i0] = u * c - v * s;
    x[i1] = v * c + u * s;
}
