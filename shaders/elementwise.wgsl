// Elementwise kernels over flat f32 buffers: binary arithmetic with a periodic second operand,
// scaling, GELU (erf and tanh forms) and its backward, fused bias + GELU, inverted dropout,
// and the in-place accumulate and scale.
//
// Every entry point covers `p.n` elements of a window that starts at global element `p.start`
// of the full operands; `p.off1` .. `p.off4` locate the window inside bindings 1 .. 4. The
// operand at binding 2 of `binary`, `bias_gelu` and `add_into` is read with a period: element i
// reads b[off2 + (phase2 + i) % period2], which broadcasts a bias [N] onto [.., N] or a table
// [T, D] onto [B, T, D]. A period equal to n reads it elementwise.
//
// Bindings (binding 0 is always the uniform `p: Params`):
//   binary         1 a    [n] read        2 b [period] read   3 c [n] write
//                  c = alpha * a + beta * b (OP 0) or c = a * b (OP 1)
//   gelu_backward  1 a=x  [n] read        2 b=dy [n] read     3 c=dx [n] write
//   bias_gelu      1 a=x  [n] read        2 b=bias [period]   3 c=pre [n] write   4 d=y [n] write
//   scale, gelu, dropout
//                  1 a=x  [n] read        2 dst [n] write
//   add_into       1 io   [n] read_write  2 b [n] read        io += b
//   scale_into     1 io   [n] read_write                      io *= alpha
//
// Grid: one invocation per element; workgroups beyond the first dimension's limit continue in
// the y dimension, so the flat index is (wid.y * nwg.x + wid.x) * WG + lid.x.

struct Params {
    n: u32,
    start: u32,
    off1: u32,
    off2: u32,
    off3: u32,
    off4: u32,
    period2: u32,
    phase2: u32,
    alpha: f32,
    beta: f32,
    // Dropout: an element is kept when its hash is >= threshold = floor(p * 2^32).
    threshold: u32,
    key0: u32,
    key1: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read_write> d: array<f32>;
// Output of the unary entry points.
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
// Operand of the in-place entry points.
@group(0) @binding(1) var<storage, read_write> io: array<f32>;

override WG: u32 = 256u;
// binary: 0 computes alpha * a + beta * b, 1 computes a * b.
override OP: u32 = 0u;
// GELU form: 0 is the exact erf form, 1 the tanh approximation.
override GELU: u32 = 0u;

const SQRT_HALF: f32 = 0.70710678118654752;
const INV_SQRT_2PI: f32 = 0.39894228040143268;
const SQRT_2_OVER_PI: f32 = 0.79788456080286536;
const GELU_CUBIC: f32 = 0.044715;

fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

// Index into binding 2 of element i; the modulo runs only when the window wraps the period.
fn periodic_index(i: u32) -> u32 {
    let k = p.phase2 + i;
    if (p.period2 >= p.phase2 + p.n) {
        return p.off2 + k;
    }
    return p.off2 + k % p.period2;
}

// erf(x) in f32, fitted for fiak (Chebyshev fits computed with mpmath, coefficients rounded
// to f32):
//   |x| < 1:      erf(x) = x * P(x^2), P of degree 6, fit error 1.2e-9;
//   1 <= |x| < 4: erf(x) = 1 - exp(-x^2) * R(|x| - 2.5), R of degree 12 fitted to
//                 erfc(x) exp(x^2), fit error 1.7e-9;
//   |x| >= 4:     evaluated at 4, where erf rounds to 1 in f32.
// Evaluated in f32 arithmetic with a correctly rounded exp, the max absolute error over 400001
// points in [0, 4.5] is 1.5e-7, at x = 0.98.
// NOTE: WGSL allows exp an error of 3 + 2|x| ULP, so a driver with the coarsest exp it allows
// would add an estimated 1e-7 more, near |x| = 1.
fn erf_f32(x: f32) -> f32 {
    let ax = min(abs(x), 4.0);
    var r: f32;
    if (ax < 1.0) {
        let t = ax * ax;
        var q = 7.875874871388078e-05;
        q = q * t - 0.000801686430349946;
        q = q * t + 0.005189087241888046;
        q = q * t - 0.02685421146452427;
        q = q * t + 0.11283594369888306;
        q = q * t - 0.3761262595653534;
        q = q * t + 1.1283791065216064;
        r = ax * q;
    } else {
        let v = ax - 2.5;
        var q = 1.0301513242438887e-07;
        q = q * v - 4.264734343450982e-07;
        q = q * v + 9.763901971382438e-07;
        q = q * v - 3.7472736948984675e-06;
        q = q * v + 1.611410698387772e-05;
        q = q * v - 5.952315768809058e-05;
        q = q * v + 0.00021091796224936843;
        q = q * v - 0.0007331529632210732;
        q = q * v + 0.002467065816745162;
        q = q * v - 0.008001693524420261;
        q = q * v + 0.02493799477815628;
        q = q * v - 0.07434733957052231;
        q = q * v + 0.21080636978149414;
        r = 1.0 - exp(-ax * ax) * q;
    }
    return select(r, -r, x < 0.0);
}

// The tanh form through the logistic function, 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)), which
// keeps its relative accuracy where tanh(u) is near -1. Returns (s, 1 - s) for
// u = sqrt(2/pi) (x + 0.044715 x^3). x is clamped to [-10, 10] and u to [-40, 40], so x^3 and
// exp(-2u) stay finite; beyond x = 10, s is 1 in f32, and below x = -10 it is under 1e-34.
fn tanh_form_sigmoid(x: f32) -> vec2<f32> {
    let xc = clamp(x, -10.0, 10.0);
    let u = SQRT_2_OVER_PI * (xc + GELU_CUBIC * xc * xc * xc);
    let e = exp(-2.0 * clamp(u, -40.0, 40.0));
    let inv = 1.0 / (1.0 + e);
    return vec2<f32>(inv, e * inv);
}

fn gelu_forward(x: f32) -> f32 {
    if (GELU == 0u) {
        return 0.5 * x * (1.0 + erf_f32(x * SQRT_HALF));
    }
    // Below x = -10 the result is below 1e-33 in magnitude; max() keeps it there for any x.
    return max(x, -10.0) * tanh_form_sigmoid(x).x;
}

// d gelu / dx. Beyond |x| = 10 the derivative is 0 or 1 to f32 precision; clamping keeps x^2
// finite.
fn gelu_derivative(x: f32) -> f32 {
    let xc = clamp(x, -10.0, 10.0);
    if (GELU == 0u) {
        let cdf = 0.5 * (1.0 + erf_f32(xc * SQRT_HALF));
        let pdf = exp(-0.5 * xc * xc) * INV_SQRT_2PI;
        return cdf + xc * pdf;
    }
    // With s = 0.5 (1 + tanh(u)): 0.5 (1 + t) + 0.5 x (1 - t^2) u' = s + 2 x s (1 - s) u'.
    let s = tanh_form_sigmoid(x);
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * xc * xc);
    return s.x + 2.0 * xc * s.x * s.y * du;
}

