// Layer norm over the last axis (D = cols) and its backward.
//
//   layer_norm:            mean_r = mean_c x[r, c],  rstd_r = 1 / sqrt(mean_c (x[r, c] - mean_r)^2 + eps)
//                          y[r, c] = (x[r, c] - mean_r) * rstd_r * weight[c] + bias[c]
//   layer_norm_backward:   with xhat = (x - mean_r) * rstd_r and g = dy * weight,
//                          dx[r, c] = rstd_r * (g - mean_c g - xhat * mean_c (g * xhat)),
//                          partials[group, 0, c] = sum over the group's rows of dy * xhat,
//                          partials[group, 1, c] = sum over the group's rows of dy
//   layer_norm_param_grads: dweight[c] = sum_group partials[group, 0, c],
//                          dbias[c]   = sum_group partials[group, 1, c]
// The parameter gradients are summed in a fixed order, without atomics, so they are
// deterministic.
//
// Two variants: one workgroup per row (`layer_norm`, `layer_norm_backward`) for GPUs, and one
// invocation per block of R rows (`layer_norm_rows`, `layer_norm_backward_rows`) for CPU
// adapters, where barriers and workgroup memory are slow. Both feed `layer_norm_param_grads`.
//
// Bindings of `layer_norm` and `layer_norm_rows` (params: ForwardParams):
//   1  x         array<f32>   [rows, cols] from off_x
//   2  weight    array<f32>   [cols]
//   3  bias      array<f32>   [cols]
//   4  y         array<f32>   [rows, cols] from off_y
//   5  mean      array<f32>   [rows] from off_mean
//   6  rstd      array<f32>   [rows] from off_rstd
// Bindings of `layer_norm_backward` and `layer_norm_backward_rows` (params: BackwardParams):
//   1  x         array<f32>   [rows, cols] from off_x
//   2  weight    array<f32>   [cols]
//   3  mean      array<f32>   [rows] from off_mean
//   4  rstd      array<f32>   [rows] from off_rstd
//   5  dy        array<f32>   [rows, cols] from off_dy
//   6  dx        array<f32>   [rows, cols] from off_dx
//   7  partials  array<f32>   [groups, 2, cols]
// Bindings of `layer_norm_param_grads` (params: ParamGradParams):
//   1  partials  array<f32>   [groups, 2, cols]
//   2  dweight   array<f32>   [cols]
//   3  dbias     array<f32>   [cols]
//
// Grid of the row kernels: workgroup (x, y) is number x + y * num_workgroups.x. In the
// forward it handles that row; in the backward it handles rows_per_group consecutive rows and
// writes row group0 + number of the partials. A row is walked in blocks of WG * CACHE columns;
// invocation `lid` keeps columns lid + k * WG (k < CACHE) of the current block in registers,
// so rows of up to WG * CACHE columns are loaded once and the blocks before the last of
// longer rows are loaded again by the output pass. WG must be a power of two.
// Grid of the invocation variant: invocation i = (x + y * num_workgroups.x) * ROW_WG + lid.
// In the forward it handles rows i * R .. i * R + R. In the backward it handles rows_per_group
// consecutive rows in blocks of R and writes row group0 + i of the partials. Both walk the
// columns serially and share each load of weight and bias between the R rows of a block.
// Grid of `layer_norm_param_grads`: one invocation per element of dweight and dbias.

struct ForwardParams {
    rows: u32,
    cols: u32,
    eps: f32,
    off_x: u32,
    off_y: u32,
    off_mean: u32,
    off_rstd: u32,
    _pad0: u32,
}

