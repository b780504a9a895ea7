// The fused kernels of attention_dense.wgsl for CPU adapters with 8-lane subgroups, appended
// after it and after attention_tiles_subgroup.wgsl. Same bindings, Params, grids and results;
// entry points forward_subgroup, backward_dq_subgroup and backward_dkdv_subgroup.
//
// On such adapters (lavapipe) a storage load runs lane by lane, and so does every access to
// a private array that the compiler keeps in memory (one filled in a loop with loads or
// branches, or indexed by the lane), while arithmetic on private values runs on whole SIMD
// vectors. So each invocation holds its ROWS = 4 rows as the four components of vec4 values:
// the scores of a tile are TILE vec4, one per key, and masks, maxima and sums are vec4
// operations. Its rows of q (k in backward_dkdv) come as chunks transposed into a mat4x4,
// column j holding element 4 c + j of the four rows, so that this matrix times chunk c of a
// key gives the four rows' partial dot products. Per-key values of a tile (key indices, norms,
// lse, D) stay with the lane that loaded them and travel by shuffles.
//
// The accumulators (out, dq, dk, dv) live in the output rows between tiles, as in the plain
// kernels. Private arrays as wide as a head would save those loads, but lavapipe takes
// minutes to compile such shaders.

// Chunk c of four rows (offsets in vec4) of q, dout, k or v, transposed.
fn rows_q(rows: vec4<u32>, c: u32) -> mat4x4<f32> {
    return transpose(mat4x4<f32>(q[rows.x + c], q[rows.y + c], q[rows.z + c], q[rows.w + c]));
}

fn rows_dout(rows: vec4<u32>, c: u32) -> mat4x4<f32> {
    return transpose(mat4x4<f32>(dout[rows.x + c], dout[rows.y + c], dout[rows.z + c], dout[rows.w + c]));
}

fn rows_k(rows: vec4<u32>, c: u32) -> mat4x4<f32> {
    return transpose(mat4x4<f32>(k[rows.x + c], k[rows.y + c], k[rows.z + c], k[rows.w + c]));
}

fn rows_v(rows: vec4<u32>, c: u32) -> mat4x4<f32> {
    return transpose(mat4x4<f32>(v[rows.x + c], v[rows.y + c], v[rows.z + c], v[rows.w + c]));
}

// Chunk c of four rows of an accumulator, untransposed: column r is row r's chunk.
fn out_rows(rows: vec4<u32>, c: u32) -> mat4x4<f32> {
    return mat4x4<f32>(out[rows.x + c], out[rows.y + c], out[rows.z + c], out[rows.w + c]);
}

fn dq_rows(rows: vec4<u32>, c: u32) -> mat4x4<f32> {
    return mat4x4<f32>(dq[rows.x + c], dq[rows.y + c], dq[rows.z + c], dq[rows.w + c]);
}

fn dk_rows(rows: vec4<u32>, c: u32) -> mat4x4<f32> {
    return mat4x4<f32>(dk[rows.x + c], dk[rows.y + c], dk[rows.z + c], dk[rows.w + c]);
}

fn dv_rows(rows: vec4<u32>, c: u32) -> mat4x4<f32> {
    return mat4x4<f32>(dv[rows.x + c], dv[rows.y + c], dv[rows.z + c], dv[rows.w + c]);
}

// Stores chunk c of the live rows; clamped rows past the end alias the last row.
fn store_out(rows: Rows4, c: u32, a: mat4x4<f32>) {
    for (var r = 0u; r < ROWS; r++) {
        if (rows.live[r]) {
            out[rows.offset[r] + c] = a[r];
        }
    }
}

fn store_dq(rows: Rows4, c: u32, a: mat4x4<f32>) {
    for (var r = 0u; r < ROWS; r++) {
        if (rows.live[r]) {
            dq[rows.offset[r] + c] = a[r];
        }
    }
}

fn store_dkdv(key_rows: vec4<u32>, valid: vec4<bool>, c: u32, dk4: mat4x4<f32>, dv4: mat4x4<f32>) {
    for (var r = 0u; r < ROWS; r++) {
        if (valid[r]) {
            dk[key_rows[r] + c] = dk4[r];
            dv[key_rows[r] + c] = dv4[r];
        }
    }
}

// The accumulator update of chunk c for the four rows, a[r] = a[r] * scale[r] + sum over the
// tile of w[t][r] * x[t]: `scaled` gives the first term, `add_outer` adds one key's term.
fn scaled(a: mat4x4<f32>, scale: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(a[0] * scale.x, a[1] * scale.y, a[2] * scale.z, a[3] * scale.w);
}

