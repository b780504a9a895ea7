// Backward of key-gathered sparse attention (see attention_csr.wgsl for the forward and the
// score). With p_e = exp(s_e - lse_i), delta_i = dout_i . out_i and
// ds_e = p_e * (dout_i . v_j - delta_i):
//   dq_i = sum_e ds_e * scale * k_j
//   dk_j = sum_e ds_e * scale * (q_i [- k_j for Gaussian logits])
//   dv_j = sum_e p_e * dout_i
//   dbias_e = sum over the batch of ds_e
//
// Bindings of backward_dq (one invocation per (h, i), looping over the batch so the bias
// gradient of an entry sums in a fixed order):
//   1 q [B, H, Nq, D], 2 k [B, H, Nk, D], 3 v, 4 row_offsets u32 [H, Nq + 1],
//   5 key_index u32 [nnz], 6 bias [nnz], 7 out [B, H, Nq, D] (f32 bits read through the u32
//   binding that backward_dkdv uses for its entry indices), 8 lse [B, H, Nq],
//   9 dout [B, H, Nq, D], 10 dq (written), 11 delta [B, H, Nq] (written), 12 dbias [nnz]
//   (written)
// Bindings of backward_dkdv (one invocation per (b, h, j), over the transposed pattern):
//   1 q, 2 k, 3 v, 4 col_offsets u32 [H, Nk + 1], 5 col_rows u32 [nnz] (query row of each
//   entry in key order), 6 bias [nnz], 7 col_entries u32 [nnz] (the entry index e),
//   8 lse, 9 dout, 10 dk (written), 11 dv (written), 12 delta

struct Params {
    batch: u32,
    heads: u32,
    nq: u32,
    nk: u32,
    d: u32,
    flags: u32,
    scale: f32,
    _pad: u32,
}

const CAUSAL: u32 = 1u;
const GAUSSIAN: u32 = 2u;
const HAS_BIAS: u32 = 4u;
const MAX_D: u32 = 128u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> offsets: array<u32>;
@group(0) @binding(5) var<storage, read> indices: array<u32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;
@group(0) @binding(7) var<storage, read> aux: array<u32>;
@group(0) @binding(8) var<storage, read> lse: array<f32>;
@group(0) @binding(9) var<storage, read> dout: array<f32>;
@group(0) @binding(10) var<storage, read_write> grad_a: array<f32>;
@group(0) @binding(11) var<storage, read_write> grad_b: array<f32>;
@group(0) @binding(12) var<storage, read_write> grad_c: array<f32>;

fn has(flag: u32) -> bool {
    return (p.flags & flag) != 0u;
}

fn score(qi: u32, kj: u32, e: u32) -> f32 {
    var dot = 0.0;
    var norm = 0.0;
    for (var c = 0u; c < p.d; c++) {
        let kv = k[kj + c];
        dot += q[qi + c] * kv;
        norm += kv * kv;
    }
    var s = p.scale * dot;
    if (has(GAUSSIAN)) {
        s -= 0.5 * p.scale * norm;
    }
    if (has(HAS_BIAS)) {
        s += bias[e];
    }
    return s;
}

fn visible(i: u32, j: u32) -> bool {
    return !has(CAUSAL) || j <= i;
}

// grad_a = dq, grad_b = delta, grad_c = dbias, aux = the bits of `out`.
@compute @workgroup_size(64)
fn backward_dq(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let h = gid.y;
    if (i >= p.nq) {
        return;
    }
    let start = offsets[h * (p.nq + 1u) + i];
    let end = offsets[h * (p.nq + 1u) + i + 1u];
    for (var e = start; e < end; e++) {
        grad_c[e] = 0.0;
    }

    for (var b = 0u; b < p.batch; b++) {
        let row = (b * p.heads + h) * p.nq + i;
        let qi = row * p.d;
        let kv_base = (b * p.heads + h) * p.nk;
        var delta = 0.0;
        for (var c = 0u; c < p.d; c++) {
            delta += dout[qi + c] * bitcast<f32>(aux[qi + c]);
        }
        grad_b[row] = delta;
        let row_lse = lse[row];

        var acc: array<f32, MAX_D>;
        for (var c = 0u; c < p.d; c++) {
            acc[c] = 0.0;
        }
        for (var e = start; e < end; e++) {
            let j = indices[e];
            if (!visible(i, j)) {
                continue;
            }
            let kj = (kv_base + j) * p.d;
            let prob = exp(score(qi, kj, e) - row_lse);
            var dp = 0.0;
            for (var c = 0u; c < p.d; c++) {
                dp += dout[qi + c] * v[kj + c];
            }
            let ds = prob * (dp - delta);
            grad_c[e] += ds;
            for (var c = 0u; c < p.d; c++) {
                acc[c] += ds * p.scale * k[kj + c];
            }
        }
        for (var c = 0u; c < p.d; c++) {
            grad_a[qi + c] = acc[c];
        }
    }
}

// grad_a = dk, grad_b = dv, grad_c = delta (read only), offsets/indices/aux = the transposed
// pattern: key j of head h owns entries col_offsets[h, j] .. col_offsets[h, j + 1].
@compute @workgroup_size(64)
fn backward_dkdv(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let h = gid.y;
    let b = gid.z;
    if (j >= p.nk) {
        return;
    }
    let start = offsets[h * (p.nk + 1u) + j];
    let end = offsets[h * (p.nk + 1u) + j + 1u];
    let kj = ((b * p.heads + h) * p.nk + j) * p.d;

    var dk: array<f32, MAX_D>;
    var dv: array<f32, MAX_D>;
    for (var c = 0u; c < p.d; c++) {
        dk[c] = 0.0;
        dv[c] = 0.0;
    }
    for (var t = start; t < end; t++) {
        let i = indices[t];
        if (!visible(i, j)) {
            continue;
        }
        let e = aux[t];
        let row = (b * p.heads + h) * p.nq + i;
        let qi = row * p.d;
        let prob = exp(score(qi, kj, e) - lse[row]);
        var dp = 0.0;
        for (var c = 0u; c < p.d; c++) {
            dp += dout[qi + c] * v[kj + c];
        }
        let ds = prob * (dp - grad_c[row]);
        for (var c = 0u; c < p.d; c++) {
            var dscore_dk = q[qi + c];
            if (has(GAUSSIAN)) {
                dscore_dk -= k[kj + c];
            }
            dk[c] += ds * p.scale * dscore_dk;
            dv[c] += prob * dout[qi + c];
        }
    }
    for (var c = 0u; c < p.d; c++) {
        grad_a[kj + c] = dk[c];
        grad_b[kj + c] = dv[c];
    }
}