struct BackwardParams {
    rows: u32,
    cols: u32,
    rows_per_group: u32,
    group0: u32,
    off_x: u32,
    off_mean: u32,
    off_rstd: u32,
    off_dy: u32,
    off_dx: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct ParamGradParams {
    groups: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

override WG: u32 = 256u;
// Equal to ROW_CACHE in src/ops/softmax.rs, which sizes the workgroups.
const CACHE: u32 = 32u;
// Equal to ROW_WG in src/ops/softmax.rs, which sizes the grid of the invocation variant.
const ROW_WG: u32 = 16u;
// Rows per block of the invocation variant, equal to BLOCK_ROWS in src/ops/layernorm.rs.
const R: u32 = 8u;

@group(0) @binding(0) var<uniform> pf: ForwardParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> rstd_out: array<f32>;

@group(0) @binding(0) var<uniform> pb: BackwardParams;
@group(0) @binding(1) var<storage, read> bx: array<f32>;
@group(0) @binding(2) var<storage, read> bweight: array<f32>;
@group(0) @binding(3) var<storage, read> bmean: array<f32>;
@group(0) @binding(4) var<storage, read> brstd: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;
@group(0) @binding(7) var<storage, read_write> partials: array<f32>;

@group(0) @binding(0) var<uniform> pg: ParamGradParams;
@group(0) @binding(1) var<storage, read> partials_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(3) var<storage, read_write> dbias: array<f32>;

var<private> cache: array<f32, CACHE>;
var<private> cache2: array<f32, CACHE>;
var<private> weight_cache: array<f32, CACHE>;
var<private> acc_dweight: array<f32, CACHE>;
var<private> acc_dbias: array<f32, CACHE>;
var<workgroup> red_a: array<f32, WG>;
var<workgroup> red_b: array<f32, WG>;
var<workgroup> red_c: array<f32, WG>;

// Merges the (count, mean, sum of squared deviations) statistics of two disjoint sets, the
// pairwise form of Welford's algorithm.
fn merge_moments(a: vec3<f32>, b: vec3<f32>) -> vec3<f32> {
    let n = a.x + b.x;
    if (n == 0.0) {
        return a;
    }
    let delta = b.y - a.y;
    let mean = a.y + delta * (b.x / n);
    let m2 = a.z + b.z + delta * delta * (a.x * b.x / n);
    return vec3<f32>(n, mean, m2);
}

fn reduce_moments(lid: u32, v: vec3<f32>) -> vec3<f32> {
    red_a[lid] = v.x;
    red_b[lid] = v.y;
    red_c[lid] = v.z;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            let merged = merge_moments(
                vec3<f32>(red_a[lid], red_b[lid], red_c[lid]),
                vec3<f32>(red_a[lid + stride], red_b[lid + stride], red_c[lid + stride]),
            );
            red_a[lid] = merged.x;
            red_b[lid] = merged.y;
            red_c[lid] = merged.z;
        }
        workgroupBarrier();
    }
    let total = vec3<f32>(red_a[0], red_b[0], red_c[0]);
    workgroupBarrier();
    return total;
}

fn reduce_sum2(lid: u32, v: vec2<f32>) -> vec2<f32> {
    red_a[lid] = v.x;
    red_b[lid] = v.y;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            red_a[lid] += red_a[lid + stride];
            red_b[lid] += red_b[lid + stride];
        }
        workgroupBarrier();
    }
    let total = vec2<f32>(red_a[0], red_b[0]);
    workgroupBarrier();
    return total;
}

fn last_block_start(cols: u32) -> u32 {
    return (cols - 1u) / (WG * CACHE) * (WG * CACHE);
}

@compute @workgroup_size(WG)
fn layer_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.x + wid.y * groups.x;
    if (row >= pf.rows) {
        return;
    }
    let cols = pf.cols;
    let x_base = pf.off_x + row * cols;
    let y_base = pf.off_y + row * cols;

    // Pass 1: exact two-pass moments of each block from registers, merged across blocks and
    // then across the workgroup.
    var moments = vec3<f32>(0.0);
    for (var start = 0u; start < cols; start += WG * CACHE) {
        var count = 0.0;
        var sum = 0.0;
        for (var k = 0u; k < CACHE; k++) {
            let c = start + lid + k * WG;
            if (c < cols) {
                let v = x[x_base + c];
                cache[k] = v;
                count += 1.0;
                sum += v;
            }
        }
        let block_mean = sum / max(count, 1.0);
        var m2 = 0.0;
        for (var k = 0u; k < CACHE; k++) {
            if (start + lid + k * WG < cols) {
                let d = cache[k] - block_mean;
                m2 += d * d;
            }
        }
        moments = merge_moments(moments, vec3<f32>(count, block_mean, m2));
    }
    let row_moments = reduce_moments(lid, moments);
    let mean = row_moments.y;
    let rstd = 1.0 / sqrt(row_moments.z / f32(cols) + pf.eps);
    if (lid == 0u) {
        mean_out[pf.off_mean + row] = mean;
        rstd_out[pf.off_rstd + row] = rstd;
    }

    // Pass 2: outputs. The last block is still in registers; earlier blocks are reloaded.
    let last = last_block_start(cols);
    for (var start = 0u; start < cols; start += WG * CACHE) {
        for (var k = 0u; k < CACHE; k++) {
            let c = start + lid + k * WG;
            if (c < cols) {
                var v = cache[k];
                if (start != last) {
                    v = x[x_base + c];
                }
                y[y_base + c] = (v - mean) * rstd * weight[c] + bias[c];
            }
        }
    }
}

