// Fused dense attention with an additive bias (the log prior), FlashAttention style: the
// forward keeps a running maximum, sum and output accumulator per query row and never stores
// the Nq x Nk scores. The backward recomputes the scores from the saved row log-sum-exp.
//
//   s_ij = scale * q_i . k_j  [- scale / 2 * |k_j|^2 for Gaussian logits]  [+ bias_ij]
//   o_i  = sum_j softmax_j(s_ij) v_j,  lse_i = log sum_j exp(s_ij)
//
// over the visible keys j < Nk (and j <= i when causal). A row without a visible key gets
// o_i = 0 and lse_i = 0, and no gradient flows through it.
//
// Layouts, in elements, for the `batch` items one dispatch covers:
//   q, out, dout, dq   [B, H, Nq, D]  row (b, h, i) starts at q_off + ((b * H + h) * Nq + i) * D
//   k, v, dk, dv       [B, H, Nk, D]  row (b, h, j) starts at k_off + ((b * H + h) * Nk + j) * D
//   lse, delta         [B, H, Nq]     element (b, h, i) at row_off + (b * H + h) * Nq + i
//   bias, dbias        [B|1, H|1, Nq|1, Nk]  element (b, h, i, j) at
//                      bias_off + b * bias_bs + h * bias_hs + i * bias_rs + j; a stride is 0 on
//                      a broadcast axis
// `delta` holds D_i = dout_i . out_i, which both backward kernels need.
//
// Bindings, per entry point (binding 0 is always the uniform Params):
//   forward          1 q, 2 k, 3 v, 4 bias, 5 out (rw), 6 lse (rw)
//   backward_dq      1 q, 2 k, 3 v, 4 bias, 5 out, 6 lse, 7 dout, 8 dq (rw), 9 delta (rw)
//   backward_dkdv    1 q, 2 k, 3 v, 4 bias, 5 delta, 6 lse, 7 dout, 8 dk (rw), 9 dv (rw),
//                    10 dbias (rw)
// Without a bias the caller binds any f32 buffer as `bias` (and a scratch buffer as `dbias`);
// the kernels read them only when flags has HAS_BIAS.
//
// Grids: forward and backward_dq run one invocation per query row, x covering Nq in blocks of
// BLOCK, y the head, z the batch item. backward_dkdv runs one invocation per key row, x
// covering Nk, y the bias slices (see there).
//
// The unfused helpers at the end of the file serve the readable matmul + softmax path.

struct Params {
    heads: u32,
    nq: u32,
    nk: u32,
    flags: u32,
    bias_bs: u32,
    bias_hs: u32,
    bias_rs: u32,
    scale: f32,
    q_off: u32,
    k_off: u32,
    row_off: u32,
    bias_off: u32,
    // backward_dkdv: batch items and heads looped inside one invocation, because the bias
    // broadcasts over them and their bias gradients must be summed.
    b_inner: u32,
    h_inner: u32,
    _pad0: u32,
    _pad1: u32,
}

const CAUSAL: u32 = 1u;
const GAUSSIAN: u32 = 2u;
const HAS_BIAS: u32 = 4u;
// backward_dkdv adds to dbias instead of overwriting it (a later batch chunk).
const ACCUMULATE_DBIAS: u32 = 8u;

// Largest head width the register arrays hold.
const MAX_D: u32 = 128u;
// Keys scored before each rescale of the forward accumulator.
const KEY_TILE: u32 = 16u;
// The lowest finite f32: the running maximum before any visible key.
const LOWEST: f32 = -3.40282347e38;

// Head width.
override D: u32 = 64u;
// Query (or key) rows per workgroup.
override BLOCK: u32 = 32u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

// forward
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;

// backward_dq
@group(0) @binding(5) var<storage, read> out_saved: array<f32>;
@group(0) @binding(6) var<storage, read> lse_saved: array<f32>;
@group(0) @binding(7) var<storage, read> dout: array<f32>;
@group(0) @binding(8) var<storage, read_write> dq: array<f32>;
@group(0) @binding(9) var<storage, read_write> delta: array<f32>;

// backward_dkdv (also lse_saved and dout above)
@group(0) @binding(5) var<storage, read> delta_saved: array<f32>;
@group(0) @binding(8) var<storage, read_write> dk: array<f32>;
@group(0) @binding(9) var<storage, read_write> dv: array<f32>;
@group(0) @binding(10) var<storage, read_write> dbias: array<f32>;

fn has(flag: u32) -> bool {
    return (p.flags & flag) != 0u;
}

