// Deterministic sums: over the middle axis of x viewed as [outer, len, inner], and the sum of
// squares of up to seven flat operands. No atomics, so every run adds in the same order.
//
// `sum_rows` and `sum_cols` reduce chunks of `chunk` consecutive positions along the axis, one
// output per (outer, chunk, inner): out [outer, nchunks, inner] with nchunks = ceil(len /
// chunk). The host repeats them on their own output until nchunks is 1. A dispatch covers the
// consecutive blocks block0 .. block0 + nblocks, block = outer * nchunks + chunk index; their
// input starts at global element x_base, bound at x_off.
//
//   sum_rows (inner = 1): one workgroup per block; each invocation adds chunk / WG elements
//   strided by WG, then a tree over the workgroup.
//   sum_cols: one invocation per (block, inner column), adding its chunk in order in groups of
//   16; adjacent invocations read adjacent columns.
//
// Bindings of sum_rows and sum_cols:
//   0  p    uniform Params
//   1  x    array<f32>  the window of x [outer, len, inner]
//   2  out  array<f32>  the window of out [outer, nchunks, inner]; out = scale * sum
//
// `sumsq_partials` writes one partial sum of squares per block of SQ_BLOCK elements of each
// operand; the host then sums the partials with sum_rows / sum_cols.
//
// Bindings of sumsq_partials:
//   0   q         uniform SumsqParams
//   1-7 t0 .. t6  array<f32>  operand windows; unused slots repeat t0 with count 0
//   8   partials  array<f32>  [total blocks], written at out_base + flat workgroup index

struct Params {
    len: u32,
    inner: u32,
    chunk: u32,
    nchunks: u32,
    block0: u32,
    nblocks: u32,
    x_base: u32,
    x_off: u32,
    out_off: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
}

struct SumsqParams {
    // Cumulative workgroup counts: operand k owns workgroups group_end[k - 1] .. group_end[k].
    group_end: array<vec4<u32>, 2>,
    count: array<vec4<u32>, 2>,
    off: array<vec4<u32>, 2>,
    out_base: u32,
    operands: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@group(0) @binding(0) var<uniform> q: SumsqParams;
@group(0) @binding(2) var<storage, read> t1: array<f32>;
@group(0) @binding(3) var<storage, read> t2: array<f32>;
@group(0) @binding(4) var<storage, read> t3: array<f32>;
@group(0) @binding(5) var<storage, read> t4: array<f32>;
@group(0) @binding(6) var<storage, read> t5: array<f32>;
@group(0) @binding(7) var<storage, read> t6: array<f32>;
@group(0) @binding(8) var<storage, read_write> partials: array<f32>;

// Workgroup size of every entry point; a power of two for the trees.
const WG: u32 = 256u;
// Elements of one sumsq_partials block: 16 per invocation.
const SQ_BLOCK: u32 = 4096u;

var<workgroup> tree: array<f32, WG>;

// Sums tree[0 .. WG] into tree[0]. Call from uniform control flow.
fn tree_sum(t: u32) {
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            tree[t] += tree[t + s];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WG)
fn sum_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let lb = wid.y * nwg.x + wid.x;
    if (lb >= p.nblocks) {
        return;
    }
    let block = p.block0 + lb;
    let row = block / p.nchunks;
    let begin = (block % p.nchunks) * p.chunk;
    let end = min(p.len, begin + p.chunk);
    let base = row * p.len + p.x_off - p.x_base;
    var acc = 0.0;
    for (var i = begin + t; i < end; i += WG) {
        acc += x[base + i];
    }
    tree[t] = acc;
    tree_sum(t);
    if (t == 0u) {
        out[p.out_off + lb] = tree[0] * p.scale;
    }
}

@compute @workgroup_size(WG)
fn sum_cols(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let g = (wid.y * nwg.x + wid.x) * WG + t;
    if (g >= p.nblocks * p.inner) {
        return;
    }
    let block = p.block0 + g / p.inner;
    let column = g % p.inner;
    let outer = block / p.nchunks;
    let begin = (block % p.nchunks) * p.chunk;
    let end = min(p.len, begin + p.chunk);
    var index = (outer * p.len + begin) * p.inner + column + p.x_off - p.x_base;
    // Groups of 16 in their own sum, then the groups: rounding grows with 16 + chunk / 16
    // terms instead of chunk.
    var acc = 0.0;
    var r = begin;
    while (r < end) {
        let stop = min(end, r + 16u);
        var group = 0.0;
        for (; r < stop; r++) {
            group += x[index];
            index += p.inner;
        }
        acc += group;
    }
    out[p.out_off + g] = acc * p.scale;
}

fn sumsq_count(k: u32) -> u32 {
    return q.count[k / 4u][k % 4u];
}

fn sumsq_load(k: u32, i: u32) -> f32 {
    switch k {
        case 0u: { return x[i]; }
        case 1u: { return t1[i]; }
        case 2u: { return t2[i]; }
        case 3u: { return t3[i]; }
        case 4u: { return t4[i]; }
        case 5u: { return t5[i]; }
        default: { return t6[i]; }
    }
}

@compute @workgroup_size(WG)
fn sumsq_partials(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let group = wid.y * nwg.x + wid.x;
    var k = 0u;
    while (k < q.operands && group >= q.group_end[k / 4u][k % 4u]) {
        k++;
    }
    if (k >= q.operands) {
        return;
    }
    var first = 0u;
    if (k > 0u) {
        first = q.group_end[(k - 1u) / 4u][(k - 1u) % 4u];
    }
    let count = sumsq_count(k);
    let offset = q.off[k / 4u][k % 4u];
    let begin = (group - first) * SQ_BLOCK;
    var acc = 0.0;
    for (var e = 0u; e < SQ_BLOCK; e += WG) {
        let i = begin + e + t;
        if (i < count) {
            let v = sumsq_load(k, offset + i);
            acc += v * v;
        }
    }
    tree[t] = acc;
    tree_sum(t);
    if (t == 0u) {
        partials[q.out_base + group] = tree[0];
    }
}
