// Axis permutation and the fixed layout changes of attention: query/key/value split and merge,
// class-token concatenation and token selection, with their backward.
//
// Every entry point runs one invocation per element of `total` (see each entry), numbered
// i = (wid.x + wid.y * num_workgroups.x) * WG + lid, and loads each input element once.
// In the layouts below B is the batch, N the tokens, H the heads, dh the head width and D
// the model width.
//
// Each entry point X has a twin X_vec4 that binds the same buffers as array<vec4<f32>> and
// moves four consecutive elements per invocation. It needs the innermost axis of every layout
// to be a multiple of 4 long and contiguous in both input and output; the caller then passes
// the innermost size (dims[rank - 1], dh or D) and every stride and `total` in vec4 units.
// Four times fewer invocations cut both the index arithmetic, whose integer divisions are slow
// on many GPUs and CPU adapters, and the per-access overhead of CPU adapters such as lavapipe.
//
// `permute` (params: PermuteParams):
//   1  src  array<f32>   the input, row-major
//   2  dst  array<f32>   the output [dims[0], .., dims[rank - 1]]
//   One invocation per output element; output axis a advances the input by strides[a].
//
// The others take LayoutParams (total, batch = B, tokens = N, heads = H, width = dh or D,
// index):
// `split_qkv`              1 qkv [B, N, 3, H, dh]; 2 q, 3 k, 4 v [B, H, N, dh], read_write.
//                          total = B * H * N * dh.
// `merge_qkv`              1 dq, 2 dk, 3 dv [B, H, N, dh]; 4 dqkv [B, N, 3, H, dh],
//                          read_write. total = B * H * N * dh.
// `concat_cls`             1 cls [D]; 2 tokens [B, N, D]; 3 out [B, N + 1, D], read_write.
//                          total = B * (N + 1) * D.
// `concat_cls_backward`    1 dy [B, N + 1, D]; 2 dcls [D], summed over B in order;
//                          3 dtokens [B, N, D], both read_write. total = B * N * D + D.
// `select_token`           1 src [B, N, D]; 2 dst [B, D] = src[:, index, :]. total = B * D.
// `select_token_backward`  1 src [B, D]; 2 dst [B, N, D], src at token `index` and zeros
//                          elsewhere. total = B * N * D.

struct PermuteParams {
    total: u32,
    rank: u32,
    _pad0: u32,
    _pad1: u32,
    // Output sizes and input strides of axes 0..rank, four per vector.
    dims: array<vec4<u32>, 2>,
    strides: array<vec4<u32>, 2>,
}

struct LayoutParams {
    total: u32,
    batch: u32,
    tokens: u32,
    heads: u32,
    width: u32,
    index: u32,
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 128u;

@group(0) @binding(0) var<uniform> pp: PermuteParams;
@group(0) @binding(0) var<uniform> lp: LayoutParams;

@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> q: array<f32>;
@group(0) @binding(3) var<storage, read_write> k: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;

@group(0) @binding(1) var<storage, read> dq: array<f32>;
@group(0) @binding(2) var<storage, read> dk: array<f32>;
@group(0) @binding(3) var<storage, read> dv: array<f32>;
@group(0) @binding(4) var<storage, read_write> dqkv: array<f32>;

@group(0) @binding(1) var<storage, read> cls: array<f32>;
@group(0) @binding(2) var<storage, read> tokens: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> dcls: array<f32>;
@group(0) @binding(3) var<storage, read_write> dtokens: array<f32>;

@group(0) @binding(1) var<storage, read> src4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst4: array<vec4<f32>>;

@group(0) @binding(1) var<storage, read> qkv4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> q4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> k4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> v4: array<vec4<f32>>;

@group(0) @binding(1) var<storage, read> dq4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dk4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> dv4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dqkv4: array<vec4<f32>>;

@group(0) @binding(1) var<storage, read> cls4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> tokens4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out4: array<vec4<f32>>;

@group(0) @binding(1) var<storage, read> dy4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dcls4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> dtokens4: array<vec4<f32>>;

fn invocation(wid: vec3<u32>, groups: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * groups.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn permute(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = invocation(wid, groups, lid);
    if (i >= pp.total) {
        return;
    }
    dst[i] = src[permuted_offset(i)];
}

// Input offset of output element i: peels output coordinates from the innermost axis outwards.
fn permuted_offset(i: u32) -> u32 {
    var rest = i;
    var offset = 0u;
    for (var a = i32(pp.rank) - 1; a >= 0; a--) {
        let dim = pp.dims[a / 4][a % 4];
        offset += (rest % dim) * pp.strides[a / 4][a % 4];
        rest = rest / dim;
    }
    return offset;
}

// Output index i of [B, H, N, dh] as (b, h, n, d) packed in a vec4.
fn heads_coords(i: u32) -> vec4<u32> {
    let d = i % lp.width;
    let n = (i / lp.width) % lp.tokens;
    let bh = i / (lp.width * lp.tokens);
    return vec4<u32>(bh / lp.heads, bh % lp.heads, n, d);
}

// Index of element (b, n, which, h, d) of [B, N, 3, H, dh].
fn packed_index(c: vec4<u32>, which: u32) -> u32 {
    let row = c.x * lp.tokens + c.z;
    return ((row * 3u + which) * lp.heads + c.y) * lp.width + c.w;
}

@compute @workgroup_size(WG)
fn split_qkv(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = invocation(wid, groups, lid);
    if (i >= lp.total) {
        return;
    }
    let c = heads_coords(i);
    q[i] = qkv[packed_index(c, 0u)];
    k[i] = qkv[packed_index(c, 1u)];
    v[i] = qkv[packed_index(c, 2u)];
}

@compute @workgroup_size(WG)
fn split_qkv_vec4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = invocation(wid, groups, lid);
    if (i >= lp.total) {
        return;
    }
    let c = heads_coords(i);
    q4[i] = qkv4[packed_index(c, 0u)];
    k4[i] = qkv4[packed_index(c, 1u)];
    v4[i] = qkv4[packed_index(c, 2u)];
}

@compute @workgroup_size(WG)
fn merge_qkv(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = invocation(wid, groups, lid);
    if (i >= lp.total) {
        return;
    }
    let c = heads_coords(i);
    dqkv[packed_index(c, 0u)] = dq[i];
    dqkv[packed_index(c, 1u)] = dk[i];
    dqkv[packed_index(c, 2u)] = dv[i];
}

@compute @workgroup_size(WG)
fn merge_qkv_vec4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = invocation(wid, groups, lid);
    if (i >= lp.total) {
        return;
    }
    let c = heads_coords(i);
    dqkv4[packed_index(c, 0u)] = dq4[i];
    dqkv4[packed_index(c, 1u)] = dk4[i];
    dqkv4[packed_index(c, 2u)] = dv4[i];
}