// One past the last key any row of query block `block` can see. Uniform over the workgroup,
// so the key loops below load each K and V element once per SIMD group rather than per row.
fn key_end(block: u32) -> u32 {
    if (has(CAUSAL)) {
        return min(p.nk, (block + 1u) * BLOCK);
    }
    return p.nk;
}

@compute @workgroup_size(BLOCK)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.y;
    let bh = wid.z * p.heads + h;
    let i = wid.x * BLOCK + lid.x;
    // Rows past Nq compute on the last row and store nothing.
    let row = min(i, p.nq - 1u);
    let causal = has(CAUSAL);
    let gaussian = has(GAUSSIAN);
    let with_bias = has(HAS_BIAS);
    let half_scale = 0.5 * p.scale;

    let q_row = p.q_off + (bh * p.nq + row) * D;
    var qs: array<f32, MAX_D>;
    for (var c = 0u; c < D; c++) {
        qs[c] = q[q_row + c] * p.scale;
    }
    var acc: array<f32, MAX_D>;
    var m = LOWEST;
    var l = 0.0;

    let k_head = p.k_off + bh * p.nk * D;
    let bias_row = p.bias_off + wid.z * p.bias_bs + h * p.bias_hs + row * p.bias_rs;
    let end = key_end(wid.x);
    for (var j0 = 0u; j0 < end; j0 += KEY_TILE) {
        // pass 1: scores of one tile of keys and their maximum over the visible ones.
        var s: array<f32, KEY_TILE>;
        var tile_max = LOWEST;
        for (var t = 0u; t < KEY_TILE; t++) {
            let j = j0 + t;
            if (j < end) {
                let k_row = k_head + j * D;
                var dot = 0.0;
                if (gaussian) {
                    var norm = 0.0;
                    for (var c = 0u; c < D; c++) {
                        let kc = k[k_row + c];
                        dot = fma(qs[c], kc, dot);
                        norm = fma(kc, kc, norm);
                    }
                    dot -= half_scale * norm;
                } else {
                    for (var c = 0u; c < D; c++) {
                        dot = fma(qs[c], k[k_row + c], dot);
                    }
                }
                if (with_bias) {
                    dot += bias[bias_row + j];
                }
                s[t] = dot;
                let visible = !causal || j <= i;
                tile_max = select(tile_max, max(tile_max, dot), visible);
            }
        }

        // pass 2: rescale the accumulator once per tile, then add the tile's values.
        let m_new = max(m, tile_max);
        let correction = exp(m - m_new);
        l *= correction;
        for (var c = 0u; c < D; c++) {
            acc[c] *= correction;
        }
        for (var t = 0u; t < KEY_TILE; t++) {
            let j = j0 + t;
            if (j < end) {
                let visible = !causal || j <= i;
                let weight = select(0.0, exp(s[t] - m_new), visible);
                l += weight;
                let v_row = k_head + j * D;
                for (var c = 0u; c < D; c++) {
                    acc[c] = fma(weight, v[v_row + c], acc[c]);
                }
            }
        }
        m = m_new;
    }

    if (i < p.nq) {
        // l >= 1 once any key was visible, because the maximal key has weight exp(0).
        let empty = l == 0.0;
        let inv = select(1.0 / l, 0.0, empty);
        for (var c = 0u; c < D; c++) {
            out[q_row + c] = acc[c] * inv;
        }
        lse[p.row_off + bh * p.nq + i] = select(m + log(l), 0.0, empty);
    }
}

