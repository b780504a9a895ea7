//! CPU reference of AdamW, as in `torch.optim.AdamW`: each step computed in f64 from the f32
//! state and stored back as f32, as the GPU stores it.

/// AdamW state and hyperparameters of one parameter tensor.
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// Applies one step in place to param, m, v [n] with gradient grad [n]; `step` counts from 1 and
/// `clip` is the gradient scale min(1, max_norm / (norm + 1e-6)), or 1.
pub fn adamw_step(hp: &AdamW, param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], step: u32, clip: f64) {
    let bc1 = 1.0 - hp.beta1.powi(step as i32);
    let bc2 = 1.0 - hp.beta2.powi(step as i32);
    for i in 0..param.len() {
        let g = grad[i] as f64 * clip;
        let m1 = hp.beta1 * m[i] as f64 + (1.0 - hp.beta1) * g;
        let v1 = hp.beta2 * v[i] as f64 + (1.0 - hp.beta2) * g * g;
        let p = param[i] as f64 * (1.0 - hp.lr * hp.weight_decay);
        let denom = v1.sqrt() / bc2.sqrt() + hp.eps;
        param[i] = (p - hp.lr / bc1 * m1 / denom) as f32;
        m[i] = m1 as f32;
        v[i] = v1 as f32;
    }
}

/// Returns the clipping scale for a global norm: min(1, max_norm / (norm + 1e-6)).
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}
