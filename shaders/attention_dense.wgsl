// Fused dense attention with an additive bias (the log prior), FlashAttention style: the
// forward keeps a running maximum and sum per query row and never stores the Nq x Nk scores.
// The backward recomputes the scores from the saved row log-sum-exp.
//
//   s_ij = scale * q_i . k_j  [- scale / 2 * |k_j|^2 for Gaussian logits]  [+ bias_ij]
//   o_i  = sum_j softmax_j(s_ij) v_j,  lse_i = log sum_j exp(s_ij)
//
// over the visible keys j of row i: j < Nk, and j <= i when causal. A row without a visible
// key gets o_i = 0 and lse_i = 0, and no gradient flows through it.
//
// With KEY_LIST the kernels read only the keys of a per-head list, which serves the keys-only
// layout of gathered attention: slot t of head h holds key keys[H + 1 + keys[h] + t], for
// t < keys[h + 1] - keys[h], in ascending key order, and the bias holds one value per kept
// entry, shared by the batch: entry (h, i, t) at bias_off + Nq * keys[h] + i * count_h + t.
// Without KEY_LIST, slot t is key t of all Nk keys.
//
// Layouts for the `batch` items one dispatch covers. The rows of width D are read as D / 4
// vec4 (the caller pads other widths with zeros), and offsets count vec4 for them:
//   q, out, dout, dq   [B, H, Nq, D]  row (b, h, i) starts at q_off + ((b * H + h) * Nq + i) * D / 4
//   k, v, dk, dv       [B, H, Nk, D]  row (b, h, j) starts at k_off + ((b * H + h) * Nk + j) * D / 4
//   lse, delta         [B, H, Nq]     element (b, h, i) at row_off + (b * H + h) * Nq + i
//   bias, dbias        [B|1, H|1, Nq|1, Nk]  element (b, h, i, j) at
//                      bias_off + b * bias_bs + h * bias_hs + i * bias_rs + j; a stride is 0 on
//                      a broadcast axis (or per kept entry with KEY_LIST, as above)
//   keys               u32 [H + 1 + kept keys], read only with KEY_LIST
// `delta` holds D_i = dout_i . out_i, which both backward kernels need.
//
// Bindings, per entry point (binding 0 is always the uniform Params):
//   forward          1 q, 2 k, 3 v, 4 bias, 5 keys, 6 out (rw), 7 lse (rw)
//   backward_dq      1 q, 2 k, 3 v, 4 bias, 5 keys, 6 out, 7 lse, 8 dout, 9 dq (rw),
//                    10 delta (rw)
//   backward_dkdv    1 q, 2 k, 3 v, 4 bias, 5 keys, 6 delta, 7 lse, 8 dout, 9 dk (rw),
//                    10 dv (rw), 11 dbias (rw)
// Without a bias (or key list) the caller binds any buffer of the right type in its place,
// and a scratch buffer as `dbias`; the kernels read them only when their flag is set.
//
// Work split: every invocation owns ROWS query rows (key slots in backward_dkdv) and walks the
// other side in tiles of TILE rows. A tile's scores sit in registers, and each loaded element
// of q, k, v and dout serves ROWS or TILE products; loads are the expensive part on CPU
// adapters such as lavapipe. The output rows serve as accumulators between tiles, so no
// array of width D stays in registers, and one pipeline serves every head width.
//
// Tile rows load through mine_* and pick_* (q, k, v, dout), which the Rust side appends from
// shaders/parts/: plain loads there, or shared through subgroup shuffles on CPU adapters.
//
// Grids: forward and backward_dq: x covers Nq in blocks of BLOCK * ROWS rows, y the head, z the
// batch item. backward_dkdv: x covers the key slots, y the bias slices (see there).

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
    // Head width in vec4.
    d4: u32,
    // Head width in elements, for the unfused helpers.
    d: u32,
}

const CAUSAL: u32 = 1u;
const GAUSSIAN: u32 = 2u;
const HAS_BIAS: u32 = 4u;
// backward_dkdv adds to dbias instead of overwriting it (a later batch chunk).
const ACCUMULATE_DBIAS: u32 = 8u;
const KEY_LIST: u32 = 16u;