// dq_i = scale * sum_j ds_ij k_j with ds_ij = P_ij (dout_i . v_j - D_i); also stores D_i.
@compute @workgroup_size(BLOCK)
fn backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.y;
    let bh = wid.z * p.heads + h;
    let i = wid.x * BLOCK + lid.x;
    let row = min(i, p.nq - 1u);
    let causal = has(CAUSAL);
    let gaussian = has(GAUSSIAN);
    let with_bias = has(HAS_BIAS);
    let half_scale = 0.5 * p.scale;

    let q_row = p.q_off + (bh * p.nq + row) * D;
    var qs: array<f32, MAX_D>;
    var dos: array<f32, MAX_D>;
    var row_delta = 0.0;
    for (var c = 0u; c < D; c++) {
        qs[c] = q[q_row + c] * p.scale;
        let g = dout[q_row + c];
        dos[c] = g;
        row_delta = fma(g, out_saved[q_row + c], row_delta);
    }
    let row_lse = lse_saved[p.row_off + bh * p.nq + row];

    var acc: array<f32, MAX_D>;
    var kr: array<f32, MAX_D>;
    let k_head = p.k_off + bh * p.nk * D;
    let bias_row = p.bias_off + wid.z * p.bias_bs + h * p.bias_hs + row * p.bias_rs;
    let end = key_end(wid.x);
    for (var j = 0u; j < end; j++) {
        let k_row = k_head + j * D;
        var dot = 0.0;
        var norm = 0.0;
        var dp = 0.0;
        for (var c = 0u; c < D; c++) {
            let kc = k[k_row + c];
            kr[c] = kc;
            dot = fma(qs[c], kc, dot);
            norm = fma(kc, kc, norm);
            dp = fma(dos[c], v[k_row + c], dp);
        }
        if (gaussian) {
            dot -= half_scale * norm;
        }
        if (with_bias) {
            dot += bias[bias_row + j];
        }
        let visible = !causal || j <= i;
        let weight = select(0.0, exp(dot - row_lse), visible);
        let ds = weight * (dp - row_delta);
        for (var c = 0u; c < D; c++) {
            acc[c] = fma(ds, kr[c], acc[c]);
        }
    }

    if (i < p.nq) {
        for (var c = 0u; c < D; c++) {
            dq[q_row + c] = acc[c] * p.scale;
        }
        delta[p.row_off + bh * p.nq + i] = row_delta;
    }
}