// Adds a parameter-gradient contribution of a column outside the last block to the group's
// partials. The buffer starts undefined, so the group's first row writes instead of adding.
fn add_partial(index: u32, value: f32, first_row: bool) {
    if (first_row) {
        partials[index] = value;
    } else {
        partials[index] += value;
    }
}

@compute @workgroup_size(WG)
fn layer_norm_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let local_group = wid.x + wid.y * groups.x;
    let row_begin = local_group * pb.rows_per_group;
    if (row_begin >= pb.rows) {
        return;
    }
    let row_end = min(row_begin + pb.rows_per_group, pb.rows);
    let cols = pb.cols;
    let inv_cols = 1.0 / f32(cols);
    let part_base = (pb.group0 + local_group) * 2u * cols;
    let last = last_block_start(cols);

    // The weight and the parameter-gradient accumulators of the last block stay in registers
    // for all rows of the group.
    for (var k = 0u; k < CACHE; k++) {
        let c = last + lid + k * WG;
        weight_cache[k] = 0.0;
        if (c < cols) {
            weight_cache[k] = bweight[c];
        }
        acc_dweight[k] = 0.0;
        acc_dbias[k] = 0.0;
    }

    for (var row = row_begin; row < row_end; row++) {
        let mean = bmean[pb.off_mean + row];
        let rstd = brstd[pb.off_rstd + row];
        let x_base = pb.off_x + row * cols;
        let dy_base = pb.off_dy + row * cols;
        let dx_base = pb.off_dx + row * cols;
        let first_row = row == row_begin;

        // Pass 1: the row sums of g and g * xhat, and the parameter-gradient contributions.
        // The last block leaves xhat in `cache` and dy in `cache2`.
        var sums = vec2<f32>(0.0);
        for (var start = 0u; start < cols; start += WG * CACHE) {
            let in_last = start == last;
            for (var k = 0u; k < CACHE; k++) {
                let c = start + lid + k * WG;
                if (c < cols) {
                    let xhat = (bx[x_base + c] - mean) * rstd;
                    let dyv = dy[dy_base + c];
                    var w = weight_cache[k];
                    if (!in_last) {
                        w = bweight[c];
                    }
                    let g = dyv * w;
                    sums += vec2<f32>(g, g * xhat);
                    if (in_last) {
                        cache[k] = xhat;
                        cache2[k] = dyv;
                        acc_dweight[k] += dyv * xhat;
                        acc_dbias[k] += dyv;
                    } else {
                        add_partial(part_base + c, dyv * xhat, first_row);
                        add_partial(part_base + cols + c, dyv, first_row);
                    }
                }
            }
        }
        let row_sums = reduce_sum2(lid, sums) * inv_cols;

        // Pass 2: dx. Blocks before the last are reloaded.
        for (var start = 0u; start < cols; start += WG * CACHE) {
            for (var k = 0u; k < CACHE; k++) {
                let c = start + lid + k * WG;
                if (c < cols) {
                    var xhat = cache[k];
                    var dyv = cache2[k];
                    var w = weight_cache[k];
                    if (start != last) {
                        xhat = (bx[x_base + c] - mean) * rstd;
                        dyv = dy[dy_base + c];
                        w = bweight[c];
                    }
                    dx[dx_base + c] = rstd * (dyv * w - row_sums.x - xhat * row_sums.y);
                }
            }
        }
    }

    for (var k = 0u; k < CACHE; k++) {
        let c = last + lid + k * WG;
        if (c < cols) {
            partials[part_base + c] = acc_dweight[k];
            partials[part_base + cols + c] = acc_dbias[k];
        }
    }
}

@compute @workgroup_size(64)
fn layer_norm_param_grads(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.x + wid.y * groups.x) * 64u + lid;
    let cols = pg.cols;
    if (i >= 2u * cols) {
        return;
    }
    var total = 0.0;
    for (var group = 0u; group < pg.groups; group++) {
        total += partials_in[group * 2u * cols + i];
    }
    if (i < cols) {
        dweight[i] = total;
    } else {
        dbias[i - cols] = total;
    }
}