fn add_outer(a: ptr<function, mat4x4<f32>>, w: vec4<f32>, x: vec4<f32>) {
    (*a)[0] = fma(vec4<f32>(w.x), x, (*a)[0]);
    (*a)[1] = fma(vec4<f32>(w.y), x, (*a)[1]);
    (*a)[2] = fma(vec4<f32>(w.z), x, (*a)[2]);
    (*a)[3] = fma(vec4<f32>(w.w), x, (*a)[3]);
}

// The four rows of an invocation of forward and backward_dq.
struct Rows4 {
    index: vec4<u32>,
    live: vec4<bool>,
    // Offsets of the (clamped) rows of q, out, dout and dq, in vec4.
    offset: vec4<u32>,
    // Offsets of the rows of the bias.
    bias: vec4<u32>,
}

fn rows4(blk: RowBlock) -> Rows4 {
    var rows: Rows4;
    rows.index = vec4<u32>(blk.first_row) + vec4<u32>(0u, 1u, 2u, 3u);
    rows.live = rows.index < vec4<u32>(p.nq);
    let clamped = min(rows.index, vec4<u32>(p.nq - 1u));
    rows.offset = vec4<u32>(p.q_off + blk.bh * p.nq * p.d4) + clamped * p.d4;
    rows.bias = vec4<u32>(blk.bias_base) + clamped * blk.bias_rs;
    return rows;
}

// The two keys of the tile at t0 that this lane loads for the others (slots t0 + 2 lane and
// t0 + 2 lane + 1, clamped to the list): their key indices and row offsets. Lanes hold them
// and pass them round by shuffles, because a TILE-long array filled in a loop would stay in
// memory, where every access runs lane by lane.
struct LaneKeys {
    ids: vec2<u32>,
    offsets: vec2<u32>,
}

fn lane_keys(blk: RowBlock, t0: u32) -> LaneKeys {
    var keys2: LaneKeys;
    keys2.ids.x = key_of(blk.start, min(t0 + 2u * lane, blk.count - 1u));
    keys2.ids.y = key_of(blk.start, min(t0 + 2u * lane + 1u, blk.count - 1u));
    keys2.offsets = vec2<u32>(blk.k_head) + keys2.ids * p.d4;
    return keys2;
}

// Value t of a tile whose lanes hold values 2 lane and 2 lane + 1 in x and y.
fn tile_u32(mine: vec2<u32>, t: u32) -> u32 {
    return subgroupShuffle(select(mine.x, mine.y, (t & 1u) == 1u), t / 2u);
}

fn tile_f32(mine: vec2<f32>, t: u32) -> f32 {
    return subgroupShuffle(select(mine.x, mine.y, (t & 1u) == 1u), t / 2u);
}

// Turns raw dot products into scores: scale, Gaussian key term and bias; and returns which of
// them the rows see.
fn tile_scores(
    blk: RowBlock,
    rows: Rows4,
    t0: u32,
    ids: vec2<u32>,
    norms: vec2<f32>,
    s: ptr<function, array<vec4<f32>, TILE>>,
) -> array<vec4<bool>, TILE> {
    let unmasked = vec4<bool>(!has(CAUSAL));
    var visible: array<vec4<bool>, TILE>;
    for (var t = 0u; t < TILE; t++) {
        (*s)[t] = (*s)[t] * p.scale;
        let in_list = vec4<bool>(t0 + t < blk.count);
        visible[t] = in_list & (unmasked | (vec4<u32>(tile_u32(ids, t)) <= rows.index));
    }
    if (has(GAUSSIAN)) {
        for (var t = 0u; t < TILE; t++) {
            (*s)[t] -= vec4<f32>(0.5 * p.scale * tile_f32(norms, t));
        }
    }
    if (has(HAS_BIAS)) {
        for (var t = 0u; t < TILE; t++) {
            let j = min(t0 + t, blk.count - 1u);
            (*s)[t] += vec4<f32>(bias[rows.bias.x + j], bias[rows.bias.y + j], bias[rows.bias.z + j], bias[rows.bias.w + j]);
        }
    }
    return visible;
}

