// Embedding gather and its backward.
//
//   embedding:           out[s, d] = table[ids[s], d], or 0 when ids[s] >= vocab
//   embedding_backward:  dtable[v, d] = sum over positions s with ids[s] == v of dy[s, d]
//   embedding_backward_distinct:  dtable[ids[s], d] = dy[s, d], for pairwise distinct ids
//
// All three bind the table (or its gradient) in windows of rows so that tables over the
// storage binding limit work: a dispatch covers table rows row0 .. row0 + rows.
//
// Bindings of `embedding` (params: GatherParams):
//   1  table      array<f32>   [rows, dim] window from off_table
//   2  ids        array<u32>   [positions] from off_ids
//   3  out        array<f32>   [positions, dim] from off_out
// An invocation writes only positions whose id lies in the window, plus zeros for ids >= vocab
// when zero_invalid is set, so the windows of one output together write every element once.
//
// Bindings of `embedding_backward` (params: ScatterParams):
//   1  dy         array<f32>   [pos_count, dim] window from off_dy, positions pos0 ..
//   2  offsets    array<u32>   [vocab + 1], CSR row offsets into `positions`
//   3  positions  array<u32>   [entries], the positions of each id in ascending order
//   4  dtable     array<f32>   [rows, dim] window from off_dtable
// Each invocation sums the positions of its id that lie in the dy window, in ascending order,
// and writes (or with `accumulate` adds) the sum: deterministic, without atomics. Ids without
// positions get zeros.
//
// Bindings of `embedding_backward_distinct` (params: DistinctParams):
//   1  dy         array<f32>   [positions, dim] window from off_dy
//   2  ids        array<u32>   [positions] from off_ids
//   3  out        array<f32>   [rows, dim] window of the zeroed dtable from off_out
// Each position copies its dy row into the row of its id when that row lies in the window.
// With distinct ids no two invocations write the same element, so a pruning pattern's kept
// entries scatter their gradient in one pass over the kept entries instead of one pass over
// every entry of the table.
//
// Two variants: `embedding`, `embedding_backward` and `embedding_backward_distinct` spread a
// row over a workgroup, for GPUs. The `_rows` kernels give each row, or each chunk of CACHE
// columns of a row, to one invocation, for CPU adapters, which run the lanes of a SIMD vector
// as consecutive invocations. Both variants of a kernel have the same bindings.
//
// Grid of the workgroup variant: workgroup (x, y) handles position (gather, distinct scatter)
// or window row (scatter) x + y * num_workgroups.x, and invocation `lid` handles columns
// lid + k * WG. The scatter keeps CACHE columns of sums in registers, so each entry's position
// is loaded once per block of WG * CACHE columns.
// Grid of the invocation variant: invocation i = (x + y * num_workgroups.x) * ROW_WG + lid.
// The gather and the distinct scatter copy position i. The scatter sums columns
// chunk * CACHE .. chunk * CACHE + CACHE of window row i / chunks, with chunk = i % chunks and
// chunks = ceil(dim / CACHE), so each entry's position is loaded once per CACHE columns.

struct GatherParams {
    positions: u32,
    dim: u32,
    vocab: u32,
    row0: u32,
    rows: u32,
    off_table: u32,
    off_ids: u32,
    off_out: u32,
    zero_invalid: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct ScatterParams {
    dim: u32,
    row0: u32,
    rows: u32,
    pos0: u32,
    pos_count: u32,
    off_dy: u32,
    off_dtable: u32,
    accumulate: u32,
}

struct DistinctParams {
    positions: u32,
    dim: u32,
    row0: u32,
    rows: u32,
    off_dy: u32,
    off_ids: u32,
    off_out: u32,
    _pad0: u32,
}

override WG: u32 = 64u;
// Equal to ROW_CACHE in src/ops/softmax.rs, which sizes the workgroups.
const CACHE: u32 = 32u;
// Equal to ROW_WG in src/ops/softmax.rs, which sizes the grid of the invocation variant.
const ROW_WG: u32 = 16u;

@group(0) @binding(0) var<uniform> pg: GatherParams;
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@group(0) @binding(0) var<uniform> ps: ScatterParams;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> offsets: array<u32>;
@group(0) @binding(3) var<storage, read> positions: array<u32>;
@group(0) @binding(4) var<storage, read_write> dtable: array<f32>;

@group(0) @binding(0) var<uniform> pd: DistinctParams;

var<private> acc: array<f32, CACHE>;

@compute @workgroup_size(WG)
fn embedding(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let s = wid.x + wid.y * groups.x;
    if (s >= pg.positions) {
        return;
    }
    let id = ids[pg.off_ids + s];
    let out_base = pg.off_out + s * pg.dim;
    // Unsigned wrap-around: ids below row0 become large and fail the test.
    let local_row = id - pg.row0;
    if (local_row < pg.rows) {
        let table_base = pg.off_table + local_row * pg.dim;
        for (var d = lid; d < pg.dim; d += WG) {
            out[out_base + d] = table[table_base + d];
        }
    } else if (pg.zero_invalid != 0u && id >= pg.vocab) {
        for (var d = lid; d < pg.dim; d += WG) {
            out[out_base + d] = 0.0;
        }
    }
}

@compute @workgroup_size(WG)
fn embedding_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let local_row = wid.x + wid.y * groups.x;
    if (local_row >= ps.rows) {
        return;
    }
    let v = ps.row0 + local_row;
    let begin = offsets[v];
    let end = offsets[v + 1u];
    let out_base = ps.off_dtable + local_row * ps.dim;