@compute @workgroup_size(WG)
fn concat_cls(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = invocation(wid, groups, lid);
    if (i >= lp.total) {
        return;
    }
    let d = i % lp.width;
    let t = (i / lp.width) % (lp.tokens + 1u);
    let b = i / (lp.width * (lp.tokens + 1u));
    if (t == 0u) {
        out[i] = cls[d];
    } else {
        out[i] = tokens[(b * lp.tokens + t - 1u) * lp.width + d];
    }
}

@compute @workgroup_size(WG)
fn concat_cls_vec4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = invocation(wid, groups, lid);
    if (i >= lp.total) {
        return;
    }
    let d = i % lp.width;
    let t = (i / lp.width) % (lp.tokens + 1u);
    let b = i / (lp.width * (lp.tokens + 1u));
    if (t == 0u) {
        out4[i] = cls4[d];
    } else {
        out4[i] = tokens4[(b * lp.tokens + t - 1u) * lp.width + d];
    }
}

@compute @workgroup_size(WG)
fn concat_cls_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = invocation(wid, groups, lid);
    if (i >= lp.total) {
        return;
    }
    let token_elems = lp.total - lp.width;
    if (i < token_elems) {
        let d = i % lp.width;
        let t = (i / lp.width) % lp.tokens;
        let b = i / (lp.width * lp.tokens);
        dtokens[i] = dy[(b * (lp.tokens + 1u) + t + 1u) * lp.width + d];
    } else {
        let d = i - token_elems;
        var sum = 0.0;
        for (var b = 0u; b < lp.batch; b++) {
            sum += dy[b * (lp.tokens + 1u) * lp.width + d];
        }
        dcls[d] = sum;
    }
}

@compute @workgroup_size(WG)
fn concat_cls_backward_vec4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = invocation(wid, groups, lid);
    if (i >= lp.total) {
        return;
    }
    let token_elems = lp.total - lp.width;
    if (i < token_elems) {
        let d = i % lp.width;
        let t = (i / lp.width) % lp.tokens;
        let b = i / (lp.width * lp.tokens);
        dtokens4[i] = dy4[(b * (lp.tokens + 1u) + t + 1u) * lp.width + d];
    } else {
        let d = i - token_elems;
        var sum = vec4<f32>(0.0);
        for (var b = 0u; b < lp.batch; b++) {
            sum += dy4[b * (lp.tokens + 1u) * lp.width + d];
        }
        dcls4[d] = sum;
    }
}

@compute @workgroup_size(WG)
fn select_token(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = invocation(wid, groups, lid);
    if (i >= lp.total) {
        return;
    }
    let d = i % lp.width;
    let b = i / lp.width;
    dst[i] = src[(b * lp.tokens + lp.index) * lp.width + d];
}

@compute @workgroup_size(WG)
fn select_token_vec4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = invocation(wid, groups, lid);
    if (i >= lp.total) {
        return;
    }
    let d = i % lp.width;
    let b = i / lp.width;
    dst4[i] = src4[(b * lp.tokens + lp.index) * lp.width + d];
}

@compute @workgroup_size(WG)
fn select_token_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = invocation(wid, groups, lid);
    if (i >= lp.total) {
        return;
    }
    let d = i % lp.width;
    let t = (i / lp.width) % lp.tokens;
    let b = i / (lp.width * lp.tokens);
    var g = 0.0;
    if (t == lp.index) {
        g = src[b * lp.width + d];
    }
    dst[i] = g;
}

@compute @workgroup_size(WG)
fn select_token_backward_vec4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = invocation(wid, groups, lid);
    if (i >= lp.total) {
        return;
    }
    let d = i % lp.width;
    let t = (i / lp.width) % lp.tokens;
    let b = i / (lp.width * lp.tokens);
    var g = vec4<f32>(0.0);
    if (t == lp.index) {
        g = src4[b * lp.width + d];
    }
    dst4[i] = g;
}

@compute @workgroup_size(WG)
fn permute_vec4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = invocation(wid, groups, lid);
    if (i >= pp.total) {
        return;
    }
    dst4[i] = src4[permuted_offset(i)];
}