@compute @workgroup_size(BLOCK)
fn forward_subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    lane = lid.x % 8u;
    let blk = row_block(wid, lid);
    let rows = rows4(blk);
    let causal = has(CAUSAL);

    var m = vec4<f32>(LOWEST);
    var l = vec4<f32>(0.0);
    var first_tile = true;

    for (var t0 = 0u; t0 < blk.count; t0 += TILE) {
        // Keys ascend, so once the tile's first key is past the block, so is every later one.
        if (causal && key_of(blk.start, t0) > blk.last_row) {
            break;
        }
        let keys2 = lane_keys(blk, t0);
        let mine = keys2.offsets;

        // pass 1: raw scores q . k of 4 rows x TILE keys [TILE] x vec4, and the key norms.
        var s: array<vec4<f32>, TILE>;
        var norms = vec2<f32>(0.0);
        for (var c = 0u; c < p.d4; c++) {
            let mk = mine_k(mine, c);
            norms += vec2<f32>(dot(mk.first, mk.first), dot(mk.second, mk.second));
            let qt = rows_q(rows.offset, c);
            for (var t = 0u; t < TILE; t++) {
                s[t] += qt * pick_k(0u, mk, t, c);
            }
        }
        let visible = tile_scores(blk, rows, t0, keys2.ids, norms, &s);

        // pass 2: online softmax. s turns into the tile's weights exp(s - m_new); the earlier
        // tiles' sums shrink by exp(m_old - m_new).
        var m_new = m;
        for (var t = 0u; t < TILE; t++) {
            m_new = select(m_new, max(m_new, s[t]), visible[t]);
        }
        let correction = exp(m - m_new);
        var sum = vec4<f32>(0.0);
        for (var t = 0u; t < TILE; t++) {
            s[t] = select(vec4<f32>(0.0), exp(s[t] - m_new), visible[t]);
            sum += s[t];
        }
        l = l * correction + sum;
        m = m_new;
        first_tile = false;

        // pass 3: out = correction * out + weights @ V, in the accumulators.
        for (var c = 0u; c < p.d4; c++) {
            let mv = mine_v(mine, c);
            var a = mat4x4<f32>();
            if (!first_tile) {
                a = scaled(out_rows(rows.offset, c), correction);
            }
            for (var t = 0u; t < TILE; t++) {
                add_outer(&a, s[t], pick_v(0u, mv, t, c));
            }
            store_out(rows, c, a);
        }
    }

    // l >= 1 once any key was visible, because the maximal key has weight exp(0).
    let empty = l == vec4<f32>(0.0);
    let inv = select(1.0 / l, vec4<f32>(0.0), empty);
    let row_lse = select(m + log(l), vec4<f32>(0.0), empty);
    for (var r = 0u; r < ROWS; r++) {
        if (rows.live[r]) {
            for (var c = 0u; c < p.d4; c++) {
                let o = rows.offset[r] + c;
                out[o] = select(out[o] * inv[r], vec4<f32>(0.0), first_tile);
            }
            lse[p.row_off + blk.bh * p.nq + rows.index[r]] = row_lse[r];
        }
    }
}

