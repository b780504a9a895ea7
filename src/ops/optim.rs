//! AdamW (Loshchilov and Hutter, "Decoupled Weight Decay Regularization", ICLR 2019), computed
//! as the `torch.optim.AdamW` documentation states it, in one fused kernel over a flat parameter
//! buffer. Clipping by a global gradient norm reads the norm on the GPU.

use bytemuck::{Pod, Zeroable};

use super::elementwise::{check_f32, grid, windows};
use crate::error::{Error, Result};
use crate::gpu;
use crate::shaders;
use crate::tensor::Tensor;

/// Workgroup size of optim.wgsl (`WG`).
const WG: usize = 256;

/// AdamW hyperparameters, as in `torch.optim.AdamW`.
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay: each step multiplies the parameter by 1 - lr * weight_decay.
    pub weight_decay: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct Params {
    n: u32,
    param_off: u32,
    grad_off: u32,
    m_off: u32,
    v_off: u32,
    sq_off: u32,
    clip: u32,
    pad0: u32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    max_norm: f32,
    decay: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    pad1: f32,
}

fn check_hyperparameters(hp: &AdamW, step: u32) -> Result<()> {
    let checks = [
        (
            "lr",
            hp.lr,
            hp.lr >= 0.0 && hp.lr.is_finite(),
            "expected a finite value >= 0",
        ),
        (
            "beta1",
            hp.beta1,
            (0.0..1.0).contains(&hp.beta1),
            "expected a value in [0, 1)",
        ),
        (
            "beta2",
            hp.beta2,
            (0.0..1.0).contains(&hp.beta2),
            "expected a value in [0, 1)",
        ),
        (
            "eps",
            hp.eps,
            hp.eps > 0.0 && hp.eps.is_finite(),
            "expected a finite value > 0",
        ),
        (
            "weight_decay",
            hp.weight_decay,
            hp.weight_decay >= 0.0 && hp.weight_decay.is_finite(),
            "expected a finite value >= 0",
        ),
    ];
    for (name, value, ok, message) in checks {
        if !ok {
            return Err(Error::invalid(format!("AdamW {name}"), value, message));
        }
    }
    if step == 0 {
        return Err(Error::invalid(
            "AdamW step",
            step,
            "steps count from 1 for the bias correction",
        ));
    }
    Ok(())
}

/// Applies one AdamW step in place to `param` and its moments `m` and `v`.
///
/// `step` counts from 1 and sets the bias corrections 1 - beta^step. `clip` is (sq_norm,
/// max_norm): sq_norm [1] contains the squared global gradient norm (see
/// [`super::reduce::squared_norm`]) and the kernel scales the gradient by min(1, max_norm /
/// (sqrt(sq_norm) + 1e-6)), reading sq_norm on the GPU. param, grad, m and v must have equal
/// element counts.
pub fn adamw_step(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    hp: &AdamW,
    step: u32,
    clip: Option<(&Tensor, f32)>,
) -> Result<()> {
    check_f32("adamw_step", &[("param", param), ("grad", grad), ("m", m), ("v", v)])?;
    check_hyperparameters(hp, step)?;
    let n = param.numel();
    if [grad, m, v].iter().any(|t| t.numel() != n) {
        return Err(Error::shape(
            "adamw_step",
            format!(
                "element counts differ: param {:?}, grad {:?}, m {:?}, v {:?}",
                param.shape(),
                grad.shape(),
                m.shape(),
                v.shape()
            ),
        ));
    }
    // A buffer cannot be bound for writing and for anything else in one dispatch.
    let named = [("param", param), ("grad", grad), ("m", m), ("v", v)];
    for (i, (name_a, a)) in named.iter().enumerate() {
        for (name_b, b) in &named[i + 1..] {
            if a.same_buffer(b) {
                return Err(Error::shape(
                    "adamw_step",
                    format!("{name_a} {:?} and {name_b} {:?} share one buffer", a.shape(), b.shape()),
                ));
            }
        }
    }
    let (sq_norm, max_norm) = match clip {
        Some((sq, max_norm)) => {
            check_f32("adamw_step", &[("sq_norm", sq)])?;
            if sq.numel() != 1 {
                return Err(Error::shape(
                    "adamw_step",
                    format!("the squared norm must have one element, got {:?}", sq.shape()),
                ));
            }
            if !(max_norm > 0.0 && max_norm.is_finite()) {
                return Err(Error::invalid("max_norm", max_norm, "expected a finite value > 0"));
            }
            if [param, m, v].iter().any(|t| t.same_buffer(sq)) {
                return Err(Error::shape(
                    "adamw_step",
                    "the squared norm shares a buffer with param, m or v".to_string(),
                ));
            }
            (Some(sq), max_norm)
        }
        None => (None, 0.0),
    };

    let t = step as f64;
    let bc1 = 1.0 - (hp.beta1 as f64).powf(t);
    let bc2 = 1.0 - (hp.beta2 as f64).powf(t);
    let base = Params {
        clip: u32::from(sq_norm.is_some()),
        beta1: hp.beta1,
        beta2: hp.beta2,
        eps: hp.eps,
        max_norm,
        decay: (1.0 - hp.lr as f64 * hp.weight_decay as f64) as f32,
        step_size: (hp.lr as f64 / bc1) as f32,
        inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
        ..Params::default()
    };

    let gpu = gpu::get();
    for w in windows(n, n) {
        let (param_binding, param_off) = param.bind_window(w.start, w.len);
        let (grad_binding, grad_off) = grad.bind_window(w.start, w.len);
        let (m_binding, m_off) = m.bind_window(w.start, w.len);
        let (v_binding, v_off) = v.bind_window(w.start, w.len);
        // Without clipping the kernel never reads binding 5; grad fills it.
        let (sq_binding, sq_off) = match sq_norm {
            Some(sq) => sq.bind_window(0, 1),
            None => (grad_binding, 0),
        };
        let params = Params {
            n: w.len as u32,
            param_off,
            grad_off,
            m_off,
            v_off,
            sq_off,
            ..base
        };
        gpu.dispatch(
            &shaders::OPTIM,
            "adamw",
            &[],
            bytemuck::bytes_of(&params),
            &[param_binding, grad_binding, m_binding, v_binding, sq_binding],
            grid(w.len.div_ceil(WG)),
        )?;
    }
    Ok(())
}
