//! Batched matmul `C = alpha * op(A) @ op(B) + bias`, with either operand transposed.
//!
//! Operands larger than the device's storage-binding limit are bound in windows: the product
//! is split along M, N or K until every operand's window fits, and K splits accumulate.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{self, MatmulVariant};
use crate::shaders;
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    a_off: u32,
    a_bs: u32,
    a_rs: u32,
    a_cs: u32,
    b_off: u32,
    b_bs: u32,
    b_rs: u32,
    b_cs: u32,
    c_off: u32,
    c_bs: u32,
    c_rs: u32,
    bias_off: u32,
    alpha: f32,
    pad: [u32; 3],
}

const FLAG_BIAS: u32 = 1;
const FLAG_ACCUMULATE: u32 = 2;

/// Register block of the `registers` variant and its workgroup size (see matmul.wgsl).
const REG_TM: usize = 8;
const REG_TN: usize = 16;
const REG_WG: usize = 8;
/// Output block of the `tiled` variant.
const TILE: usize = 64;

/// Shape of a matmul after broadcasting: `batch` products of [M, K] @ [K, N].
#[derive(Clone, Copy, Debug)]
struct Problem {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    /// Batch strides in elements; 0 broadcasts the operand.
    a_bs: usize,
    b_bs: usize,
    /// Element strides of op(A) (rows m, columns k) and op(B) (rows k, columns n).
    a_rs: usize,
    a_cs: usize,
    b_rs: usize,
    b_cs: usize,
}

fn resolve(a: &[usize], b: &[usize], trans_a: bool, trans_b: bool) -> Result<(Problem, Vec<usize>)> {
    if a.len() < 2 || b.len() < 2 {
        return Err(Error::shape(
            "matmul",
            format!("operands need rank >= 2, got {a:?} and {b:?}"),
        ));
    }
    let (ar, ac) = (a[a.len() - 2], a[a.len() - 1]);
    let (br, bc) = (b[b.len() - 2], b[b.len() - 1]);
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if trans_b { (bc, br) } else { (br, bc) };
    if k != kb {
        return Err(Error::shape(
            "matmul",
            format!("inner dimensions differ: A {a:?} (transposed: {trans_a}) and B {b:?} (transposed: {trans_b})"),
        ));
    }
    let a_batch = &a[..a.len() - 2];
    let b_batch = &b[..b.len() - 2];
    let a_count: usize = a_batch.iter().product();
    let b_count: usize = b_batch.iter().product();
    let (batch_shape, a_bs, b_bs) = if a_batch == b_batch {
        (a_batch.to_vec(), ar * ac, br * bc)
    } else if b_batch.is_empty() || b_count == 1 {
        (a_batch.to_vec(), ar * ac, 0)
    } else if a_batch.is_empty() || a_count == 1 {
        (b_batch.to_vec(), 0, br * bc)
    } else {
        return Err(Error::shape(
            "matmul",
            format!("batch dimensions differ: {a:?} and {b:?}"),
        ));
    };
    let (a_rs, a_cs) = if trans_a { (1, ar.max(1)) } else { (ac, 1) };
    let (b_rs, b_cs) = if trans_b { (1, bc) } else { (bc, 1) };
    let mut problem = Problem {
        batch: batch_shape.iter().product(),
        m,
        n,
        k,
        a_bs,
        b_bs,
        a_rs: if trans_a { 1 } else { a_rs },
        a_cs: if trans_a { m } else { a_cs },
        b_rs: if trans_b { 1 } else { b_rs },
        b_cs: if trans_b { k } else { b_cs },
    };

    // A batched, untransposed A against one shared B is a single taller product.
    if problem.b_bs == 0 && !trans_a && problem.batch > 1 {
        problem.m *= problem.batch;
        problem.batch = 1;
        problem.a_bs = 0;
    }
    let mut out = batch_shape;
    out.extend([m, n]);
    Ok((problem, out))
}

/// Returns `op(A) @ op(B) + bias`, where op transposes the last two axes when asked.
///
/// Shapes: A [..., M, K] (or [..., K, M] with `trans_a`), B [..., K, N] (or [..., N, K] with
/// `trans_b`), bias [N]; a rank-2 operand is shared across the other's batch. The result is
/// [..., M, N].
pub fn matmul(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool, bias: Option<&Tensor>) -> Result<Tensor> {
    let (_, out_shape) = resolve(a.shape(), b.shape(), trans_a, trans_b)?;
    let out = Tensor::empty(&out_shape, DType::F32);
    matmul_into(a, b, trans_a, trans_b, bias, &out, 1.0, false)?;
    Ok(out)
}

