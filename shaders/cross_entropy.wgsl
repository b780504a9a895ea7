// Fused log-softmax and negative log-likelihood over the last axis of logits [rows, cols],
// with label smoothing eps and an optional ignore index.
//
// A row r with target t is valid when t < cols and t is not the ignore index; other rows give
// no loss and no gradient. With lse_r = log sum_c exp(logits[r, c]):
//
//   row_loss[r] = (1 - eps) * (lse_r - logits[r, t]) + eps * (lse_r - mean_c logits[r, c])
//   loss        = sum of row_loss over valid rows / count of valid rows (0 when none is valid)
//   dlogits[r, c] = dloss / count * (softmax_c - (1 - eps) * [c == t] - eps / cols)
//
// Entry points and their bindings (binding 0 is always `p`). The row kernels come in two
// variants: one workgroup per row (`cross_entropy`, `cross_entropy_backward`) for GPUs, and one
// invocation per row (the same names + `_rows`) for CPU adapters, where barriers and workgroup
// memory are slow. Both variants of a kernel have the same bindings.
//   cross_entropy            1 logits [rows, cols] from off_logits, read; 2 targets [N] u32,
//                            read; 3 lse [N], read_write; 4 row_loss [N], read_write.
//                            Rows row0 .. row0 + rows of the N rows.
//   cross_entropy_mean       1 targets [N] u32; 2 row_loss [N]; 3 loss [1], read_write
//   cross_entropy_scale      1 targets [N] u32; 2 dloss [1]; 3 scale [1] = dloss / count,
//                            read_write
//   cross_entropy_backward   1 logits [rows, cols] from off_logits; 2 targets [N] u32;
//                            3 lse [N]; 4 scale [1]; 5 dlogits [rows, cols] from
//                            off_dlogits, read_write. Rows row0 .. row0 + rows.
// `cross_entropy_mean` and `cross_entropy_scale` run as one workgroup with `rows` = N and sum
// in a fixed order, so the loss is deterministic.
//
// Grid of the workgroup variant: workgroup (x, y) handles row x + y * num_workgroups.x of the
// window. The forward walks a row in blocks of WG * CACHE columns held in registers, so each
// logit is loaded once. WG must be a power of two.
// Grid of the invocation variant: invocation (x + y * num_workgroups.x) * ROW_WG + lid handles
// that row of the window and walks its columns serially, loading each logit once.

struct Params {
    rows: u32,
    cols: u32,
    row0: u32,
    ignore_index: u32,
    has_ignore: u32,
    smoothing: f32,
    off_logits: u32,
    off_dlogits: u32,
}

override WG: u32 = 256u;
// Equal to ROW_CACHE in src/ops/softmax.rs, which sizes the workgroups.
const CACHE: u32 = 32u;
// Equal to ROW_WG in src/ops/softmax.rs, which sizes the grid of the invocation variant.
const ROW_WG: u32 = 16u;
// Stands in for -infinity: WGSL lets the compiler assume no infinities.
const NEG_BIG: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> lse_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> row_loss: array<f32>;

@group(0) @binding(1) var<storage, read> r_targets: array<u32>;
@group(0) @binding(2) var<storage, read> r_values: array<f32>;
@group(0) @binding(3) var<storage, read_write> r_out: array<f32>;

@group(0) @binding(1) var<storage, read> b_logits: array<f32>;
@group(0) @binding(2) var<storage, read> b_targets: array<u32>;
@group(0) @binding(3) var<storage, read> b_lse: array<f32>;
@group(0) @binding(4) var<storage, read> b_scale: array<f32>;
@group(0) @binding(5) var<storage, read_write> dlogits: array<f32>;

var<private> cache: array<f32, CACHE>;
var<workgroup> red_a: array<f32, WG>;
var<workgroup> red_b: array<f32, WG>;
var<workgroup> red_c: array<f32, WG>;
var<workgroup> red_d: array<f32, WG>;

fn target_valid(t: u32) -> bool {
    return t < p.cols && !(p.has_ignore != 0u && t == p.ignore_index);
}

// Merges the statistics (max m, sum of exp(x - m), sum of (x - m), count) of two disjoint
// sets of logits. Keeping sums relative to the max keeps them exact for large logits.
fn merge_stats(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    let m = max(a.x, b.x);
    let s = a.y * exp(a.x - m) + b.y * exp(b.x - m);
    let xs = a.z + a.w * (a.x - m) + b.z + b.w * (b.x - m);
    return vec4<f32>(m, s, xs, a.w + b.w);
}

fn reduce_stats(lid: u32, v: vec4<f32>) -> vec4<f32> {
    red_a[lid] = v.x;
    red_b[lid] = v.y;
    red_c[lid] = v.z;
    red_d[lid] = v.w;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            let merged = merge_stats(
                vec4<f32>(red_a[lid], red_b[lid], red_c[lid], red_d[lid]),
                vec4<f32>(red_a[lid + stride], red_b[lid + stride], red_c[lid + stride], red_d[lid + stride]),
            );
            red_a[lid] = merged.x;
            red_b[lid] = merged.y;
            red_c[lid] = merged.z;
            red_d[lid] = merged.w;
        }
        workgroupBarrier();
    }
    let total = vec4<f32>(red_a[0], red_b[0], red_c[0], red_d[0]);
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn cross_entropy(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let local_row = wid.x + wid.y * groups.x;
    if (local_row >= p.rows) {
        return;
    }
    let row = p.row0 + local_row;
    let base = p.off_logits + local_row * p.cols;

    // Per block: the max from registers, then the sums relative to it; blocks merge online.
    var stats = vec4<f32>(NEG_BIG, 0.0, 0.0, 0.0);
    for (var start = 0u; start < p.cols; start += WG * CACHE) {
        var block_max = NEG_BIG;
        var count = 0.0;
        for (var k = 0u; k < CACHE; k++) {
            let c = start + lid + k * WG;
            if (c < p.cols) {
                let v = logits[base + c];
                cache[k] = v;
                block_max = max(block_max, v);
                count += 1.0;
            }
        }
        var sum_exp = 0.0;
        var sum_rel = 0.0;
        for (var k = 0u; k < CACHE; k++) {
            if (start + lid + k * WG < p.cols) {
                let d = cache[k] - block_max;
                sum_exp += exp(d);
                sum_rel += d;
            }
        }
        stats = merge_stats(stats, vec4<f32>(block_max, sum_exp, sum_rel, count));
    }
    let row_stats = reduce_stats(lid, stats);

    if (lid == 0u) {
        let m = row_stats.x;
        let log_sum = log(row_stats.y);
        lse_out[row] = m + log_sum;
        let t = targets[row];
        var loss = 0.0;
        if (target_valid(t)) {
            let nll = (m - logits[base + t]) + log_sum;
            let uniform_nll = log_sum - row_stats.z / f32(p.cols);
            loss = (1.0 - p.smoothing) * nll + p.smoothing * uniform_nll;
        }
        row_loss[row] = loss;
    }
}