// Query rows (or key slots) per invocation, and rows of the other side per tile.
const ROWS: u32 = 4u;
const TILE: u32 = 16u;
// The lowest finite f32: the running maximum before any visible key.
const LOWEST: f32 = -3.40282347e38;

// Invocations per workgroup.
override BLOCK: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read> keys: array<u32>;

// forward
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> lse: array<f32>;

// backward_dq
@group(0) @binding(6) var<storage, read> out_saved: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> lse_saved: array<f32>;
@group(0) @binding(8) var<storage, read> dout: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> dq: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> delta: array<f32>;

// backward_dkdv (also lse_saved and dout above)
@group(0) @binding(6) var<storage, read> delta_saved: array<f32>;
@group(0) @binding(9) var<storage, read_write> dk: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> dv: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> dbias: array<f32>;

// This invocation's lane in its subgroup of 8, for the shared tile loaders.
var<private> lane: u32;

// The rows of a tile this lane loads for column chunk c when lanes share tiles.
struct Pair {
    first: vec4<f32>,
    second: vec4<f32>,
}

// The offsets of the two rows of a tile that this lane loads when lanes share tiles.
fn my_rows(rows: array<u32, TILE>) -> vec2<u32> {
    return vec2<u32>(rows[2u * lane], rows[2u * lane + 1u]);
}

fn has(flag: u32) -> bool {
    return (p.flags & flag) != 0u;
}

// Number of key slots of head h.
fn slot_count(h: u32) -> u32 {
    if (has(KEY_LIST)) {
        return keys[h + 1u] - keys[h];
    }
    return p.nk;
}

// Start of head h's list among all kept keys.
fn slot_start(h: u32) -> u32 {
    if (has(KEY_LIST)) {
        return keys[h];
    }
    return 0u;
}

// Key index of slot t of the list starting at `start`.
fn key_of(start: u32, t: u32) -> u32 {
    if (has(KEY_LIST)) {
        return keys[p.heads + 1u + start + t];
    }
    return t;
}

// Bias element of (batch item b, head h, row 0, slot 0), and the stride between rows.
fn bias_base(b: u32, h: u32, start: u32) -> u32 {
    if (has(KEY_LIST)) {
        return p.bias_off + p.nq * start;
    }
    return p.bias_off + b * p.bias_bs + h * p.bias_hs;
}

fn bias_row_stride(count: u32) -> u32 {
    if (has(KEY_LIST)) {
        return count;
    }
    return p.bias_rs;
}

// Query rows and key tiles shared by forward and backward_dq.
struct RowBlock {
    bh: u32,
    first_row: u32,
    // The last row of the workgroup: with a causal mask, later keys are invisible to all of
    // its rows.
    last_row: u32,
    count: u32,
    start: u32,
    k_head: u32,
    bias_base: u32,
    bias_rs: u32,
}

fn row_block(wid: vec3<u32>, lid: vec3<u32>) -> RowBlock {
    let d4 = p.d4;
    var blk: RowBlock;
    let h = wid.y;
    blk.bh = wid.z * p.heads + h;
    blk.first_row = (wid.x * BLOCK + lid.x) * ROWS;
    blk.last_row = (wid.x + 1u) * BLOCK * ROWS - 1u;
    blk.count = slot_count(h);
    blk.start = slot_start(h);
    blk.k_head = p.k_off + blk.bh * p.nk * d4;
    blk.bias_base = bias_base(wid.z, h, blk.start);
    blk.bias_rs = bias_row_stride(blk.count);
    return blk;
}

