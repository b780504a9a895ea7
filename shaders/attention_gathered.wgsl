// Key-gathered sparse attention over a pruning pattern with a key list per query row (CSR).
// Each invocation owns one query row (one key in backward_dkdv) and reads only the K and V
// rows of its kept entries, so work is O(nnz D) and nothing of size Nq x Nk exists.
//
//   s_ie = scale * q_i . k_j  [- scale / 2 * |k_j|^2 for Gaussian logits]  [+ bias_e]
//
// for the kept entries e = (i, j) of row i; with CAUSAL an entry j > i is masked too. A row
// without a visible entry gets out = 0 and lse = 0. Patterns whose rows share one key list per
// head run on the fused dense kernels instead (attention_dense.wgsl, KEY_LIST), and so may
// other patterns, over the union of their rows' keys with the dropped entries masked, where
// that reads less (see gathered.rs); gather_entries below moves their bias and its gradient.
//
// Pattern, u32, shared by the batch:
//   row_offsets  [H, Nq + 1]  head h, row i owns entries row_offsets[h, i] .. row_offsets[h, i + 1];
//                             offsets count across heads
//   key_index    [nnz]        key of each entry, ascending within a row
//   csc          [H * (Nk + 1) + 2 nnz]  the transpose for backward_dkdv: column offsets
//                             [H, Nk + 1], then the row of each entry in column order, then
//                             its position in row order (for the bias)
//   bias, dbias  [nnz]        per entry, in row order, shared by the batch
//
// Layouts of q, k, v and their gradients as in attention_dense.wgsl: rows of D = 4 * d4
// elements read as vec4, offsets q_off and k_off in vec4; lse and delta [B, H, Nq] from
// row_off.
//
// Bindings, per entry point (binding 0 is always the uniform Params):
//   forward_rows        1 q, 2 k, 3 v, 4 bias, 5 row_offsets, 6 key_index, 7 out (rw),
//                       8 lse (rw)
//   backward_dq_rows    1 q, 2 k, 3 v, 4 bias, 5 row_offsets, 6 key_index, 7 out, 8 lse,
//                       9 dout, 10 dq (rw), 11 delta (rw), 12 dbias (rw)
//   backward_dkdv_rows  1 q, 2 k, 3 v, 4 bias, 5 csc, 6 lse, 7 delta, 8 dout, 9 dk (rw),
//                       10 dv (rw)
// Without a bias the caller binds any f32 buffer as `bias` and a scratch buffer as `dbias`.
//
// Grids: x covers the rows (keys for backward_dkdv) in blocks of BLOCK, y the head, z the
// batch item (batch items / b_inner for backward_dq_rows).

struct Params {
    heads: u32,
    nq: u32,
    nk: u32,
    flags: u32,
    nnz: u32,
    scale: f32,
    q_off: u32,
    k_off: u32,
    row_off: u32,
    // backward_dq_rows: batch items looped inside one invocation, whose bias gradients sum.
    b_inner: u32,
    d4: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
    _pad4: u32,
}

const CAUSAL: u32 = 1u;
const GAUSSIAN: u32 = 2u;
const HAS_BIAS: u32 = 4u;
// backward_dq_rows adds to dbias instead of overwriting it (a later batch chunk).
const ACCUMULATE_DBIAS: u32 = 8u;

// Entries per tile: a tile's scores sit in registers between the passes.
const TILE: u32 = 16u;
// The lowest finite f32: the running maximum before any visible entry.
const LOWEST: f32 = -3.40282347e38;

// Invocations per workgroup.
override BLOCK: u32 = 32u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

// forward_rows
@group(0) @binding(5) var<storage, read> row_offsets: array<u32>;
@group(0) @binding(6) var<storage, read> key_index: array<u32>;
@group(0) @binding(7) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> lse: array<f32>;

// backward_dq_rows (also row_offsets and key_index above)
@group(0) @binding(7) var<storage, read> out_saved: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> lse_saved: array<f32>;
@group(0) @binding(9) var<storage, read> dout: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> dq: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> delta: array<f32>;
@group(0) @binding(12) var<storage, read_write> dbias: array<f32>;