    for (var start = 0u; start < ps.dim; start += WG * CACHE) {
        for (var k = 0u; k < CACHE; k++) {
            acc[k] = 0.0;
        }
        for (var e = begin; e < end; e++) {
            // Unsigned wrap-around: positions before pos0 become large and are skipped.
            let local_pos = positions[e] - ps.pos0;
            if (local_pos < ps.pos_count) {
                let dy_base = ps.off_dy + local_pos * ps.dim;
                for (var k = 0u; k < CACHE; k++) {
                    let d = start + lid + k * WG;
                    if (d < ps.dim) {
                        acc[k] += dy[dy_base + d];
                    }
                }
            }
        }
        for (var k = 0u; k < CACHE; k++) {
            let d = start + lid + k * WG;
            if (d < ps.dim) {
                if (ps.accumulate != 0u) {
                    dtable[out_base + d] += acc[k];
                } else {
                    dtable[out_base + d] = acc[k];
                }
            }
        }
    }
}

fn row_invocation(wid: vec3<u32>, groups: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * groups.x) * ROW_WG + lid;
}

@compute @workgroup_size(ROW_WG)
fn embedding_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let s = row_invocation(wid, groups, lid);
    if (s >= pg.positions) {
        return;
    }
    let id = ids[pg.off_ids + s];
    let out_base = pg.off_out + s * pg.dim;
    // Unsigned wrap-around: ids below row0 become large and fail the test.
    let local_row = id - pg.row0;
    if (local_row < pg.rows) {
        let table_base = pg.off_table + local_row * pg.dim;
        for (var d = 0u; d < pg.dim; d++) {
            out[out_base + d] = table[table_base + d];
        }
    } else if (pg.zero_invalid != 0u && id >= pg.vocab) {
        for (var d = 0u; d < pg.dim; d++) {
            out[out_base + d] = 0.0;
        }
    }
}

@compute @workgroup_size(ROW_WG)
fn embedding_backward_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = row_invocation(wid, groups, lid);
    let chunks = (ps.dim + CACHE - 1u) / CACHE;
    let local_row = i / chunks;
    if (local_row >= ps.rows) {
        return;
    }
    let start = (i % chunks) * CACHE;
    let v = ps.row0 + local_row;
    let begin = offsets[v];
    let end = offsets[v + 1u];
    let out_base = ps.off_dtable + local_row * ps.dim;

    for (var k = 0u; k < CACHE; k++) {
        acc[k] = 0.0;
    }
    for (var e = begin; e < end; e++) {
        // Unsigned wrap-around: positions before pos0 become large and are skipped.
        let local_pos = positions[e] - ps.pos0;
        if (local_pos < ps.pos_count) {
            let dy_base = ps.off_dy + local_pos * ps.dim;
            for (var k = 0u; k < CACHE; k++) {
                if (start + k < ps.dim) {
                    acc[k] += dy[dy_base + start + k];
                }
            }
        }
    }
    for (var k = 0u; k < CACHE; k++) {
        let d = start + k;
        if (d < ps.dim) {
            if (ps.accumulate != 0u) {
                dtable[out_base + d] += acc[k];
            } else {
                dtable[out_base + d] = acc[k];
            }
        }
    }
}

// Copies row s of dy into the dtable window when its id lies there.
fn scatter_distinct_row(s: u32, first: u32, stride: u32) {
    // Unsigned wrap-around: ids below row0 become large and fail the test.
    let local_row = ids[pd.off_ids + s] - pd.row0;
    if (local_row >= pd.rows) {
        return;
    }
    let dy_base = pd.off_dy + s * pd.dim;
    let out_base = pd.off_out + local_row * pd.dim;
    for (var d = first; d < pd.dim; d += stride) {
        out[out_base + d] = dy[dy_base + d];
    }
}

@compute @workgroup_size(WG)
fn embedding_backward_distinct(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let s = wid.x + wid.y * groups.x;
    if (s < pd.positions) {
        scatter_distinct_row(s, lid, WG);
    }
}

@compute @workgroup_size(ROW_WG)
fn embedding_backward_distinct_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let s = row_invocation(wid, groups, lid);
    if (s < pd.positions) {
        scatter_distinct_row(s, 0u, 1u);
    }
}