// dq_i = scale * sum_j ds_ij k_j with ds_ij = P_ij (dout_i . v_j - D_i); also stores D_i.
@compute @workgroup_size(BLOCK)
fn backward_dq_subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    lane = lid.x % 8u;
    let blk = row_block(wid, lid);
    let rows = rows4(blk);
    let causal = has(CAUSAL);

    let lse_rows = vec4<u32>(p.row_off + blk.bh * p.nq) + min(rows.index, vec4<u32>(p.nq - 1u));
    let row_lse = vec4<f32>(lse_saved[lse_rows.x], lse_saved[lse_rows.y], lse_saved[lse_rows.z], lse_saved[lse_rows.w]);
    var row_delta = vec4<f32>(0.0);
    for (var c = 0u; c < p.d4; c++) {
        let o = rows.offset;
        let outs = transpose(mat4x4<f32>(out_saved[o.x + c], out_saved[o.y + c], out_saved[o.z + c], out_saved[o.w + c]));
        let g = rows_dout(rows.offset, c);
        row_delta += g[0] * outs[0] + g[1] * outs[1] + g[2] * outs[2] + g[3] * outs[3];
    }
    var first_tile = true;

    for (var t0 = 0u; t0 < blk.count; t0 += TILE) {
        if (causal && key_of(blk.start, t0) > blk.last_row) {
            break;
        }
        let keys2 = lane_keys(blk, t0);
        let mine = keys2.offsets;

        // pass 1: scores q . k and dP = dout . v of 4 rows x TILE keys.
        var s: array<vec4<f32>, TILE>;
        var dp: array<vec4<f32>, TILE>;
        var norms = vec2<f32>(0.0);
        for (var c = 0u; c < p.d4; c++) {
            let mk = mine_k(mine, c);
            let mv = mine_v(mine, c);
            norms += vec2<f32>(dot(mk.first, mk.first), dot(mk.second, mk.second));
            let qt = rows_q(rows.offset, c);
            let gt = rows_dout(rows.offset, c);
            for (var t = 0u; t < TILE; t++) {
                s[t] += qt * pick_k(0u, mk, t, c);
                dp[t] += gt * pick_v(0u, mv, t, c);
            }
        }
        let visible = tile_scores(blk, rows, t0, keys2.ids, norms, &s);

        // pass 2: s turns into scale * ds = scale * P (dP - D).
        for (var t = 0u; t < TILE; t++) {
            let weight = select(vec4<f32>(0.0), exp(s[t] - row_lse), visible[t]);
            s[t] = p.scale * weight * (dp[t] - row_delta);
        }

        // pass 3: dq += scale * ds @ K, in the accumulators.
        for (var c = 0u; c < p.d4; c++) {
            let mk = mine_k(mine, c);
            var a = mat4x4<f32>();
            if (!first_tile) {
                a = dq_rows(rows.offset, c);
            }
            for (var t = 0u; t < TILE; t++) {
                add_outer(&a, s[t], pick_k(0u, mk, t, c));
            }
            store_dq(rows, c, a);
        }
        first_tile = false;
    }

    for (var r = 0u; r < ROWS; r++) {
        if (rows.live[r]) {
            if (first_tile) {
                for (var c = 0u; c < p.d4; c++) {
                    dq[rows.offset[r] + c] = vec4<f32>(0.0);
                }
            }
            delta[p.row_off + blk.bh * p.nq + rows.index[r]] = row_delta[r];
        }
    }
}