// backward_dkdv_rows
@group(0) @binding(5) var<storage, read> csc: array<u32>;
@group(0) @binding(6) var<storage, read> lse_keys: array<f32>;
@group(0) @binding(7) var<storage, read> delta_saved: array<f32>;
@group(0) @binding(8) var<storage, read> dout_keys: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> dk: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> dv: array<vec4<f32>>;

fn has(flag: u32) -> bool {
    return (p.flags & flag) != 0u;
}

// Scores of one tile of a row's entries e0 .. e0 + TILE (clamped to the row's last entry),
// with the Gaussian key term and the bias, and which of them row i sees.
fn tile_scores(
    q_row: u32,
    k_head: u32,
    i: u32,
    e0: u32,
    end: u32,
    key_rows: array<u32, TILE>,
    key_ids: array<u32, TILE>,
    s: ptr<function, array<f32, TILE>>,
    visible: ptr<function, array<bool, TILE>>,
) {
    let gaussian = has(GAUSSIAN);
    var norms: array<f32, TILE>;
    for (var c = 0u; c < p.d4; c++) {
        let qc = q[q_row + c];
        for (var t = 0u; t < TILE; t++) {
            let kc = k[key_rows[t] + c];
            (*s)[t] += dot(qc, kc);
            if (gaussian) {
                norms[t] += dot(kc, kc);
            }
        }
    }
    for (var t = 0u; t < TILE; t++) {
        var x = (*s)[t] * p.scale - 0.5 * p.scale * norms[t];
        if (has(HAS_BIAS)) {
            x += bias[min(e0 + t, end - 1u)];
        }
        (*s)[t] = x;
        (*visible)[t] = e0 + t < end && (!has(CAUSAL) || key_ids[t] <= i);
    }
}

@compute @workgroup_size(BLOCK)
fn forward_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.y;
    let bh = wid.z * p.heads + h;
    let i = wid.x * BLOCK + lid.x;
    let row = min(i, p.nq - 1u);
    let q_row = p.q_off + (bh * p.nq + row) * p.d4;
    let k_head = p.k_off + bh * p.nk * p.d4;
    let start = row_offsets[h * (p.nq + 1u) + row];
    var end = row_offsets[h * (p.nq + 1u) + row + 1u];
    if (i >= p.nq) {
        end = start;
    }

    var m = LOWEST;
    var l = 0.0;
    var first_tile = true;
    for (var e0 = start; e0 < end; e0 += TILE) {
        var key_rows: array<u32, TILE>;
        var key_ids: array<u32, TILE>;
        for (var t = 0u; t < TILE; t++) {
            key_ids[t] = key_index[min(e0 + t, end - 1u)];
            key_rows[t] = k_head + key_ids[t] * p.d4;
        }
        // Keys ascend, so once the tile's first key is past the row, so is every later one.
        if (has(CAUSAL) && key_ids[0] > i) {
            break;
        }
        var s: array<f32, TILE>;
        var visible: array<bool, TILE>;
        tile_scores(q_row, k_head, i, e0, end, key_rows, key_ids, &s, &visible);

        // Online softmax: s turns into the tile's weights exp(s - m_new).
        var m_new = m;
        for (var t = 0u; t < TILE; t++) {
            m_new = select(m_new, max(m_new, s[t]), visible[t]);
        }
        let correction = exp(m - m_new);
        var sum = 0.0;
        for (var t = 0u; t < TILE; t++) {
            let weight = select(0.0, exp(s[t] - m_new), visible[t]);
            s[t] = weight;
            sum += weight;
        }
        l = l * correction + sum;
        m = m_new;

        for (var c = 0u; c < p.d4; c++) {
            var acc = vec4<f32>(0.0);
            if (!first_tile) {
                acc = out[q_row + c] * correction;
            }
            for (var t = 0u; t < TILE; t++) {
                acc = fma(vec4<f32>(s[t]), v[key_rows[t] + c], acc);
            }
            out[q_row + c] = acc;
        }
        first_tile = false;
    }

    if (i < p.nq) {
        let empty = l == 0.0;
        let inv = select(1.0 / l, 0.0, empty);
        for (var c = 0u; c < p.d4; c++) {
            if (first_tile) {
                out[q_row + c] = vec4<f32>(0.0);
            } else {
                out[q_row + c] *= inv;
            }
        }
        lse[p.row_off + bh * p.nq + i] = select(m + log(l), 0.0, empty);
    }
}

