// Softmax over the last axis and its backward, in two variants: one workgroup per row
// (`softmax`, `softmax_backward`) for GPUs, and one invocation per row (`softmax_rows`,
// `softmax_backward_rows`) for CPU adapters, where barriers and workgroup memory are slow.
//
//   softmax:          y[r, c]  = exp(x[r, c] - max_r) / sum_c' exp(x[r, c'] - max_r)
//   softmax_backward: dx[r, c] = y[r, c] * (dy[r, c] - sum_c' dy[r, c'] * y[r, c'])
//
// Bindings of `softmax` and `softmax_rows`:
//   0  params  uniform Params
//   1  x       array<f32>   [rows, cols] from off0
//   2  y       array<f32>   [rows, cols] from off1
// Bindings of `softmax_backward` and `softmax_backward_rows`:
//   0  params  uniform Params
//   1  y       array<f32>   [rows, cols] from off0, the forward output
//   2  dy      array<f32>   [rows, cols] from off1
//   3  dx      array<f32>   [rows, cols] from off2
//
// Grid of the workgroup variant: workgroup (x, y) handles row x + y * num_workgroups.x. A row
// is walked in blocks of WG * CACHE columns, and invocation `lid` keeps columns lid + k * WG
// (k < CACHE) of the current block in registers. A row of up to WG * CACHE columns is
// therefore loaded once. In longer rows the output pass loads the blocks before the last a
// second time. WG must be a power of two.
// Grid of the invocation variant: invocation (x + y * num_workgroups.x) * ROW_WG + lid handles
// that row.