/// Writes `alpha * op(A) @ op(B) + bias` into `out`, adding to its contents when `accumulate`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_into(
    a: &Tensor,
    b: &Tensor,
    trans_a: bool,
    trans_b: bool,
    bias: Option<&Tensor>,
    out: &Tensor,
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    let (problem, out_shape) = resolve(a.shape(), b.shape(), trans_a, trans_b)?;
    if out.numel() != out_shape.iter().product::<usize>() {
        return Err(Error::shape(
            "matmul",
            format!("output {:?} does not fit the product {out_shape:?}", out.shape()),
        ));
    }
    if let Some(bias) = bias
        && bias.numel() != problem.n
    {
        return Err(Error::shape(
            "matmul",
            format!("bias {:?} does not match N = {}", bias.shape(), problem.n),
        ));
    }
    for (name, t) in [("A", a), ("B", b), ("output", out)] {
        if t.dtype() != DType::F32 {
            return Err(Error::shape(
                "matmul",
                format!("{name} must be f32, got {:?}", t.dtype()),
            ));
        }
    }
    if problem.m == 0 || problem.n == 0 {
        return Ok(());
    }
    if problem.k == 0 {
        // An empty sum: C = bias (+ C).
        return Err(Error::shape("matmul", "K = 0 is not supported".to_string()));
    }

    let gpu = gpu::get();
    let fits = [a, b, out].iter().all(|t| t.byte_len() <= gpu.max_binding_bytes());
    if trans_b && fits && gpu.matmul_variant == MatmulVariant::Registers && problem.n % 4 == 0 {
        // The vec4 kernel reads rows of B; a transposed copy costs O(N K), far below the
        // product's O(M N K).
        let b_rows = super::transpose(b)?;
        return matmul_into(a, &b_rows, trans_a, false, bias, out, alpha, accumulate);
    }

    let ops = Operands { a, b, out, bias };
    let fits = [a, b, out]
        .iter()
        .all(|t| t.byte_len() <= gpu::get().max_binding_bytes());
    if fits {
        let window = Window::full(&problem);
        return ops.dispatch(&problem, &window, alpha, accumulate, true, true);
    }
    for batch in 0..problem.batch {
        let mut window = Window::full(&problem);
        window.batch = batch;
        ops.split(&problem, window, alpha, accumulate, true)?;
    }
    Ok(())
}

struct Operands<'t> {
    a: &'t Tensor,
    b: &'t Tensor,
    out: &'t Tensor,
    bias: Option<&'t Tensor>,
}

/// A sub-product: rows m0..m1, columns n0..n1, inner k0..k1 of one batch entry (or all batch
/// entries when `whole_batch`).
#[derive(Clone, Copy, Debug)]
struct Window {
    batch: usize,
    m0: usize,
    m1: usize,
    n0: usize,
    n1: usize,
    k0: usize,
    k1: usize,
}

impl Window {
    fn full(p: &Problem) -> Window {
        Window {
            batch: 0,
            m0: 0,
            m1: p.m,
            n0: 0,
            n1: p.n,
            k0: 0,
            k1: p.k,
        }
    }
}

/// First element and element count of a strided 2-D range.
fn span(base: usize, r0: usize, r1: usize, rs: usize, c0: usize, c1: usize, cs: usize) -> (usize, usize) {
    let first = base + r0 * rs + c0 * cs;
    let last = base + (r1 - 1) * rs + (c1 - 1) * cs;
    (first, last + 1 - first)
}

