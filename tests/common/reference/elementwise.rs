//! CPU reference of the elementwise kernels. Values are computed in f64 from f32 inputs and
//! rounded once; erf comes from its power series, accurate to about 1e-15.

use fiak::ops::elementwise::GeluKind;

/// a [n] + b [period], with b repeated along the flat index (a bias or a broadcast table).
pub fn add_broadcast(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter()
        .enumerate()
        .map(|(i, &x)| (x as f64 + b[i % b.len()] as f64) as f32)
        .collect()
}

/// alpha * a + beta * b, all [n].
pub fn add_scaled(a: &[f32], b: &[f32], alpha: f32, beta: f32) -> Vec<f32> {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (alpha as f64 * x as f64 + beta as f64 * y as f64) as f32)
        .collect()
}

/// a * b, both [n].
pub fn mul(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(&x, &y)| (x as f64 * y as f64) as f32).collect()
}

/// erf(x) in f64: 2/sqrt(pi) exp(-x^2) sum_n (2x^2)^n x / (1 * 3 * .. * (2n + 1)). Every term is
/// positive, so the series does not cancel; beyond |x| = 6, erf is +-1 to f64 precision.
pub fn erf(x: f64) -> f64 {
    if x.abs() > 6.0 {
        return x.signum();
    }
    let two_x2 = 2.0 * x * x;
    let mut term = x;
    let mut sum = x;
    let mut n = 0.0;
    while term.abs() > 1e-17 * sum.abs() {
        n += 1.0;
        term *= two_x2 / (2.0 * n + 1.0);
        sum += term;
    }
    2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_CUBIC: f64 = 0.044715;

/// 0.5 (1 + tanh(u)) for the tanh form's u = sqrt(2/pi) (x + 0.044715 x^3), written as
/// 1 / (1 + exp(-2u)) because 1 + tanh(u) is 0 in f64 once u < -19.
fn tanh_form_sigmoid(x: f64) -> f64 {
    let u = SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
    1.0 / (1.0 + (-2.0 * u).exp())
}

/// gelu(x) in f64.
pub fn gelu_f64(x: f64, kind: GeluKind) -> f64 {
    match kind {
        GeluKind::Erf => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
        GeluKind::Tanh => x * tanh_form_sigmoid(x),
    }
}

/// d gelu / dx in f64.
pub fn gelu_grad_f64(x: f64, kind: GeluKind) -> f64 {
    match kind {
        GeluKind::Erf => {
            let cdf = 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            cdf + x * pdf
        }
        GeluKind::Tanh => {
            // 0.5 (1 + t) + 0.5 x (1 - t^2) u' with s = 0.5 (1 + t), so 1 - t^2 = 4 s (1 - s).
            let s = tanh_form_sigmoid(x);
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x);
            s + 2.0 * x * s * (1.0 - s) * du
        }
    }
}

/// y = gelu(x), both [n].
pub fn gelu_forward(x: &[f32], kind: GeluKind) -> Vec<f32> {
    x.iter().map(|&v| gelu_f64(v as f64, kind) as f32).collect()
}

/// dx = dy * gelu'(x), all [n].
pub fn gelu_backward(x: &[f32], dy: &[f32], kind: GeluKind) -> Vec<f32> {
    x.iter()
        .zip(dy)
        .map(|(&v, &g)| (g as f64 * gelu_grad_f64(v as f64, kind)) as f32)
        .collect()
}

/// Mixes the bits of v with the 32-bit finalizer of MurmurHash3.
fn mix32(v: u32) -> u32 {
    let mut h = v;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Returns the dropout keep mask of n elements: element i is kept when
/// mix32(mix32(i ^ key0) + key1) >= floor(p * 2^32), with key0 = mix32(seed_lo ^ 0x9e3779b9)
/// and key1 = mix32(seed_hi ^ key0).
pub fn dropout_mask(n: usize, p: f32, seed: u64) -> Vec<bool> {
    let key0 = mix32(seed as u32 ^ 0x9e37_79b9);
    let key1 = mix32((seed >> 32) as u32 ^ key0);
    let threshold = ((p as f64) * 4_294_967_296.0).floor().min(u32::MAX as f64) as u32;
    (0..n)
        .map(|i| mix32(mix32(i as u32 ^ key0).wrapping_add(key1)) >= threshold)
        .collect()
}

/// Returns inverted dropout of x [n]: kept elements times 1 / (1 - p), the others 0. The backward is
/// the same function applied to dy.
pub fn dropout(x: &[f32], p: f32, seed: u64) -> Vec<f32> {
    let scale = 1.0 / (1.0 - p);
    dropout_mask(x.len(), p, seed)
        .iter()
        .zip(x)
        .map(|(&keep, &v)| if keep { v * scale } else { 0.0 })
        .collect()
}