// Finishes the scores of a tile in place: scale, Gaussian key term and bias. `visible[r][t]`
// tells whether row r sees the key of slot t0 + t.
fn finish_scores(
    blk: RowBlock,
    t0: u32,
    key_ids: array<u32, TILE>,
    norms: array<f32, TILE>,
    s: ptr<function, array<array<f32, TILE>, ROWS>>,
    visible: ptr<function, array<array<bool, TILE>, ROWS>>,
) {
    let causal = has(CAUSAL);
    let gaussian = has(GAUSSIAN);
    let with_bias = has(HAS_BIAS);
    for (var r = 0u; r < ROWS; r++) {
        let i = blk.first_row + r;
        let bias_row = blk.bias_base + min(i, p.nq - 1u) * blk.bias_rs;
        for (var t = 0u; t < TILE; t++) {
            var x = (*s)[r][t] * p.scale;
            if (gaussian) {
                x -= 0.5 * p.scale * norms[t];
            }
            if (with_bias) {
                x += bias[bias_row + min(t0 + t, blk.count - 1u)];
            }
            (*s)[r][t] = x;
            (*visible)[r][t] = t0 + t < blk.count && (!causal || key_ids[t] <= i);
        }
    }
}

@compute @workgroup_size(BLOCK)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    lane = lid.x % 8u;
    let d4 = p.d4;
    let blk = row_block(wid, lid);
    let causal = has(CAUSAL);
    let gaussian = has(GAUSSIAN);

    var q_rows: array<u32, ROWS>;
    var m: array<f32, ROWS>;
    var l: array<f32, ROWS>;
    for (var r = 0u; r < ROWS; r++) {
        q_rows[r] = p.q_off + (blk.bh * p.nq + min(blk.first_row + r, p.nq - 1u)) * d4;
        m[r] = LOWEST;
        l[r] = 0.0;
    }

    var first_tile = true;
    for (var t0 = 0u; t0 < blk.count; t0 += TILE) {
        var key_rows: array<u32, TILE>;
        var key_ids: array<u32, TILE>;
        for (var t = 0u; t < TILE; t++) {
            key_ids[t] = key_of(blk.start, min(t0 + t, blk.count - 1u));
            key_rows[t] = blk.k_head + key_ids[t] * d4;
        }
        // Keys ascend, so once the tile's first key is past the block, so is every later one.
        if (causal && key_ids[0] > blk.last_row) {
            break;
        }
        let mine = my_rows(key_rows);

        // pass 1: raw scores q . k of ROWS x TILE pairs, and the key norms.
        var s: array<array<f32, TILE>, ROWS>;
        var norms: array<f32, TILE>;
        for (var c = 0u; c < d4; c++) {
            let mk = mine_k(mine, c);
            var kc: array<vec4<f32>, TILE>;
            for (var t = 0u; t < TILE; t++) {
                kc[t] = pick_k(key_rows[t], mk, t, c);
            }
            if (gaussian) {
                for (var t = 0u; t < TILE; t++) {
                    norms[t] += dot(kc[t], kc[t]);
                }
            }
            for (var r = 0u; r < ROWS; r++) {
                let qc = q[q_rows[r] + c];
                for (var t = 0u; t < TILE; t++) {
                    s[r][t] += dot(qc, kc[t]);
                }
            }
        }
        var visible: array<array<bool, TILE>, ROWS>;
        finish_scores(blk, t0, key_ids, norms, &s, &visible);

        // pass 2: online softmax. s turns into the tile's weights exp(s - m_new); the earlier
        // tiles' sums shrink by exp(m_old - m_new).
        var correction: array<f32, ROWS>;
        for (var r = 0u; r < ROWS; r++) {
            var m_new = m[r];
            for (var t = 0u; t < TILE; t++) {
                m_new = select(m_new, max(m_new, s[r][t]), visible[r][t]);
            }
            correction[r] = exp(m[r] - m_new);
            var sum = 0.0;
            for (var t = 0u; t < TILE; t++) {
                let weight = select(0.0, exp(s[r][t] - m_new), visible[r][t]);
                s[r][t] = weight;
                sum += weight;
            }
            l[r] = l[r] * correction[r] + sum;
            m[r] = m_new;
        }

        // pass 3: out = correction * out + weights @ V, accumulated in the output rows.
        for (var c = 0u; c < d4; c++) {
            let mv = mine_v(mine, c);
            var vc: array<vec4<f32>, TILE>;
            for (var t = 0u; t < TILE; t++) {
                vc[t] = pick_v(key_rows[t], mv, t, c);
            }
            for (var r = 0u; r < ROWS; r++) {
                if (blk.first_row + r < p.nq) {
                    var acc = vec4<f32>(0.0);
                    if (!first_tile) {
                        acc = out[q_rows[r] + c] * correction[r];
                    }
                    for (var t = 0u; t < TILE; t++) {
                        acc = fma(vec4<f32>(s[r][t]), vc[t], acc);
                    }
                    out[q_rows[r] + c] = acc;
                }
            }
        }
        first_tile = false;
    }

    for (var r = 0u; r < ROWS; r++) {
        let i = blk.first_row + r;
        if (i < p.nq) {
            // l >= 1 once any key was visible, because the maximal key has weight exp(0).
            let empty = l[r] == 0.0;
            let inv = select(1.0 / l[r], 0.0, empty);
            for (var c = 0u; c < d4; c++) {
                if (first_tile) {
                    out[q_rows[r] + c] = vec4<f32>(0.0);
                } else {
                    out[q_rows[r] + c] *= inv;
                }
            }
            lse[p.row_off + blk.bh * p.nq + i] = select(m[r] + log(l[r]), 0.0, empty);
        }
    }
}

