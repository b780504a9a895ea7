// AdamW, fused over a flat parameter buffer: gradient clipping, decoupled weight decay, both
// moment updates and the bias-corrected step in one pass, each value loaded once.
//
//   g     = grad * clip,  clip = min(1, max_norm / (sqrt(sq_norm) + 1e-6)) when clipping, else 1
//   param = param * (1 - lr * weight_decay)
//   m     = beta1 * m + (1 - beta1) * g
//   v     = beta2 * v + (1 - beta2) * g^2
//   param = param - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// The host folds the step count t into `decay`, `step_size` and `inv_sqrt_bc2`.
//
// Bindings:
//   0  p        uniform Params
//   1  param    array<f32>  [n] read_write
//   2  grad     array<f32>  [n]
//   3  m        array<f32>  [n] read_write, first moment
//   4  v        array<f32>  [n] read_write, second moment
//   5  sq_norm  array<f32>  [1], the squared global gradient norm; read only when clipping
//
// Grid: one invocation per element, the flat index (wid.y * nwg.x + wid.x) * WG + lid.x.

struct Params {
    n: u32,
    param_off: u32,
    grad_off: u32,
    m_off: u32,
    v_off: u32,
    sq_off: u32,
    clip: u32,
    _pad0: u32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    max_norm: f32,
    decay: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    _pad1: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read> sq_norm: array<f32>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn adamw(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (i >= p.n) {
        return;
    }
    var clip = 1.0;
    if (p.clip != 0u) {
        clip = min(1.0, p.max_norm / (sqrt(sq_norm[p.sq_off]) + 1e-6));
    }
    let g = grad[p.grad_off + i] * clip;
    let m1 = p.beta1 * m[p.m_off + i] + (1.0 - p.beta1) * g;
    let v1 = p.beta2 * v[p.v_off + i] + (1.0 - p.beta2) * g * g;
    m[p.m_off + i] = m1;
    v[p.v_off + i] = v1;
    let denom = sqrt(v1) * p.inv_sqrt_bc2 + p.eps;
    let k = p.param_off + i;
    param[k] = param[k] * p.decay - p.step_size * m1 / denom;
}