// dq_i = scale * sum_e ds_ie k_j, and the per-entry bias gradient summed over the batch: each
// invocation owns row i of head h for b_inner batch items, so it alone writes its entries.
@compute @workgroup_size(BLOCK)
fn backward_dq_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.y;
    let i = wid.x * BLOCK + lid.x;
    let row = min(i, p.nq - 1u);
    let start = row_offsets[h * (p.nq + 1u) + row];
    var end = row_offsets[h * (p.nq + 1u) + row + 1u];
    if (i >= p.nq) {
        end = start;
    }

    for (var bi = 0u; bi < p.b_inner; bi++) {
        let bh = (wid.z * p.b_inner + bi) * p.heads + h;
        let first_item = bi == 0u && !has(ACCUMULATE_DBIAS);
        let q_row = p.q_off + (bh * p.nq + row) * p.d4;
        let k_head = p.k_off + bh * p.nk * p.d4;
        var row_delta = 0.0;
        for (var c = 0u; c < p.d4; c++) {
            row_delta += dot(dout[q_row + c], out_saved[q_row + c]);
        }
        let row_lse = lse_saved[p.row_off + bh * p.nq + row];

        var first_tile = true;
        var e0 = start;
        for (; e0 < end; e0 += TILE) {
            var key_rows: array<u32, TILE>;
            var key_ids: array<u32, TILE>;
            for (var t = 0u; t < TILE; t++) {
                key_ids[t] = key_index[min(e0 + t, end - 1u)];
                key_rows[t] = k_head + key_ids[t] * p.d4;
            }
            if (has(CAUSAL) && key_ids[0] > i) {
                break;
            }
            var s: array<f32, TILE>;
            var visible: array<bool, TILE>;
            tile_scores(q_row, k_head, i, e0, end, key_rows, key_ids, &s, &visible);
            var dp: array<f32, TILE>;
            for (var c = 0u; c < p.d4; c++) {
                let gc = dout[q_row + c];
                for (var t = 0u; t < TILE; t++) {
                    dp[t] += dot(gc, v[key_rows[t] + c]);
                }
            }

            // s turns into scale * ds; the bias gradient is ds.
            for (var t = 0u; t < TILE; t++) {
                let weight = select(0.0, exp(s[t] - row_lse), visible[t]);
                let ds = weight * (dp[t] - row_delta);
                s[t] = p.scale * ds;
                if (has(HAS_BIAS) && e0 + t < end) {
                    if (first_item) {
                        dbias[e0 + t] = ds;
                    } else {
                        dbias[e0 + t] += ds;
                    }
                }
            }

            for (var c = 0u; c < p.d4; c++) {
                var acc = vec4<f32>(0.0);
                if (!first_tile) {
                    acc = dq[q_row + c];
                }
                for (var t = 0u; t < TILE; t++) {
                    acc = fma(vec4<f32>(s[t]), k[key_rows[t] + c], acc);
                }
                dq[q_row + c] = acc;
            }
            first_tile = false;
        }
        // Entries after a causal break are masked: their bias gradient is zero.
        if (has(HAS_BIAS) && first_item) {
            for (var e = e0; e < end; e++) {
                dbias[e] = 0.0;
            }
        }

        if (i < p.nq) {
            if (first_tile) {
                for (var c = 0u; c < p.d4; c++) {
                    dq[q_row + c] = vec4<f32>(0.0);
                }
            }
            delta[p.row_off + bh * p.nq + i] = row_delta;
        }
    }
}