// dv_j = sum_i P_ij dout_i, dk_j = scale * sum_i ds_ij (q_i [- k_j] for Gaussian logits), and
// the bias gradient ds_ij summed over the bias's broadcast axes.
//
// One invocation per key row of one bias slice: workgroup y indexes the slices, and each
// invocation loops over the b_inner x h_inner (batch item, head) pairs that share its slice.
// Because it alone owns column j of the slice, it sums the slice's bias gradient without
// atomics: in a register when the bias broadcasts over the rows, else in dbias itself.
@compute @workgroup_size(BLOCK)
fn backward_dkdv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = wid.x * BLOCK + lid.x;
    let col = min(j, p.nk - 1u);
    let key_valid = j < p.nk;
    let causal = has(CAUSAL);
    let gaussian = has(GAUSSIAN);
    let with_bias = has(HAS_BIAS);
    let half_scale = 0.5 * p.scale;
    let rows_broadcast = p.bias_rs == 0u;

    let slices_per_batch = p.heads / p.h_inner;
    let b_outer = wid.y / slices_per_batch;
    let h_outer = wid.y % slices_per_batch;
    // Queries before the block's first key see none of its keys.
    var row_start = 0u;
    if (causal) {
        row_start = min(wid.x * BLOCK, p.nq);
    }

    var kr: array<f32, MAX_D>;
    var vr: array<f32, MAX_D>;
    var qi: array<f32, MAX_D>;
    var gi: array<f32, MAX_D>;
    var dk_acc: array<f32, MAX_D>;
    var dv_acc: array<f32, MAX_D>;
    var dbias_sum = 0.0;
    for (var bi = 0u; bi < p.b_inner; bi++) {
        for (var hi = 0u; hi < p.h_inner; hi++) {
            let b = b_outer * p.b_inner + bi;
            let h = h_outer * p.h_inner + hi;
            let bh = b * p.heads + h;
            let first_pair = bi == 0u && hi == 0u && !has(ACCUMULATE_DBIAS);

            let k_row = p.k_off + (bh * p.nk + col) * D;
            var norm = 0.0;
            for (var c = 0u; c < D; c++) {
                let kc = k[k_row + c];
                kr[c] = kc;
                norm = fma(kc, kc, norm);
                vr[c] = v[k_row + c];
                dk_acc[c] = 0.0;
                dv_acc[c] = 0.0;
            }
            var k_term = 0.0;
            if (gaussian) {
                k_term = half_scale * norm;
            }
            var ds_sum = 0.0;

            let bias_col = p.bias_off + b * p.bias_bs + h * p.bias_hs + col;
            for (var i = row_start; i < p.nq; i++) {
                let q_row = p.q_off + (bh * p.nq + i) * D;
                var dot = 0.0;
                var dp = 0.0;
                for (var c = 0u; c < D; c++) {
                    let qc = q[q_row + c];
                    let gc = dout[q_row + c];
                    qi[c] = qc;
                    gi[c] = gc;
                    dot = fma(qc, kr[c], dot);
                    dp = fma(gc, vr[c], dp);
                }
                var s = dot * p.scale - k_term;
                if (with_bias) {
                    s += bias[bias_col + i * p.bias_rs];
                }
                let stat = p.row_off + bh * p.nq + i;
                let visible = key_valid && (!causal || j <= i);
                let weight = select(0.0, exp(s - lse_saved[stat]), visible);
                let ds = weight * (dp - delta_saved[stat]);
                for (var c = 0u; c < D; c++) {
                    dv_acc[c] = fma(weight, gi[c], dv_acc[c]);
                    dk_acc[c] = fma(ds, qi[c], dk_acc[c]);
                }
                ds_sum += ds;
                if (with_bias) {
                    if (rows_broadcast) {
                        dbias_sum += ds;
                    } else if (key_valid) {
                        let index = bias_col + i * p.bias_rs;
                        if (first_pair) {
                            dbias[index] = ds;
                        } else {
                            dbias[index] += ds;
                        }
                    }
                }
            }
            // Causal rows before row_start still need their (zero) bias gradient written.
            if (with_bias && !rows_broadcast && first_pair && key_valid) {
                for (var i = 0u; i < row_start; i++) {
                    dbias[bias_col + i * p.bias_rs] = 0.0;
                }
            }

            if (key_valid) {
                // d s_ij / d k_j = scale * q_i, minus scale * k_j for Gaussian logits.
                var k_scale = 0.0;
                if (gaussian) {
                    k_scale = p.scale * ds_sum;
                }
                for (var c = 0u; c < D; c++) {
                    dk[k_row + c] = dk_acc[c] * p.scale - k_scale * kr[c];
                    dv[k_row + c] = dv_acc[c];
                }
            }
        }
    }

    if (with_bias && rows_broadcast && key_valid) {
        let index = p.bias_off + b_outer * p.b_inner * p.bias_bs + h_outer * p.h_inner * p.bias_hs + col;
        if (has(ACCUMULATE_DBIAS)) {
            dbias[index] += dbias_sum;
        } else {
            dbias[index] = dbias_sum;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers of the unfused path: scores = scale * q @ k^T come from the matmul; these kernels
// add the bias and the Gaussian key term, mask, and normalise, each row by one invocation.
// NOTE: they stand in for the shared softmax op of fiak::ops::softmax, which was not yet
// available when this path was written.
//
// Bindings:
//   unfused_key_norms            1 norm_keys [B, H, Nk, D], 2 norms (rw) [B, H, Nk]
//   unfused_softmax              1 probs (rw) [B, H, Nq, Nk] (the scores on entry),
//                                2 softmax_bias (bias-shaped), 3 softmax_norms [B, H, Nk]
//                                (read only with GAUSSIAN)
//   unfused_softmax_backward     1 saved_probs [B, H, Nq, Nk], 2 grad (rw) [B, H, Nq, Nk]
//                                (dP on entry, dS on exit)
//   unfused_gaussian_key_grad    1 ds_in [B, H, Nq, Nk], 2 grad_keys [B, H, Nk, D],
//                                3 dk_inout (rw) [B, H, Nk, D]
//   unfused_sum_to_bias          1 ds_in [B, H, Nq, Nk], 2 dbias_out (rw) bias-shaped
// Offsets from the window bindings: q_off for the [.., Nq, Nk] tensors, k_off for the
// [.., Nk, D] ones, row_off for the norms, bias_off for the bias and its gradient.

@group(0) @binding(1) var<storage, read> norm_keys: array<f32>;
@group(0) @binding(2) var<storage, read_write> norms: array<f32>;

@group(0) @binding(1) var<storage, read_write> probs: array<f32>;
@group(0) @binding(2) var<storage, read> softmax_bias: array<f32>;
@group(0) @binding(3) var<storage, read> softmax_norms: array<f32>;

@group(0) @binding(1) var<storage, read> saved_probs: array<f32>;
@group(0) @binding(2) var<storage, read_write> grad: array<f32>;

@group(0) @binding(1) var<storage, read> ds_in: array<f32>;
@group(0) @binding(2) var<storage, read> grad_keys: array<f32>;
@group(0) @binding(3) var<storage, read_write> dk_inout: array<f32>;

@group(0) @binding(2) var<storage, read_write> dbias_out: array<f32>;

// Grid: x covers Nk, y the head, z the batch item.
@compute @workgroup_size(64)
fn unfused_key_norms(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= p.nk) {
        return;
    }
    let r = (gid.z * p.heads + gid.y) * p.nk + j;
    var norm = 0.0;
    for (var c = 0u; c < D; c++) {
        let kc = norm_keys[p.k_off + r * D + c];
        norm = fma(kc, kc, norm);
    }
    norms[p.row_off + r] = norm;
}

// Grid: x covers Nq, y the head, z the batch item.
@compute @workgroup_size(64)
fn unfused_softmax(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.nq) {
        return;
    }
    let h = gid.y;
    let bh = gid.z * p.heads + h;
    let causal = has(CAUSAL);
    let row = p.q_off + (bh * p.nq + i) * p.nk;
    let bias_row = p.bias_off + gid.z * p.bias_bs + h * p.bias_hs + i * p.bias_rs;
    let norm_row = p.row_off + bh * p.nk;
    var end = p.nk;
    if (causal) {
        end = min(p.nk, i + 1u);
    }

    // pass 1: final scores and their maximum.
    var m = LOWEST;
    for (var j = 0u; j < end; j++) {
        var s = probs[row + j];
        if (has(GAUSSIAN)) {
            s -= 0.5 * p.scale * softmax_norms[norm_row + j];
        }
        if (has(HAS_BIAS)) {
            s += softmax_bias[bias_row + j];
        }
        probs[row + j] = s;
        m = max(m, s);
    }
    // pass 2: exponentials and their sum.
    var l = 0.0;
    for (var j = 0u; j < end; j++) {
        let e = exp(probs[row + j] - m);
        probs[row + j] = e;
        l += e;
    }
    // pass 3: normalise; masked keys get probability 0.
    let inv = select(1.0 / l, 0.0, l == 0.0);
    for (var j = 0u; j < p.nk; j++) {
        probs[row + j] = select(0.0, probs[row + j] * inv, j < end);
    }
}