impl Operands<'_> {
    fn spans(&self, p: &Problem, w: &Window) -> [(usize, usize); 3] {
        [
            span(w.batch * p.a_bs, w.m0, w.m1, p.a_rs, w.k0, w.k1, p.a_cs),
            span(w.batch * p.b_bs, w.k0, w.k1, p.b_rs, w.n0, w.n1, p.b_cs),
            span(w.batch * p.m * p.n, w.m0, w.m1, p.n, w.n0, w.n1, 1),
        ]
    }

    /// Halves the window along a dimension of the operand whose window is too large, until
    /// every window fits one binding.
    fn split(&self, p: &Problem, w: Window, alpha: f32, accumulate: bool, with_bias: bool) -> Result<()> {
        let limit = (gpu::get().max_binding_bytes() - gpu::get().binding_alignment()) as usize / 4;
        let spans = self.spans(p, &w);
        let Some(worst) = (0..3).filter(|&i| spans[i].1 > limit).max_by_key(|&i| spans[i].1) else {
            return self.dispatch(p, &w, alpha, accumulate, with_bias, false);
        };

        // Split along the dimension with the larger stride of that operand.
        let dim = match worst {
            0 if p.a_rs >= p.a_cs => 'm',
            0 => 'k',
            1 if p.b_rs >= p.b_cs => 'k',
            1 => 'n',
            _ => 'm',
        };
        let (lo, hi) = match dim {
            'm' => (w.m0, w.m1),
            'n' => (w.n0, w.n1),
            _ => (w.k0, w.k1),
        };
        if hi - lo < 2 {
            return Err(Error::shape(
                "matmul",
                format!(
                    "operand {:?} cannot be split into windows under the binding limit",
                    [self.a, self.b, self.out][worst].shape()
                ),
            ));
        }
        let mid = lo + (hi - lo) / 2;
        let (mut first, mut second) = (w, w);
        match dim {
            'm' => (first.m1, second.m0) = (mid, mid),
            'n' => (first.n1, second.n0) = (mid, mid),
            _ => (first.k1, second.k0) = (mid, mid),
        }
        self.split(p, first, alpha, accumulate, with_bias)?;
        if dim == 'k' {
            // The second half of K adds onto the first; the bias is already in.
            self.split(p, second, alpha, true, false)
        } else {
            self.split(p, second, alpha, accumulate, with_bias)
        }
    }

    fn dispatch(
        &self,
        p: &Problem,
        w: &Window,
        alpha: f32,
        accumulate: bool,
        with_bias: bool,
        whole_batch: bool,
    ) -> Result<()> {
        let gpu = gpu::get();
        let (m, n, k) = (w.m1 - w.m0, w.n1 - w.n0, w.k1 - w.k0);
        let batch = if whole_batch { p.batch } else { 1 };

        let (a_bind, a_off, b_bind, b_off, c_bind, c_off) = if whole_batch {
            (self.a.bind(), 0, self.b.bind(), 0, self.out.bind(), 0)
        } else {
            let [sa, sb, sc] = self.spans(p, w);
            let (a_bind, a_off) = self.a.bind_window(sa.0, sa.1);
            let (b_bind, b_off) = self.b.bind_window(sb.0, sb.1);
            let (c_bind, c_off) = self.out.bind_window(sc.0, sc.1);
            (a_bind, a_off, b_bind, b_off, c_bind, c_off)
        };
        let bias = if with_bias { self.bias } else { None };
        let (bias_bind, bias_off) = match bias {
            Some(t) => t.bind_window(w.n0, n),
            None => (a_bind, 0),
        };

        let params = Params {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            flags: if bias.is_some() { FLAG_BIAS } else { 0 } | if accumulate { FLAG_ACCUMULATE } else { 0 },
            a_off,
            a_bs: p.a_bs as u32,
            a_rs: p.a_rs as u32,
            a_cs: p.a_cs as u32,
            b_off,
            b_bs: p.b_bs as u32,
            b_rs: p.b_rs as u32,
            b_cs: p.b_cs as u32,
            c_off,
            c_bs: (p.m * p.n) as u32,
            c_rs: p.n as u32,
            bias_off,
            alpha,
            pad: [0; 3],
        };
        let vec4_ok = whole_batch && vec4_layout(p);
        let trans_a = [("TRANS_A", if p.a_rs == 1 && p.a_cs != 1 { 1.0 } else { 0.0 })];
        if gpu.matmul_variant == MatmulVariant::Registers && vec4_ok && gpu.subgroup8 {
            return gpu.dispatch(
                &shaders::MATMUL_SUBGROUP,
                "matmul_subgroup",
                &trans_a,
                bytemuck::bytes_of(&params),
                &[a_bind, b_bind, bias_bind, c_bind],
                [super::groups(n, 32), super::groups(m, 64), batch as u32],
            );
        }
        if gpu.matmul_variant == MatmulVariant::Registers && vec4_ok {
            let groups = [
                super::groups(n, REG_TN * REG_WG),
                super::groups(m, REG_TM * REG_WG),
                batch as u32,
            ];
            return gpu.dispatch(
                &shaders::MATMUL_VEC4,
                "matmul_vec4",
                &trans_a,
                bytemuck::bytes_of(&params),
                &[a_bind, b_bind, bias_bind, c_bind],
                groups,
            );
        }
        let (entry, groups) = match gpu.matmul_variant {
            MatmulVariant::Registers => (
                "matmul_registers",
                [
                    super::groups(n, REG_TN * REG_WG),
                    super::groups(m, REG_TM * REG_WG),
                    batch as u32,
                ],
            ),
            MatmulVariant::Tiled => (
                "matmul_tiled",
                [super::groups(n, TILE), super::groups(m, TILE), batch as u32],
            ),
        };
        gpu.dispatch(
            &shaders::MATMUL,
            entry,
            &[],
            bytemuck::bytes_of(&params),
            &[a_bind, b_bind, bias_bind, c_bind],
            groups,
        )
    }
}

/// Returns whether the operands suit `matmul_vec4`: B row-major, A row-major or transposed, and every
/// row length, offset and batch stride a multiple of 4.
fn vec4_layout(p: &Problem) -> bool {
    let b_ok = p.b_cs == 1 && p.n.is_multiple_of(4) && p.b_rs.is_multiple_of(4) && p.b_bs.is_multiple_of(4);
    let a_row_major = p.a_cs == 1 && p.k.is_multiple_of(4) && p.a_rs.is_multiple_of(4);
    let a_transposed = p.a_rs == 1 && p.a_cs != 1 && p.m.is_multiple_of(4) && p.a_cs.is_multiple_of(4);
    b_ok && p.a_bs.is_multiple_of(4) && (a_row_major || a_transposed)
}
