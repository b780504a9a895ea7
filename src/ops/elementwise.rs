//! Elementwise ops and their backward: add (with a broadcast second operand), mul, scale,
//! linear combinations, GELU in its erf and tanh forms, fused bias + GELU and inverted dropout.
//!
//! Every op is one dispatch per binding window. Tensors larger than the device's storage
//! binding limit are processed in windows of at most that size; [`windows`] plans them and the
//! reduction and optimizer kernels use the same plan.

use std::cell::Cell;

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu;
use crate::shaders;
use crate::tensor::{DType, Tensor};

/// Invocations per workgroup of the elementwise kernels (`WG` in elementwise.wgsl).
const WG: usize = 256;

/// GELU form. `Erf` is the exact x * Phi(x) of ViT and BERT. `Tanh` is GPT-2's approximation
/// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GeluKind {
    Erf,
    Tanh,
}

impl GeluKind {
    fn constant(self) -> f64 {
        match self {
            GeluKind::Erf => 0.0,
            GeluKind::Tanh => 1.0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
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
    threshold: u32,
    key0: u32,
    key1: u32,
    pad: [u32; 3],
}

// ---------------------------------------------------------------------------------------------
// Windows and grids, shared with the reduction and optimizer ops.

thread_local! {
    /// Limits set by [`with_test_limits`] for the current thread.
    static TEST_LIMITS: Cell<Option<(usize, u32)>> = const { Cell::new(None) };
}

/// Runs `f` with binding windows of at most `window_elements` elements and grids of at most
/// `groups_per_dimension` workgroups along x, on the calling thread only. Tests use it to run
/// the windowed and two-dimensional-grid paths on small tensors.
#[doc(hidden)]
pub fn with_test_limits<R>(window_elements: usize, groups_per_dimension: u32, f: impl FnOnce() -> R) -> R {
    assert!(
        window_elements > 0 && groups_per_dimension > 0,
        "test limits must be positive"
    );
    let previous = TEST_LIMITS.with(|l| l.replace(Some((window_elements, groups_per_dimension))));
    let result = f();
    TEST_LIMITS.with(|l| l.set(previous));
    result
}

/// Max elements of one storage binding window. A multiple of the binding offset alignment, so
/// windows that start at multiples of it bind at offset 0.
pub(crate) fn window_elements() -> usize {
    if let Some((elements, _)) = TEST_LIMITS.with(Cell::get) {
        return elements;
    }
    let gpu = gpu::get();
    let align = gpu.binding_alignment().max(4) as usize / 4;
    let max = (gpu.max_binding_bytes() as usize / 4).saturating_sub(align);
    (max / align * align).max(align)
}

/// Workgroup grid for `groups` workgroups: along x up to the device limit, then in rows along
/// y. Kernels compute the flat workgroup index as `wid.y * nwg.x + wid.x` and skip indices at
/// or beyond `groups`.
pub(crate) fn grid(groups: usize) -> [u32; 3] {
    let per_dimension = match TEST_LIMITS.with(Cell::get) {
        Some((_, groups)) => groups as usize,
        None => gpu::get().limits.max_compute_workgroups_per_dimension as usize,
    };
    let groups = groups.max(1);
    if groups <= per_dimension {
        return [groups as u32, 1, 1];
    }
    [per_dimension as u32, groups.div_ceil(per_dimension) as u32, 1]
}

/// One dispatch's share of a flat problem of `n` elements: elements `start .. start + len` of
/// the full operands, and the window `period_start .. period_start + period_len` of an operand
/// read with a period, whose element i of this window is `(phase + i) % period_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub start: usize,
    pub len: usize,
    pub period_start: usize,
    pub period_len: usize,
    pub phase: usize,
}

/// Splits `n` elements into binding windows. `period` is the length of an operand repeated
/// along the flat index (`n` for an elementwise operand). When that operand fits one binding
/// it is bound whole with a phase; otherwise windows stay inside one repetition of it.
pub(crate) fn windows(n: usize, period: usize) -> Vec<Window> {
    let limit = window_elements();
    let mut out = Vec::new();
    if n == 0 || period == 0 {
        return out;
    }
    if period <= limit {
        for start in (0..n).step_by(limit) {
            out.push(Window {
                start,
                len: limit.min(n - start),
                period_start: 0,
                period_len: period,
                phase: start % period,
            });
        }
        return out;
    }
    for repetition in 0..n / period {
        for offset in (0..period).step_by(limit) {
            let len = limit.min(period - offset);
            out.push(Window {
                start: repetition * period + offset,
                len,
                period_start: offset,
                period_len: len,
                phase: 0,
            });
        }
    }
    out
}

/// Binding mode of an operand.
#[derive(Clone, Copy)]
enum Role {
    /// Element i of the window, `start + i` of the tensor.
    Flat,
    /// The operand read with a period (binding 2 only).
    Periodic,
}

/// Records `entry` of elementwise.wgsl over `n` elements, window by window. `operands` fill
/// bindings 1, 2, ... in order; `params` carries the op's own fields.
fn launch(
    entry: &str,
    constants: &[(&str, f64)],
    n: usize,
    operands: &[(&Tensor, Role)],
    params: Params,
) -> Result<()> {
    let period = operands
        .iter()
        .find(|(_, role)| matches!(role, Role::Periodic))
        .map_or(n, |(t, _)| t.numel());
    let gpu = gpu::get();
    for w in windows(n, period) {
        let mut p = params;
        p.n = w.len as u32;
        p.start = w.start as u32;
        p.period2 = w.period_len as u32;
        p.phase2 = w.phase as u32;
        let mut bindings = Vec::with_capacity(operands.len());
        for (slot, (tensor, role)) in operands.iter().enumerate() {
            let (binding, offset) = match role {
                Role::Flat => tensor.bind_window(w.start, w.len),
                Role::Periodic => tensor.bind_window(w.period_start, w.period_len),
            };
            match slot {
                0 => p.off1 = offset,
                1 => p.off2 = offset,
                2 => p.off3 = offset,
                _ => p.off4 = offset,
            }
            bindings.push(binding);
        }
        let groups = grid(w.len.div_ceil(WG));
        gpu.dispatch(
            &shaders::ELEMENTWISE,
            entry,
            constants,
            bytemuck::bytes_of(&p),
            &bindings,
            groups,
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Argument checks.

/// Rejects non-f32 operands and element counts beyond the kernels' u32 indices.
pub(crate) fn check_f32(op: &'static str, operands: &[(&str, &Tensor)]) -> Result<()> {
    for (name, t) in operands {
        if t.dtype() != DType::F32 {
            return Err(Error::shape(
                op,
                format!("{name} must be f32, got {:?} {:?}", t.shape(), t.dtype()),
            ));
        }
        if t.numel() > u32::MAX as usize {
            return Err(Error::shape(
                op,
                format!("{name} {:?} has more than 2^32 - 1 elements", t.shape()),
            ));
        }
    }
    Ok(())
}

fn check_same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            op,
            format!("shapes differ: {:?} and {:?}", a.shape(), b.shape()),
        ));
    }
    Ok(())
}