// dS_ij = P_ij (dP_ij - sum_j' P_ij' dP_ij'). Grid as unfused_softmax.
@compute @workgroup_size(64)
fn unfused_softmax_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.nq) {
        return;
    }
    let row = p.q_off + ((gid.z * p.heads + gid.y) * p.nq + i) * p.nk;
    var row_delta = 0.0;
    for (var j = 0u; j < p.nk; j++) {
        row_delta = fma(saved_probs[row + j], grad[row + j], row_delta);
    }
    for (var j = 0u; j < p.nk; j++) {
        grad[row + j] = saved_probs[row + j] * (grad[row + j] - row_delta);
    }
}

// dk_j -= scale * k_j * sum_i dS_ij, the Gaussian key term. Grid: x covers Nk, y the head,
// z the batch item.
@compute @workgroup_size(64)
fn unfused_gaussian_key_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= p.nk) {
        return;
    }
    let bh = gid.z * p.heads + gid.y;
    var ds_sum = 0.0;
    for (var i = 0u; i < p.nq; i++) {
        ds_sum += ds_in[p.q_off + (bh * p.nq + i) * p.nk + j];
    }
    let k_row = p.k_off + (bh * p.nk + j) * D;
    for (var c = 0u; c < D; c++) {
        dk_inout[k_row + c] -= p.scale * ds_sum * grad_keys[k_row + c];
    }
}

// dbias(b', h', i', j) = sum of dS over the axes the bias broadcasts. Grid: x covers Nk,
// y the bias rows (Nq or 1), z the bias slices (bias batch x bias heads). b_inner and h_inner
// hold the batch items and heads summed into one slice; bias_rs is 0 when the rows are summed.
@compute @workgroup_size(64)
fn unfused_sum_to_bias(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= p.nk) {
        return;
    }
    let slices_per_batch = p.heads / p.h_inner;
    let b_outer = gid.z / slices_per_batch;
    let h_outer = gid.z % slices_per_batch;
    var rows = 1u;
    var i0 = gid.y;
    if (p.bias_rs == 0u) {
        rows = p.nq;
        i0 = 0u;
    }
    var total = 0.0;
    for (var bi = 0u; bi < p.b_inner; bi++) {
        for (var hi = 0u; hi < p.h_inner; hi++) {
            let bh = (b_outer * p.b_inner + bi) * p.heads + h_outer * p.h_inner + hi;
            for (var r = 0u; r < rows; r++) {
                total += ds_in[p.q_off + (bh * p.nq + i0 + r) * p.nk + j];
            }
        }
    }
    let index = p.bias_off + b_outer * p.b_inner * p.bias_bs + h_outer * p.h_inner * p.bias_hs + gid.y * p.bias_rs + j;
    if (has(ACCUMULATE_DBIAS)) {
        dbias_out[index] += total;
    } else {
        dbias_out[index] = total;
    }
}