// dq_i = scale * sum_j ds_ij k_j with ds_ij = P_ij (dout_i . v_j - D_i); also stores D_i.
@compute @workgroup_size(BLOCK)
fn backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    lane = lid.x % 8u;
    let d4 = p.d4;
    let blk = row_block(wid, lid);
    let causal = has(CAUSAL);
    let gaussian = has(GAUSSIAN);

    var q_rows: array<u32, ROWS>;
    var row_lse: array<f32, ROWS>;
    var row_delta: array<f32, ROWS>;
    for (var r = 0u; r < ROWS; r++) {
        let row = min(blk.first_row + r, p.nq - 1u);
        q_rows[r] = p.q_off + (blk.bh * p.nq + row) * d4;
        row_lse[r] = lse_saved[p.row_off + blk.bh * p.nq + row];
        var sum = 0.0;
        for (var c = 0u; c < d4; c++) {
            sum += dot(dout[q_rows[r] + c], out_saved[q_rows[r] + c]);
        }
        row_delta[r] = sum;
    }

    var first_tile = true;
    for (var t0 = 0u; t0 < blk.count; t0 += TILE) {
        var key_rows: array<u32, TILE>;
        var key_ids: array<u32, TILE>;
        for (var t = 0u; t < TILE; t++) {
            key_ids[t] = key_of(blk.start, min(t0 + t, blk.count - 1u));
            key_rows[t] = blk.k_head + key_ids[t] * d4;
        }
        if (causal && key_ids[0] > blk.last_row) {
            break;
        }
        let mine = my_rows(key_rows);

        // pass 1: scores q . k and dP = dout . v of ROWS x TILE pairs.
        var s: array<array<f32, TILE>, ROWS>;
        var dp: array<array<f32, TILE>, ROWS>;
        var norms: array<f32, TILE>;
        for (var c = 0u; c < d4; c++) {
            let mk = mine_k(mine, c);
            let mv = mine_v(mine, c);
            var kc: array<vec4<f32>, TILE>;
            var vc: array<vec4<f32>, TILE>;
            for (var t = 0u; t < TILE; t++) {
                kc[t] = pick_k(key_rows[t], mk, t, c);
                vc[t] = pick_v(key_rows[t], mv, t, c);
            }
            if (gaussian) {
                for (var t = 0u; t < TILE; t++) {
                    norms[t] += dot(kc[t], kc[t]);
                }
            }
            for (var r = 0u; r < ROWS; r++) {
                let qc = q[q_rows[r] + c];
                let gc = dout[q_rows[r] + c];
                for (var t = 0u; t < TILE; t++) {
                    s[r][t] += dot(qc, kc[t]);
                    dp[r][t] += dot(gc, vc[t]);
                }
            }
        }
        var visible: array<array<bool, TILE>, ROWS>;
        finish_scores(blk, t0, key_ids, norms, &s, &visible);

        // pass 2: s turns into scale * ds = scale * P (dP - D).
        for (var r = 0u; r < ROWS; r++) {
            for (var t = 0u; t < TILE; t++) {
                let weight = select(0.0, exp(s[r][t] - row_lse[r]), visible[r][t]);
                s[r][t] = p.scale * weight * (dp[r][t] - row_delta[r]);
            }
        }

        // pass 3: dq += scale * ds @ K, accumulated in the dq rows.
        for (var c = 0u; c < d4; c++) {
            let mk = mine_k(mine, c);
            var kc: array<vec4<f32>, TILE>;
            for (var t = 0u; t < TILE; t++) {
                kc[t] = pick_k(key_rows[t], mk, t, c);
            }
            for (var r = 0u; r < ROWS; r++) {
                if (blk.first_row + r < p.nq) {
                    var acc = vec4<f32>(0.0);
                    if (!first_tile) {
                        acc = dq[q_rows[r] + c];
                    }
                    for (var t = 0u; t < TILE; t++) {
                        acc = fma(vec4<f32>(s[r][t]), kc[t], acc);
                    }
                    dq[q_rows[r] + c] = acc;
                }
            }
        }
        first_tile = false;
    }

    for (var r = 0u; r < ROWS; r++) {
        let i = blk.first_row + r;
        if (i < p.nq) {
            if (first_tile) {
                for (var c = 0u; c < d4; c++) {
                    dq[q_rows[r] + c] = vec4<f32>(0.0);
                }
            }
            delta[p.row_off + blk.bh * p.nq + i] = row_delta[r];
        }
    }
}