fn strip_leading_ones(shape: &[usize]) -> &[usize] {
    let first = shape.iter().position(|&d| d != 1).unwrap_or(shape.len());
    &shape[first..]
}

/// Returns whether `small`, without leading 1s, equals a trailing part of `large`.
fn broadcasts_onto(small: &[usize], large: &[usize]) -> bool {
    let small = strip_leading_ones(small);
    small.len() <= large.len() && large.ends_with(small)
}

/// Checks that `bias` is [N] (or [1, .., 1, N]) for x [.., N].
fn check_bias(op: &'static str, x: &Tensor, bias: &Tensor) -> Result<()> {
    let n = x.shape().last().copied();
    if strip_leading_ones(bias.shape()).len() > 1 || n != Some(bias.numel()) {
        return Err(Error::shape(
            op,
            format!(
                "bias {:?} does not match the last dimension of x {:?}",
                bias.shape(),
                x.shape()
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Arithmetic.

/// Returns a + b. Shapes: equal, or one operand's shape (without leading 1s) equals a trailing
/// part of the other's, which broadcasts it: a bias [N] onto [.., N], a position table [T, D]
/// or [1, T, D] onto [B, T, D]. The result has the larger operand's shape.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_f32("add", &[("a", a), ("b", b)])?;
    let (large, small) = if a.numel() >= b.numel() { (a, b) } else { (b, a) };
    if !broadcasts_onto(small.shape(), large.shape()) {
        return Err(Error::shape(
            "add",
            format!(
                "shapes {:?} and {:?} do not broadcast: one must equal a trailing part of the other",
                a.shape(),
                b.shape()
            ),
        ));
    }
    let out = Tensor::empty(large.shape(), DType::F32);
    let params = Params {
        alpha: 1.0,
        beta: 1.0,
        ..Params::default()
    };
    launch(
        "binary",
        &[("OP", 0.0)],
        large.numel(),
        &[(large, Role::Flat), (small, Role::Periodic), (&out, Role::Flat)],
        params,
    )?;
    Ok(out)
}

/// Adds `x` to `out` in place (gradient accumulation). Shapes may differ if the element counts
/// are equal.
pub fn add_into(out: &Tensor, x: &Tensor) -> Result<()> {
    check_f32("add_into", &[("out", out), ("x", x)])?;
    if out.numel() != x.numel() {
        return Err(Error::shape(
            "add_into",
            format!("element counts differ: out {:?} and x {:?}", out.shape(), x.shape()),
        ));
    }
    if out.same_buffer(x) {
        // One buffer cannot be bound for reading and writing in one dispatch: x + x = 2x.
        return scale_into(out, 2.0);
    }
    launch(
        "add_into",
        &[],
        out.numel(),
        &[(out, Role::Flat), (x, Role::Flat)],
        Params::default(),
    )
}

/// Returns a * b elementwise; shapes must be equal.
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_f32("mul", &[("a", a), ("b", b)])?;
    check_same_shape("mul", a, b)?;
    let out = Tensor::empty(a.shape(), DType::F32);
    launch(
        "binary",
        &[("OP", 1.0)],
        a.numel(),
        &[(a, Role::Flat), (b, Role::Flat), (&out, Role::Flat)],
        Params::default(),
    )?;
    Ok(out)
}

/// Returns s * x.
pub fn scale(x: &Tensor, s: f32) -> Result<Tensor> {
    check_f32("scale", &[("x", x)])?;
    let out = Tensor::empty(x.shape(), DType::F32);
    let params = Params {
        alpha: s,
        ..Params::default()
    };
    launch("scale", &[], x.numel(), &[(x, Role::Flat), (&out, Role::Flat)], params)?;
    Ok(out)
}

/// Multiplies x by s in place.
pub fn scale_into(x: &Tensor, s: f32) -> Result<()> {
    check_f32("scale_into", &[("x", x)])?;
    let params = Params {
        alpha: s,
        ..Params::default()
    };
    launch("scale_into", &[], x.numel(), &[(x, Role::Flat)], params)
}

/// Returns alpha * a + beta * b; shapes must be equal.
pub fn add_scaled(a: &Tensor, b: &Tensor, alpha: f32, beta: f32) -> Result<Tensor> {
    check_f32("add_scaled", &[("a", a), ("b", b)])?;
    check_same_shape("add_scaled", a, b)?;
    let out = Tensor::empty(a.shape(), DType::F32);
    let params = Params {
        alpha,
        beta,
        ..Params::default()
    };
    launch(
        "binary",
        &[("OP", 0.0)],
        a.numel(),
        &[(a, Role::Flat), (b, Role::Flat), (&out, Role::Flat)],
        params,
    )?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// GELU.

/// Returns gelu(x) in the given form.
pub fn gelu(x: &Tensor, kind: GeluKind) -> Result<Tensor> {
    check_f32("gelu", &[("x", x)])?;
    let out = Tensor::empty(x.shape(), DType::F32);
    launch(
        "gelu",
        &[("GELU", kind.constant())],
        x.numel(),
        &[(x, Role::Flat), (&out, Role::Flat)],
        Params::default(),
    )?;
    Ok(out)
}

/// Returns dx = dy * gelu'(x); x and dy have equal shapes.
pub fn gelu_backward(x: &Tensor, dy: &Tensor, kind: GeluKind) -> Result<Tensor> {
    check_f32("gelu_backward", &[("x", x), ("dy", dy)])?;
    check_same_shape("gelu_backward", x, dy)?;
    let dx = Tensor::empty(x.shape(), DType::F32);
    launch(
        "gelu_backward",
        &[("GELU", kind.constant())],
        x.numel(),
        &[(x, Role::Flat), (dy, Role::Flat), (&dx, Role::Flat)],
        Params::default(),
    )?;
    Ok(dx)
}

/// Returns (pre, y) with pre = x + bias and y = gelu(pre), in one dispatch. Shapes: x [.., N],
/// bias [N]; pre and y have x's shape. The backward is [`gelu_backward`] on `pre`, then a sum
/// of dpre over the leading dimensions for the bias.
pub fn bias_gelu(x: &Tensor, bias: &Tensor, kind: GeluKind) -> Result<(Tensor, Tensor)> {
    check_f32("bias_gelu", &[("x", x), ("bias", bias)])?;
    check_bias("bias_gelu", x, bias)?;
    let pre = Tensor::empty(x.shape(), DType::F32);
    let y = Tensor::empty(x.shape(), DType::F32);
    launch(
        "bias_gelu",
        &[("GELU", kind.constant())],
        x.numel(),
        &[
            (x, Role::Flat),
            (bias, Role::Periodic),
            (&pre, Role::Flat),
            (&y, Role::Flat),
        ],
        Params::default(),
    )?;
    Ok((pre, y))
}

// ---------------------------------------------------------------------------------------------
// Dropout.

/// Mixes the bits of v with the 32-bit finalizer of MurmurHash3, as `mix32` in elementwise.wgsl.
fn mix32(v: u32) -> u32 {
    let mut h = v;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Dropout parameters: the kept scale 1 / (1 - p), the keep threshold on the 32-bit hash and
/// the two hash keys derived from the seed.
fn dropout_params(p: f32, seed: u64) -> Result<Params> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::invalid("dropout probability", p, "expected a value in [0, 1)"));
    }
    let key0 = mix32(seed as u32 ^ 0x9e37_79b9);
    let key1 = mix32((seed >> 32) as u32 ^ key0);
    let threshold = ((p as f64) * 4_294_967_296.0).floor().min(u32::MAX as f64) as u32;
    Ok(Params {
        alpha: 1.0 / (1.0 - p),
        threshold,
        key0,
        key1,
        ..Params::default()
    })
}

/// Returns inverted dropout of x: each element is zeroed with probability p and the kept ones
/// are scaled by 1 / (1 - p). The mask is a counter-based hash of (seed, element index), so
/// [`dropout_backward`] with the same seed recomputes it. p must lie in [0, 1).
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    check_f32("dropout", &[("x", x)])?;
    let params = dropout_params(p, seed)?;
    let out = Tensor::empty(x.shape(), DType::F32);
    launch(
        "dropout",
        &[],
        x.numel(),
        &[(x, Role::Flat), (&out, Role::Flat)],
        params,
    )?;
    Ok(out)
}

/// Returns dx for [`dropout`] with the same p and seed: dy through the same mask and scale.
pub fn dropout_backward(dy: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    dropout(dy, p, seed)
}