// dv_j = sum_e P_ie dout_i and dk_j = scale * sum_e ds_ie (q_i [- k_j]) over the entries of
// key j, found through the transposed pattern.
@compute @workgroup_size(BLOCK)
fn backward_dkdv_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.y;
    let bh = wid.z * p.heads + h;
    let j = wid.x * BLOCK + lid.x;
    let col = min(j, p.nk - 1u);
    let start = csc[h * (p.nk + 1u) + col];
    var end = csc[h * (p.nk + 1u) + col + 1u];
    if (j >= p.nk) {
        end = start;
    }
    let rows_at = p.heads * (p.nk + 1u);
    let entries_at = rows_at + p.nnz;
    let gaussian = has(GAUSSIAN);

    let k_row = p.k_off + (bh * p.nk + col) * p.d4;
    var norm = 0.0;
    if (gaussian) {
        for (var c = 0u; c < p.d4; c++) {
            let kc = k[k_row + c];
            norm += dot(kc, kc);
        }
    }

    var ds_sum = 0.0;
    var first_tile = true;
    for (var e0 = start; e0 < end; e0 += TILE) {
        var rows: array<u32, TILE>;
        var q_rows: array<u32, TILE>;
        for (var t = 0u; t < TILE; t++) {
            rows[t] = csc[rows_at + min(e0 + t, end - 1u)];
            q_rows[t] = p.q_off + (bh * p.nq + rows[t]) * p.d4;
        }

        // pass 1: scores and dP of the key against its tile of query rows.
        var s: array<f32, TILE>;
        var dp: array<f32, TILE>;
        for (var c = 0u; c < p.d4; c++) {
            let kc = k[k_row + c];
            let vc = v[k_row + c];
            for (var t = 0u; t < TILE; t++) {
                s[t] += dot(kc, q[q_rows[t] + c]);
                dp[t] += dot(vc, dout_keys[q_rows[t] + c]);
            }
        }

        // pass 2: s turns into P and dp into scale * ds.
        for (var t = 0u; t < TILE; t++) {
            let e = min(e0 + t, end - 1u);
            var x = s[t] * p.scale - 0.5 * p.scale * norm;
            if (has(HAS_BIAS)) {
                x += bias[csc[entries_at + e]];
            }
            let stat = p.row_off + bh * p.nq + rows[t];
            let visible = e0 + t < end && (!has(CAUSAL) || j <= rows[t]);
            let weight = select(0.0, exp(x - lse_keys[stat]), visible);
            let ds = weight * (dp[t] - delta_saved[stat]);
            s[t] = weight;
            dp[t] = p.scale * ds;
            ds_sum += ds;
        }

        // pass 3: dv += P^T dout and dk += scale * ds^T q, in the output rows.
        for (var c = 0u; c < p.d4; c++) {
            var dv_acc = vec4<f32>(0.0);
            var dk_acc = vec4<f32>(0.0);
            if (!first_tile) {
                dv_acc = dv[k_row + c];
                dk_acc = dk[k_row + c];
            }
            for (var t = 0u; t < TILE; t++) {
                dv_acc = fma(vec4<f32>(s[t]), dout_keys[q_rows[t] + c], dv_acc);
                dk_acc = fma(vec4<f32>(dp[t]), q[q_rows[t] + c], dk_acc);
            }
            dv[k_row + c] = dv_acc;
            dk[k_row + c] = dk_acc;
        }
        first_tile = false;
    }

    if (j < p.nk) {
        for (var c = 0u; c < p.d4; c++) {
            if (first_tile) {
                dk[k_row + c] = vec4<f32>(0.0);
                dv[k_row + c] = vec4<f32>(0.0);
            } else if (gaussian) {
                // d s_ij / d k_j = scale * (q_i - k_j): the k_j part sums over the entries.
                dk[k_row + c] -= p.scale * ds_sum * k[k_row + c];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Copies per-entry values between the CSR order of a pattern and its key-union grid (see
// KeyUnion in src/ops/attention/pattern.rs): dst[x] = src[index[x]], or `fill` where
// index[x] is NONE; without HAS_BIAS the copied value is 0 instead of src[index[x]].
//
// Bindings: 1 gather_src [any], 2 gather_index u32 [nnz], 3 gather_dst (rw) [nnz].
// Params: nnz = the number of values, scale = fill. Grid: x + 65535 y covers nnz in blocks
// of 64.

const NONE: u32 = 0xffffffffu;

@group(0) @binding(1) var<storage, read> gather_src: array<f32>;
@group(0) @binding(2) var<storage, read> gather_index: array<u32>;
@group(0) @binding(3) var<storage, read_write> gather_dst: array<f32>;

@compute @workgroup_size(64)
fn gather_entries(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let x = (wid.x + 65535u * wid.y) * 64u + lid.x;
    if (x >= p.nnz) {
        return;
    }
    let index = gather_index[x];
    var value = p.scale;
    if (index != NONE) {
        value = select(0.0, gather_src[index], has(HAS_BIAS));
    }
    gather_dst[x] = value;
}