// Bias gradient of a bias broadcast over the rows: writes (or adds, for a later batch chunk)
// the sums of the ROWS = 4 key slots from first_slot in the slice of (b_outer, h_outer).
fn store_slot_dbias(b_outer: u32, h_outer: u32, first_slot: u32, sums: vec4<f32>) {
    let slice_base = p.bias_off + b_outer * p.b_inner * p.bias_bs + h_outer * p.h_inner * p.bias_hs;
    for (var r = 0u; r < ROWS; r++) {
        let slot = first_slot + r;
        if (slot < p.nk) {
            if (has(ACCUMULATE_DBIAS)) {
                dbias[slice_base + slot] += sums[r];
            } else {
                dbias[slice_base + slot] = sums[r];
            }
        }
    }
}

// Zeroes the bias gradient of one key slot in rows 0 .. rows, which see none of the block's
// keys under a causal mask. `entry` is the slot's element in row 0.
fn zero_dbias_rows(entry: u32, row_stride: u32, rows: u32) {
    for (var i = 0u; i < rows; i++) {
        dbias[entry + i * row_stride] = 0.0;
    }
}

// dv_j = sum_i P_ij dout_i, dk_j = scale * sum_i ds_ij (q_i [- k_j] for Gaussian logits), and
// the bias gradient ds_ij summed over the bias's broadcast axes.
//
// Every invocation owns ROWS key slots of one bias slice: workgroup y indexes the slices, and
// each invocation loops over the b_inner x h_inner (batch item, head) pairs that share its
// slice. Because it alone owns those columns of the slice, it sums their bias gradients
// without atomics: in registers when the bias broadcasts over the rows, else in dbias itself.
// With KEY_LIST, dk and dv rows of keys outside the lists are left as they are (zero).
@compute @workgroup_size(BLOCK)
fn backward_dkdv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    lane = lid.x % 8u;
    let d4 = p.d4;
    let causal = has(CAUSAL);
    let gaussian = has(GAUSSIAN);
    let with_bias = has(HAS_BIAS);
    let rows_broadcast = p.bias_rs == 0u && !has(KEY_LIST);
    let block_slot = wid.x * BLOCK * ROWS;
    let first_slot = (wid.x * BLOCK + lid.x) * ROWS;

    let slices_per_batch = p.heads / p.h_inner;
    let b_outer = wid.y / slices_per_batch;
    let h_outer = wid.y % slices_per_batch;

    var dbias_sum: array<f32, ROWS>;
    for (var bi = 0u; bi < p.b_inner; bi++) {
        for (var hi = 0u; hi < p.h_inner; hi++) {
            let b = b_outer * p.b_inner + bi;
            let h = h_outer * p.h_inner + hi;
            let bh = b * p.heads + h;
            let first_pair = bi == 0u && hi == 0u && !has(ACCUMULATE_DBIAS);
            let count = slot_count(h);
            if (block_slot >= count) {
                continue;
            }
            let start = slot_start(h);
            let slice_base = bias_base(b, h, start);
            let slice_rs = bias_row_stride(count);

            var key_rows: array<u32, ROWS>;
            var key_ids: array<u32, ROWS>;
            var slots: array<u32, ROWS>;
            var norms: array<f32, ROWS>;
            for (var r = 0u; r < ROWS; r++) {
                slots[r] = min(first_slot + r, count - 1u);
                key_ids[r] = key_of(start, slots[r]);
                key_rows[r] = p.k_off + (bh * p.nk + key_ids[r]) * d4;
                var norm = 0.0;
                if (gaussian) {
                    for (var c = 0u; c < d4; c++) {
                        let kc = k[key_rows[r] + c];
                        norm += dot(kc, kc);
                    }
                }
                norms[r] = norm;
            }
            // Queries before the block's first key see none of its keys.
            var row_start = 0u;
            if (causal) {
                row_start = min(key_of(start, block_slot), p.nq);
            }

            var ds_sum: array<f32, ROWS>;
            var first_tile = true;
            for (var i0 = row_start; i0 < p.nq; i0 += TILE) {
                var q_rows: array<u32, TILE>;
                var tile_lse: array<f32, TILE>;
                var tile_delta: array<f32, TILE>;
                for (var t = 0u; t < TILE; t++) {
                    let row = min(i0 + t, p.nq - 1u);
                    q_rows[t] = p.q_off + (bh * p.nq + row) * d4;
                    tile_lse[t] = lse_saved[p.row_off + bh * p.nq + row];
                    tile_delta[t] = delta_saved[p.row_off + bh * p.nq + row];
                }
                let mine = my_rows(q_rows);

                // pass 1: scores and dP of ROWS keys x TILE queries.
                var s: array<array<f32, TILE>, ROWS>;
                var dp: array<array<f32, TILE>, ROWS>;
                for (var c = 0u; c < d4; c++) {
                    let mq = mine_q(mine, c);
                    let mg = mine_dout(mine, c);
                    var qc: array<vec4<f32>, TILE>;
                    var gc: array<vec4<f32>, TILE>;
                    for (var t = 0u; t < TILE; t++) {
                        qc[t] = pick_q(q_rows[t], mq, t, c);
                        gc[t] = pick_dout(q_rows[t], mg, t, c);
                    }
                    for (var r = 0u; r < ROWS; r++) {
                        let kc = k[key_rows[r] + c];
                        let vc = v[key_rows[r] + c];
                        for (var t = 0u; t < TILE; t++) {
                            s[r][t] += dot(kc, qc[t]);
                            dp[r][t] += dot(vc, gc[t]);
                        }
                    }
                }

                // pass 2: s turns into P and dp into scale * ds; the bias gradient is ds.
                for (var r = 0u; r < ROWS; r++) {
                    let slot_valid = first_slot + r < count;
                    for (var t = 0u; t < TILE; t++) {
                        let i = i0 + t;
                        var x = s[r][t] * p.scale - 0.5 * p.scale * norms[r];
                        let bias_index = slice_base + min(i, p.nq - 1u) * slice_rs + slots[r];
                        if (with_bias) {
                            x += bias[bias_index];
                        }
                        let visible = slot_valid && i < p.nq && (!causal || key_ids[r] <= i);
                        let weight = select(0.0, exp(x - tile_lse[t]), visible);
                        let ds = weight * (dp[r][t] - tile_delta[t]);
                        s[r][t] = weight;
                        dp[r][t] = p.scale * ds;
                        ds_sum[r] += ds;
                        if (with_bias) {
                            if (rows_broadcast) {
                                dbias_sum[r] += ds;
                            } else if (slot_valid && i < p.nq) {
                                if (first_pair) {
                                    dbias[bias_index] = ds;
                                } else {
                                    dbias[bias_index] += ds;
                                }
                            }
                        }
                    }
                }

                // pass 3: dv += P^T @ dout and dk += scale * ds^T @ Q in the output rows.
                for (var c = 0u; c < d4; c++) {
                    let mq = mine_q(mine, c);
                    let mg = mine_dout(mine, c);
                    var qc: array<vec4<f32>, TILE>;
                    var gc: array<vec4<f32>, TILE>;
                    for (var t = 0u; t < TILE; t++) {
                        qc[t] = pick_q(q_rows[t], mq, t, c);
                        gc[t] = pick_dout(q_rows[t], mg, t, c);
                    }
                    for (var r = 0u; r < ROWS; r++) {
                        if (first_slot + r < count) {
                            var dv_acc = vec4<f32>(0.0);
                            var dk_acc = vec4<f32>(0.0);
                            if (!first_tile) {
                                dv_acc = dv[key_rows[r] + c];
                                dk_acc = dk[key_rows[r] + c];
                            }
                            for (var t = 0u; t < TILE; t++) {
                                dv_acc = fma(vec4<f32>(s[r][t]), gc[t], dv_acc);
                                dk_acc = fma(vec4<f32>(dp[r][t]), qc[t], dk_acc);
                            }
                            dv[key_rows[r] + c] = dv_acc;
                            dk[key_rows[r] + c] = dk_acc;
                        }
                    }
                }
                first_tile = false;
            }

            for (var r = 0u; r < ROWS; r++) {
                if (first_slot + r >= count) {
                    continue;
                }
                if (first_tile) {
                    for (var c = 0u; c < d4; c++) {
                        dk[key_rows[r] + c] = vec4<f32>(0.0);
                        dv[key_rows[r] + c] = vec4<f32>(0.0);
                    }
                } else if (gaussian) {
                    // d s_ij / d k_j = scale * (q_i - k_j): the k_j part sums over the rows.
                    for (var c = 0u; c < d4; c++) {
                        dk[key_rows[r] + c] -= p.scale * ds_sum[r] * k[key_rows[r] + c];
                    }
                }
                // Rows before row_start still need their (zero) bias gradient.
                if (with_bias && !rows_broadcast && first_pair) {
                    zero_dbias_rows(slice_base + slots[r], slice_rs, row_start);
                }
            }
        }
    }

    if (with_bias && rows_broadcast) {
        store_slot_dbias(b_outer, h_outer, first_slot, vec4<f32>(dbias_sum[0], dbias_sum[1], dbias_sum[2], dbias_sum[3]));
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
    for (var c = 0u; c < p.d; c++) {
        let kc = norm_keys[p.k_off + r * p.d + c];
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
    let k_row = p.k_off + (bh * p.nk + j) * p.d;
    for (var c = 0u; c < p.d; c++) {
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

// Copies rows between widths: dst[r, c] = src[r, c] for c < min(src_width, dst_width), and 0
// for the rest of a wider row. Pads head widths to a multiple of 4 for the fused kernels, and
// crops their results back.
//
// Bindings: 1 copy_src [rows, src_width], 2 copy_dst (rw) [rows, dst_width]
// Params: nq = rows, nk = src_width, d = dst_width, q_off and k_off the offsets of src and
// dst. Grid: x covers dst_width, y and z the rows
// (y + z * 65535).

@group(0) @binding(1) var<storage, read> copy_src: array<f32>;
@group(0) @binding(2) var<storage, read_write> copy_dst: array<f32>;

@compute @workgroup_size(64)
fn copy_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.y + gid.z * 65535u;
    let c = gid.x;
    if (row >= p.nq || c >= p.d) {
        return;
    }
    var x = 0.0;
    if (c < p.nk) {
        x = copy_src[p.q_off + row * p.nk + c];
    }
    copy_dst[p.k_off + row * p.d + c] = x;
}