// Mixes the bits of v with the 32-bit finalizer of MurmurHash3, a bijection on u32.
fn mix32(v: u32) -> u32 {
    var h = v;
    h ^= h >> 16u;
    h *= 0x85ebca6bu;
    h ^= h >> 13u;
    h *= 0xc2b2ae35u;
    h ^= h >> 16u;
    return h;
}

@compute @workgroup_size(WG)
fn binary(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let x = a[p.off1 + i];
    let y = b[periodic_index(i)];
    if (OP == 0u) {
        c[p.off3 + i] = p.alpha * x + p.beta * y;
    } else {
        c[p.off3 + i] = x * y;
    }
}

@compute @workgroup_size(WG)
fn gelu_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    c[p.off3 + i] = b[p.off2 + i] * gelu_derivative(a[p.off1 + i]);
}

@compute @workgroup_size(WG)
fn bias_gelu(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let pre = a[p.off1 + i] + b[periodic_index(i)];
    c[p.off3 + i] = pre;
    d[p.off4 + i] = gelu_forward(pre);
}

@compute @workgroup_size(WG)
fn scale(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    dst[p.off2 + i] = p.alpha * a[p.off1 + i];
}

@compute @workgroup_size(WG)
fn gelu(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    dst[p.off2 + i] = gelu_forward(a[p.off1 + i]);
}

// Inverted dropout: y = x * alpha where the element is kept, 0 elsewhere, with alpha =
// 1 / (1 - p). The mask is a hash of (key0, key1, global element index), so the backward,
// which is this same kernel applied to dy, reproduces it without storing it.
@compute @workgroup_size(WG)
fn dropout(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let h = mix32(mix32((p.start + i) ^ p.key0) + p.key1);
    let x = a[p.off1 + i];
    dst[p.off2 + i] = select(0.0, x * p.alpha, h >= p.threshold);
}

@compute @workgroup_size(WG)
fn add_into(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    io[p.off1 + i] += b[periodic_index(i)];
}

@compute @workgroup_size(WG)
fn scale_into(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    io[p.off1 + i] *= p.alpha;
}