fn row_invocation(wid: vec3<u32>, groups: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * groups.x) * ROW_WG + lid;
}

@compute @workgroup_size(ROW_WG)
fn layer_norm_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row0 = row_invocation(wid, groups, lid) * R;
    if (row0 >= pf.rows) {
        return;
    }
    let count = min(R, pf.rows - row0);
    let cols = pf.cols;
    let x_base = pf.off_x + row0 * cols;
    let y_base = pf.off_y + row0 * cols;

    // Pass 1: Welford's running mean and sum of squared deviations of each row. Every row of
    // the block has seen the same number of columns, so 1 / n is shared.
    var mean: array<f32, R>;
    var m2: array<f32, R>;
    for (var c = 0u; c < cols; c++) {
        let inv_n = 1.0 / f32(c + 1u);
        for (var r = 0u; r < R; r++) {
            if (r < count) {
                let v = x[x_base + r * cols + c];
                let d = v - mean[r];
                mean[r] += d * inv_n;
                m2[r] += d * (v - mean[r]);
            }
        }
    }
    var rstd: array<f32, R>;
    for (var r = 0u; r < R; r++) {
        if (r < count) {
            rstd[r] = 1.0 / sqrt(m2[r] / f32(cols) + pf.eps);
            mean_out[pf.off_mean + row0 + r] = mean[r];
            rstd_out[pf.off_rstd + row0 + r] = rstd[r];
        }
    }

    // Pass 2: outputs, with x loaded again.
    for (var c = 0u; c < cols; c++) {
        let w = weight[c];
        let b = bias[c];
        for (var r = 0u; r < R; r++) {
            if (r < count) {
                let i = r * cols + c;
                y[y_base + i] = (x[x_base + i] - mean[r]) * rstd[r] * w + b;
            }
        }
    }
}

@compute @workgroup_size(ROW_WG)
fn layer_norm_backward_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let local_group = row_invocation(wid, groups, lid);
    let row_begin = local_group * pb.rows_per_group;
    if (row_begin >= pb.rows) {
        return;
    }
    let row_end = min(row_begin + pb.rows_per_group, pb.rows);
    let cols = pb.cols;
    let inv_cols = 1.0 / f32(cols);
    let part_base = (pb.group0 + local_group) * 2u * cols;

    for (var row0 = row_begin; row0 < row_end; row0 += R) {
        let count = min(R, row_end - row0);
        let first_block = row0 == row_begin;
        let x_base = pb.off_x + row0 * cols;
        let dy_base = pb.off_dy + row0 * cols;
        let dx_base = pb.off_dx + row0 * cols;
        var mean: array<f32, R>;
        var rstd: array<f32, R>;
        for (var r = 0u; r < R; r++) {
            if (r < count) {
                mean[r] = bmean[pb.off_mean + row0 + r];
                rstd[r] = brstd[pb.off_rstd + row0 + r];
            }
        }

        // Pass 1: the row means of g and g * xhat.
        var mean_g: array<f32, R>;
        var mean_gx: array<f32, R>;
        for (var c = 0u; c < cols; c++) {
            let w = bweight[c];
            for (var r = 0u; r < R; r++) {
                if (r < count) {
                    let i = r * cols + c;
                    let xhat = (bx[x_base + i] - mean[r]) * rstd[r];
                    let g = dy[dy_base + i] * w;
                    mean_g[r] += g;
                    mean_gx[r] += g * xhat;
                }
            }
        }
        for (var r = 0u; r < R; r++) {
            mean_g[r] *= inv_cols;
            mean_gx[r] *= inv_cols;
        }

        // Pass 2: dx, and the parameter-gradient sums of the block added to the partials. The
        // buffer starts undefined, so the first block writes instead of adding.
        for (var c = 0u; c < cols; c++) {
            let w = bweight[c];
            var dweight_sum = 0.0;
            var dbias_sum = 0.0;
            for (var r = 0u; r < R; r++) {
                if (r < count) {
                    let i = r * cols + c;
                    let xhat = (bx[x_base + i] - mean[r]) * rstd[r];
                    let dyv = dy[dy_base + i];
                    dx[dx_base + i] = rstd[r] * (dyv * w - mean_g[r] - xhat * mean_gx[r]);
                    dweight_sum += dyv * xhat;
                    dbias_sum += dyv;
                }
            }
            add_partial(part_base + c, dweight_sum, first_block);
            add_partial(part_base + cols + c, dbias_sum, first_block);
        }
    }
}