// dv_j = sum_i P_ij dout_i, dk_j = scale * sum_i ds_ij (q_i [- k_j] for Gaussian logits), and
// the bias gradient ds_ij summed over the bias's broadcast axes; work split as backward_dkdv,
// with the invocation's 4 key slots as the components of vec4 values.
@compute @workgroup_size(BLOCK)
fn backward_dkdv_subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    lane = lid.x % 8u;
    let causal = has(CAUSAL);
    let gaussian = has(GAUSSIAN);
    let with_bias = has(HAS_BIAS);
    let rows_broadcast = p.bias_rs == 0u && !has(KEY_LIST);
    let block_slot = wid.x * BLOCK * ROWS;
    let first_slot = (wid.x * BLOCK + lid.x) * ROWS;
    let slot_index = vec4<u32>(first_slot) + vec4<u32>(0u, 1u, 2u, 3u);
    let unmasked = vec4<bool>(!causal);

    let slices_per_batch = p.heads / p.h_inner;
    let b_outer = wid.y / slices_per_batch;
    let h_outer = wid.y % slices_per_batch;

    var dbias_sum = vec4<f32>(0.0);
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

            let slot_valid = slot_index < vec4<u32>(count);
            let slots = min(slot_index, vec4<u32>(count - 1u));
            let key_ids = vec4<u32>(key_of(start, slots.x), key_of(start, slots.y), key_of(start, slots.z), key_of(start, slots.w));
            let key_rows = vec4<u32>(p.k_off + bh * p.nk * p.d4) + key_ids * p.d4;
            var norms = vec4<f32>(0.0);
            for (var c = 0u; c < p.d4; c++) {
                let kt = rows_k(key_rows, c);
                norms += kt[0] * kt[0] + kt[1] * kt[1] + kt[2] * kt[2] + kt[3] * kt[3];
            }
            let key_term = select(vec4<f32>(0.0), 0.5 * p.scale * norms, gaussian);
            // Queries before the block's first key see none of its keys.
            var row_start = 0u;
            if (causal) {
                row_start = min(key_of(start, block_slot), p.nq);
            }

            var ds_sum = vec4<f32>(0.0);
            var first_tile = true;
            for (var i0 = row_start; i0 < p.nq; i0 += TILE) {
                // This lane's two queries of the tile, for the others too.
                let my_queries = min(vec2<u32>(i0 + 2u * lane) + vec2<u32>(0u, 1u), vec2<u32>(p.nq - 1u));
                let mine = vec2<u32>(p.q_off + bh * p.nq * p.d4) + my_queries * p.d4;
                let my_stats = vec2<u32>(p.row_off + bh * p.nq) + my_queries;
                let my_lse = vec2<f32>(lse_saved[my_stats.x], lse_saved[my_stats.y]);
                let my_delta = vec2<f32>(delta_saved[my_stats.x], delta_saved[my_stats.y]);

                // pass 1: scores and dP of 4 keys x TILE queries [TILE] x vec4.
                var s: array<vec4<f32>, TILE>;
                var dp: array<vec4<f32>, TILE>;
                for (var c = 0u; c < p.d4; c++) {
                    let mq = mine_q(mine, c);
                    let mg = mine_dout(mine, c);
                    let kt = rows_k(key_rows, c);
                    let vt = rows_v(key_rows, c);
                    for (var t = 0u; t < TILE; t++) {
                        s[t] += kt * pick_q(0u, mq, t, c);
                        dp[t] += vt * pick_dout(0u, mg, t, c);
                    }
                }

                // pass 2: s turns into P and dp into scale * ds; the bias gradient is ds.
                var bias_index: array<vec4<u32>, TILE>;
                for (var t = 0u; t < TILE; t++) {
                    bias_index[t] = vec4<u32>(slice_base + min(i0 + t, p.nq - 1u) * slice_rs) + slots;
                }
                if (with_bias) {
                    for (var t = 0u; t < TILE; t++) {
                        let bi4 = bias_index[t];
                        s[t] = s[t] * p.scale + vec4<f32>(bias[bi4.x], bias[bi4.y], bias[bi4.z], bias[bi4.w]);
                    }
                } else {
                    for (var t = 0u; t < TILE; t++) {
                        s[t] = s[t] * p.scale;
                    }
                }
                var ds_tile: array<vec4<f32>, TILE>;
                for (var t = 0u; t < TILE; t++) {
                    let i = i0 + t;
                    let row_in = vec4<bool>(i < p.nq);
                    let visible = slot_valid & row_in & (unmasked | (key_ids <= vec4<u32>(i)));
                    let weight = select(vec4<f32>(0.0), exp(s[t] - key_term - vec4<f32>(tile_f32(my_lse, t))), visible);
                    let ds = weight * (dp[t] - vec4<f32>(tile_f32(my_delta, t)));
                    s[t] = weight;
                    dp[t] = p.scale * ds;
                    ds_sum += ds;
                    ds_tile[t] = ds;
                }
                if (with_bias) {
                    if (rows_broadcast) {
                        for (var t = 0u; t < TILE; t++) {
                            dbias_sum += ds_tile[t];
                        }
                    } else {
                        for (var t = 0u; t < TILE; t++) {
                            if (i0 + t < p.nq) {
                                for (var r = 0u; r < ROWS; r++) {
                                    if (slot_valid[r]) {
                                        let index = bias_index[t][r];
                                        if (first_pair) {
                                            dbias[index] = ds_tile[t][r];
                                        } else {
                                            dbias[index] += ds_tile[t][r];
                                        }
                                    }
                                }
                            }
                        }
                    }
                }

                // pass 3: dv += P^T @ dout and dk += scale * ds^T @ Q in the accumulators.
                for (var c = 0u; c < p.d4; c++) {
                    let mq = mine_q(mine, c);
                    let mg = mine_dout(mine, c);
                    var a = mat4x4<f32>();
                    var bv = mat4x4<f32>();
                    if (!first_tile) {
                        a = dk_rows(key_rows, c);
                        bv = dv_rows(key_rows, c);
                    }
                    for (var t = 0u; t < TILE; t++) {
                        add_outer(&bv, s[t], pick_dout(0u, mg, t, c));
                        add_outer(&a, dp[t], pick_q(0u, mq, t, c));
                    }
                    store_dkdv(key_rows, slot_valid, c, a, bv);
                }
                first_tile = false;
            }

            // d s_ij / d k_j = scale * (q_i - k_j): the k_j part sums over the rows.
            let key_grad = select(vec4<f32>(0.0), p.scale * ds_sum, gaussian);
            for (var r = 0u; r < ROWS; r++) {
                if (!slot_valid[r]) {
                    continue;
                }
                for (var c = 0u; c < p.d4; c++) {
                    let o = key_rows[r] + c;
                    if (first_tile) {
                        dk[o] = vec4<f32>(0.0);
                        dv[o] = vec4<f32>(0.0);
                    } else if (gaussian) {
                        dk[o] -= key_grad[r] * k[o];
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
        store_slot_dbias(b_outer, h_outer, first_slot, dbias_sum);
    }
}