struct Params {
    rows: u32,
    cols: u32,
    off0: u32,
    off1: u32,
    off2: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override WG: u32 = 256u;
// Equal to ROW_WG in src/ops/softmax.rs, which sizes the grid of the invocation variant.
const ROW_WG: u32 = 16u;
// Equal to ROW_CACHE in src/ops/softmax.rs, which sizes the workgroups.
const CACHE: u32 = 32u;
// Stands in for -infinity: WGSL lets the compiler assume no infinities.
const NEG_BIG: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@group(0) @binding(1) var<storage, read> y_in: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

var<private> cache: array<f32, CACHE>;
var<private> cache2: array<f32, CACHE>;
var<workgroup> red_a: array<f32, WG>;
var<workgroup> red_b: array<f32, WG>;

fn row_index(wid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return wid.x + wid.y * groups.x;
}

fn last_block_start() -> u32 {
    return (p.cols - 1u) / (WG * CACHE) * (WG * CACHE);
}

// Merges two (max, sum of exp(v - max)) pairs of disjoint sets.
fn merge_max_sum(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let m = max(a.x, b.x);
    return vec2<f32>(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

// Workgroup reduction of (max, sum) pairs; every invocation gets the row's pair.
fn reduce_max_sum(lid: u32, v: vec2<f32>) -> vec2<f32> {
    red_a[lid] = v.x;
    red_b[lid] = v.y;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            let merged = merge_max_sum(
                vec2<f32>(red_a[lid], red_b[lid]),
                vec2<f32>(red_a[lid + stride], red_b[lid + stride]),
            );
            red_a[lid] = merged.x;
            red_b[lid] = merged.y;
        }
        workgroupBarrier();
    }
    let total = vec2<f32>(red_a[0], red_b[0]);
    workgroupBarrier();
    return total;
}

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red_a[lid] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            red_a[lid] += red_a[lid + stride];
        }
        workgroupBarrier();
    }
    let total = red_a[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn softmax(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = row_index(wid, groups);
    if (row >= p.rows) {
        return;
    }
    let x_base = p.off0 + row * p.cols;
    let y_base = p.off1 + row * p.cols;

    // Pass 1: per block, the max and then the sum of exponentials from registers; blocks
    // merge online.
    var stats = vec2<f32>(NEG_BIG, 0.0);
    for (var start = 0u; start < p.cols; start += WG * CACHE) {
        var block_max = NEG_BIG;
        for (var k = 0u; k < CACHE; k++) {
            let c = start + lid + k * WG;
            if (c < p.cols) {
                let v = x[x_base + c];
                cache[k] = v;
                block_max = max(block_max, v);
            }
        }
        var block_sum = 0.0;
        for (var k = 0u; k < CACHE; k++) {
            if (start + lid + k * WG < p.cols) {
                block_sum += exp(cache[k] - block_max);
            }
        }
        stats = merge_max_sum(stats, vec2<f32>(block_max, block_sum));
    }
    let row_stats = reduce_max_sum(lid, stats);
    let inv_sum = 1.0 / row_stats.y;

    // Pass 2: outputs. The last block is still in registers; earlier blocks are reloaded.
    let last = last_block_start();
    for (var start = 0u; start < p.cols; start += WG * CACHE) {
        for (var k = 0u; k < CACHE; k++) {
            let c = start + lid + k * WG;
            if (c < p.cols) {
                var v = cache[k];
                if (start != last) {
                    v = x[x_base + c];
                }
                y[y_base + c] = exp(v - row_stats.x) * inv_sum;
            }
        }
    }
}

@compute @workgroup_size(WG)
fn softmax_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = row_index(wid, groups);
    if (row >= p.rows) {
        return;
    }
    let y_base = p.off0 + row * p.cols;
    let dy_base = p.off1 + row * p.cols;
    let dx_base = p.off2 + row * p.cols;

    // Pass 1: the dot product of y and dy over the row.
    var dot = 0.0;
    for (var start = 0u; start < p.cols; start += WG * CACHE) {
        for (var k = 0u; k < CACHE; k++) {
            let c = start + lid + k * WG;
            if (c < p.cols) {
                let yv = y_in[y_base + c];
                let dyv = dy[dy_base + c];
                cache[k] = yv;
                cache2[k] = dyv;
                dot += yv * dyv;
            }
        }
    }
    let row_dot = reduce_sum(lid, dot);

    // Pass 2: gradients. The last block is still in registers; earlier blocks are reloaded.
    let last = last_block_start();
    for (var start = 0u; start < p.cols; start += WG * CACHE) {
        for (var k = 0u; k < CACHE; k++) {
            let c = start + lid + k * WG;
            if (c < p.cols) {
                var yv = cache[k];
                var dyv = cache2[k];
                if (start != last) {
                    yv = y_in[y_base + c];
                    dyv = dy[dy_base + c];
                }
                dx[dx_base + c] = yv * (dyv - row_dot);
            }
        }
    }
}

fn row_invocation(wid: vec3<u32>, groups: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * groups.x) * ROW_WG + lid;
}

@compute @workgroup_size(ROW_WG)
fn softmax_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = row_invocation(wid, groups, lid);
    if (row >= p.rows) {
        return;
    }
    let x_base = p.off0 + row * p.cols;
    let y_base = p.off1 + row * p.cols;

    // Pass 1: the running max m and sum s of exp(x - m) with one exp per column. A value above
    // m rescales the sum by exp(m - v) and adds exp(v - v) = 1.
    var m = x[x_base];
    var s = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let v = x[x_base + c];
        let e = exp(-abs(v - m));
        s = select(s + e, s * e + 1.0, v > m);
        m = max(m, v);
    }
    let inv_sum = 1.0 / s;

    // Pass 2: outputs.
    for (var c = 0u; c < p.cols; c++) {
        y[y_base + c] = exp(x[x_base + c] - m) * inv_sum;
    }
}

@compute @workgroup_size(ROW_WG)
fn softmax_backward_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = row_invocation(wid, groups, lid);
    if (row >= p.rows) {
        return;
    }
    let y_base = p.off0 + row * p.cols;
    let dy_base = p.off1 + row * p.cols;
    let dx_base = p.off2 + row * p.cols;

    var dot = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        dot += y_in[y_base + c] * dy[dy_base + c];
    }
    for (var c = 0u; c < p.cols; c++) {
        dx[dx_base + c] = y_in[y_base + c] * (dy[dy_base + c] - dot);
    }
}
