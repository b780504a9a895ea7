// Key-gathered sparse attention over a CSR pruning pattern, forward and backward. Each
// invocation owns one query row (forward, backward_dq) or one key (backward_dkdv) of one
// batch item and head, and reads only the kept entries of that row or key: O(nnz d) work.
//
//   s_e = scale * q_i . k_j  [- scale / 2 * |k_j|^2 for Gaussian logits]  [+ bias_e]
// for kept entry e = (h, i, j); keys j > i are skipped when causal. A row without a visible
// kept key gets o_i = 0 and lse_i = 0, and no gradient.
//
// Bindings of forward:
//   1  q            [B, H, Nq, D]
//   2  k            [B, H, Nk, D]
//   3  v            [B, H, Nk, D]
//   4  row_offsets  u32 [H, Nq + 1], counting across heads
//   5  key_index    u32 [nnz], ascending keys per row
//   6  bias         [nnz] per kept entry, shared by the batch (read when flags & HAS_BIAS)
//   7  out          [B, H, Nq, D]
//   8  lse          [B, H, Nq]
// Bindings of backward_dq (one invocation per (h, i), looping over the batch so the bias
// gradient of an entry is summed in a fixed order):
//   1 q, 2 k, 3 v, 4 row_offsets, 5 key_index, 6 bias, 7 out, 8 lse, 9 dout,
//   10 dq [B, H, Nq, D], 11 delta [B, H, Nq] (dout_i . out_i, written here), 12 dbias [nnz]
// Bindings of backward_dkdv (one invocation per (b, h, j), over the transposed pattern):
//   1 q, 2 k, 3 v, 4 col_offsets u32 [H, Nk + 1], 5 col_rows u32 [nnz] (query row of each
//   entry, by key), 6 bias, 7 col_entries u32 [nnz] (entry index e), 8 lse, 9 dout,
//   10 dk, 11 dv, 12 delta

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
const LOWEST: f32 = -3.40282347e38;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> offsets: array<u32>;
@group(0) @binding(5) var<storage, read> indices: array<u32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;

// forward
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
@group(0) @binding(8) var<storage, read_write> lse_out: array<f32>;

fn has(flag: u32) -> bool {
    return (p.flags & flag) != 0u;
}

// Score of query row `qi` (element offset) against key row `kj` for kept entry `e`.
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

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    // x: row i, y: head, z: batch item.
    let i = gid.x;
    let h = gid.y;
    let b = gid.z;
    if (i >= p.nq) {
        return;
    }
    let row = (b * p.heads + h) * p.nq + i;
    let qi = row * p.d;
    let kv_base = (b * p.heads + h) * p.nk;
    let start = offsets[h * (p.nq + 1u) + i];
    let end = offsets[h * (p.nq + 1u) + i + 1u];

    var acc: array<f32, MAX_D>;
    for (var c = 0u; c < p.d; c++) {
        acc[c] = 0.0;
    }
    var running_max = LOWEST;
    var total = 0.0;
    for (var e = start; e < end; e++) {
        let j = indices[e];
        if (!visible(i, j)) {
            continue;
        }
        let kj = (kv_base + j) * p.d;
        let s = score(qi, kj, e);
        // Online softmax: rescale what was summed when the maximum grows.
        let new_max = max(running_max, s);
        let correction = exp(running_max - new_max);
        let weight = exp(s - new_max);
        total = total * correction + weight;
        for (var c = 0u; c < p.d; c++) {
            acc[c] = acc[c] * correction + weight * v[kj + c];
        }
        running_max = new_max;
    }
    let inv = select(0.0, 1.0 / total, total > 0.0);
    for (var c = 0u; c < p.d; c++) {
        out[qi + c] = acc[c] * inv;
    }
    lse_out[row] = select(0.0, running_max + log(total), total > 0.0);
}