// Counts the valid rows and, when `sum_values` is set, sums `r_values` over them, in a fixed
// order. The count is an f32, exact up to 2^24 rows.
fn reduce_valid(lid: u32, sum_values: bool) -> vec2<f32> {
    var sum = 0.0;
    var count = 0.0;
    for (var row = lid; row < p.rows; row += WG) {
        if (target_valid(r_targets[row])) {
            count += 1.0;
            if (sum_values) {
                sum += r_values[row];
            }
        }
    }
    red_a[lid] = sum;
    red_b[lid] = count;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            red_a[lid] += red_a[lid + stride];
            red_b[lid] += red_b[lid + stride];
        }
        workgroupBarrier();
    }
    return vec2<f32>(red_a[0], red_b[0]);
}

@compute @workgroup_size(WG)
fn cross_entropy_mean(@builtin(local_invocation_index) lid: u32) {
    let total = reduce_valid(lid, true);
    if (lid == 0u) {
        r_out[0] = select(0.0, total.x / max(total.y, 1.0), total.y > 0.0);
    }
}

@compute @workgroup_size(WG)
fn cross_entropy_scale(@builtin(local_invocation_index) lid: u32) {
    let total = reduce_valid(lid, false);
    if (lid == 0u) {
        r_out[0] = select(0.0, r_values[0] / max(total.y, 1.0), total.y > 0.0);
    }
}

@compute @workgroup_size(WG)
fn cross_entropy_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let local_row = wid.x + wid.y * groups.x;
    if (local_row >= p.rows) {
        return;
    }
    let row = p.row0 + local_row;
    let base = p.off_logits + local_row * p.cols;
    let out_base = p.off_dlogits + local_row * p.cols;
    let t = b_targets[row];
    let valid = target_valid(t);
    let lse = b_lse[row];
    let scale = select(0.0, b_scale[0], valid);
    let off_target = (1.0 - p.smoothing) * scale;
    let off_uniform = p.smoothing / f32(p.cols) * scale;
    for (var c = lid; c < p.cols; c += WG) {
        var g = 0.0;
        if (valid) {
            g = scale * exp(b_logits[base + c] - lse) - off_uniform;
            if (c == t) {
                g -= off_target;
            }
        }
        dlogits[out_base + c] = g;
    }
}

fn row_invocation(wid: vec3<u32>, groups: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * groups.x) * ROW_WG + lid;
}

@compute @workgroup_size(ROW_WG)
fn cross_entropy_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let local_row = row_invocation(wid, groups, lid);
    if (local_row >= p.rows) {
        return;
    }
    let row = p.row0 + local_row;
    let base = p.off_logits + local_row * p.cols;

    // The running max m and sum s of exp(x - m), with one exp per column: a value above m
    // rescales the sum by exp(m - v) and adds exp(v - v) = 1. The sum of the logits is kept
    // relative to the first one, which keeps it precise when all logits share a large offset.
    let first = logits[base];
    var m = first;
    var s = 0.0;
    var sum_rel = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let v = logits[base + c];
        let e = exp(-abs(v - m));
        s = select(s + e, s * e + 1.0, v > m);
        m = max(m, v);
        sum_rel += v - first;
    }

    let log_sum = log(s);
    lse_out[row] = m + log_sum;
    let t = targets[row];
    var loss = 0.0;
    if (target_valid(t)) {
        let nll = (m - logits[base + t]) + log_sum;
        let uniform_nll = (m - first) + log_sum - sum_rel / f32(p.cols);
        loss = (1.0 - p.smoothing) * nll + p.smoothing * uniform_nll;
    }
    row_loss[row] = loss;
}

@compute @workgroup_size(ROW_WG)
fn cross_entropy_backward_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let local_row = row_invocation(wid, groups, lid);
    if (local_row >= p.rows) {
        return;
    }
    let row = p.row0 + local_row;
    let base = p.off_logits + local_row * p.cols;
    let out_base = p.off_dlogits + local_row * p.cols;
    let t = b_targets[row];
    let valid = target_valid(t);
    let lse = b_lse[row];
    let scale = select(0.0, b_scale[0], valid);
    let off_target = (1.0 - p.smoothing) * scale;
    let off_uniform = p.smoothing / f32(p.cols) * scale;
    for (var c = 0u; c < p.cols; c++) {
        var g = 0.0;
        if (valid) {
            g = scale * exp(b_logits[base + c] - lse) - off_uniform;
            if (c == t) {
                g -= off_target;
            }
        }
        dlogits[out_base + c] = g;
    }
}
