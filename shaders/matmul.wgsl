// Batched matmul with strided operands and an optional bias epilogue.
//
//   C[b] = alpha * A[b] @ B[b] + bias (when flags & 1) + C[b] (when flags & 2)
//
// Strides make either operand transposed: element (b, m, k) of A is
// a[a_off + b * a_bs + m * a_rs + k * a_cs], element (b, k, n) of B is
// b[b_off + b * b_bs + k * b_rs + n * b_cs], element (b, m, n) of C is
// c[c_off + b * c_bs + m * c_rs + n].
//
// Bindings:
//   0  params  uniform Params
//   1  a       array<f32>   A, as above
//   2  b       array<f32>   B, as above
//   3  bias    array<f32>   [N] from bias_off, read only when flags & 1
//   4  c       array<f32>   C, as above
//
// Grid: x covers N, y covers M, z is the batch index.

struct Params {
    m: u32, n: u32, k: u32, flags: u32,
    a_off: u32, a_bs: u32, a_rs: u32, a_cs: u32,
    b_off: u32, b_bs: u32, b_rs: u32, b_cs: u32,
    c_off: u32, c_bs: u32, c_rs: u32, bias_off: u32,
    alpha: f32, _pad0: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

fn epilogue(batch: u32, row: u32, col: u32, acc: f32) {
    let index = p.c_off + batch * p.c_bs + row * p.c_rs + col;
    var value = p.alpha * acc;
    if ((p.flags & 1u) != 0u) {
        value += bias[p.bias_off + col];
    }
    if ((p.flags & 2u) != 0u) {
        value += c[index];
    }
    c[index] = value;
}

// ---------------------------------------------------------------------------------------
// Variant `registers`: every invocation computes a TM x TN block of C in registers and reads
// its operands straight from storage. No workgroup memory and no barriers, which suits CPU
// adapters such as lavapipe.

const TM: u32 = 8u;
const TN: u32 = 16u;
override RWG_X: u32 = 8u;
override RWG_Y: u32 = 8u;

// Four consecutive columns of row `kk` of B starting at column index `j`, unchecked.
fn b_vec(base: u32, j: u32) -> vec4<f32> {
    let i = base + j * p.b_cs;
    return vec4<f32>(b[i], b[i + p.b_cs], b[i + 2u * p.b_cs], b[i + 3u * p.b_cs]);
}

// The same with columns at or past `cols` read as zero.
fn b_vec_checked(base: u32, j: u32, cols: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var t = 0u; t < 4u; t++) {
        if (j + t < cols) {
            v[t] = b[base + (j + t) * p.b_cs];
        }
    }
    return v;
}

@compute @workgroup_size(RWG_X, RWG_Y, 1)
fn matmul_registers(@builtin(global_invocation_id) gid: vec3<u32>) {
    let batch = gid.z;
    let m0 = gid.y * TM;
    let n0 = gid.x * TN;
    if (m0 >= p.m || n0 >= p.n) {
        return;
    }
    let rows = min(TM, p.m - m0);
    let cols = min(TN, p.n - n0);
    // Rows past M re-read the last valid row; their results are never stored.
    let a_row0 = p.a_off + batch * p.a_bs + (m0 + min(0u, rows - 1u)) * p.a_rs;
    let a_row1 = p.a_off + batch * p.a_bs + (m0 + min(1u, rows - 1u)) * p.a_rs;
    let a_row2 = p.a_off + batch * p.a_bs + (m0 + min(2u, rows - 1u)) * p.a_rs;
    let a_row3 = p.a_off + batch * p.a_bs + (m0 + min(3u, rows - 1u)) * p.a_rs;
    let a_row4 = p.a_off + batch * p.a_bs + (m0 + min(4u, rows - 1u)) * p.a_rs;
    let a_row5 = p.a_off + batch * p.a_bs + (m0 + min(5u, rows - 1u)) * p.a_rs;
    let a_row6 = p.a_off + batch * p.a_bs + (m0 + min(6u, rows - 1u)) * p.a_rs;
    let a_row7 = p.a_off + batch * p.a_bs + (m0 + min(7u, rows - 1u)) * p.a_rs;
    let b_base = p.b_off + batch * p.b_bs + n0 * p.b_cs;

    // The 8 x 16 block of C: acc{row}_{quarter} holds columns 4 * quarter .. 4 * quarter + 3.
    var acc0_0 = vec4<f32>(0.0); var acc0_1 = vec4<f32>(0.0); var acc0_2 = vec4<f32>(0.0); var acc0_3 = vec4<f32>(0.0);
    var acc1_0 = vec4<f32>(0.0); var acc1_1 = vec4<f32>(0.0); var acc1_2 = vec4<f32>(0.0); var acc1_3 = vec4<f32>(0.0);
    var acc2_0 = vec4<f32>(0.0); var acc2_1 = vec4<f32>(0.0); var acc2_2 = vec4<f32>(0.0); var acc2_3 = vec4<f32>(0.0);
    var acc3_0 = vec4<f32>(0.0); var acc3_1 = vec4<f32>(0.0); var acc3_2 = vec4<f32>(0.0); var acc3_3 = vec4<f32>(0.0);
    var acc4_0 = vec4<f32>(0.0); var acc4_1 = vec4<f32>(0.0); var acc4_2 = vec4<f32>(0.0); var acc4_3 = vec4<f32>(0.0);
    var acc5_0 = vec4<f32>(0.0); var acc5_1 = vec4<f32>(0.0); var acc5_2 = vec4<f32>(0.0); var acc5_3 = vec4<f32>(0.0);
    var acc6_0 = vec4<f32>(0.0); var acc6_1 = vec4<f32>(0.0); var acc6_2 = vec4<f32>(0.0); var acc6_3 = vec4<f32>(0.0);
    var acc7_0 = vec4<f32>(0.0); var acc7_1 = vec4<f32>(0.0); var acc7_2 = vec4<f32>(0.0); var acc7_3 = vec4<f32>(0.0);

    let interior = cols == TN;
    for (var kk = 0u; kk < p.k; kk++) {
        let b_k = b_base + kk * p.b_rs;
        var b0: vec4<f32>; var b1: vec4<f32>; var b2: vec4<f32>; var b3: vec4<f32>;
        if (interior) {
            b0 = b_vec(b_k, 0u);
            b1 = b_vec(b_k, 4u);
            b2 = b_vec(b_k, 8u);
            b3 = b_vec(b_k, 12u);
        } else {
            b0 = b_vec_checked(b_k, 0u, cols);
            b1 = b_vec_checked(b_k, 4u, cols);
            b2 = b_vec_checked(b_k, 8u, cols);
            b3 = b_vec_checked(b_k, 12u, cols);
        }
        let a_k = kk * p.a_cs;
        let a0 = a[a_row0 + a_k];
        acc0_0 = fma(vec4<f32>(a0), b0, acc0_0); acc0_1 = fma(vec4<f32>(a0), b1, acc0_1); acc0_2 = fma(vec4<f32>(a0), b2, acc0_2); acc0_3 = fma(vec4<f32>(a0), b3, acc0_3);
        let a1 = a[a_row1 + a_k];
        acc1_0 = fma(vec4<f32>(a1), b0, acc1_0); acc1_1 = fma(vec4<f32>(a1), b1, acc1_1); acc1_2 = fma(vec4<f32>(a1), b2, acc1_2); acc1_3 = fma(vec4<f32>(a1), b3, acc1_3);
        let a2 = a[a_row2 + a_k];
        acc2_0 = fma(vec4<f32>(a2), b0, acc2_0); acc2_1 = fma(vec4<f32>(a2), b1, acc2_1); acc2_2 = fma(vec4<f32>(a2), b2, acc2_2); acc2_3 = fma(vec4<f32>(a2), b3, acc2_3);
        let a3 = a[a_row3 + a_k];
        acc3_0 = fma(vec4<f32>(a3), b0, acc3_0); acc3_1 = fma(vec4<f32>(a3), b1, acc3_1); acc3_2 = fma(vec4<f32>(a3), b2, acc3_2); acc3_3 = fma(vec4<f32>(a3), b3, acc3_3);
        let a4 = a[a_row4 + a_k];
        acc4_0 = fma(vec4<f32>(a4), b0, acc4_0); acc4_1 = fma(vec4<f32>(a4), b1, acc4_1); acc4_2 = fma(vec4<f32>(a4), b2, acc4_2); acc4_3 = fma(vec4<f32>(a4), b3, acc4_3);
        let a5 = a[a_row5 + a_k];
        acc5_0 = fma(vec4<f32>(a5), b0, acc5_0); acc5_1 = fma(vec4<f32>(a5), b1, acc5_1); acc5_2 = fma(vec4<f32>(a5), b2, acc5_2); acc5_3 = fma(vec4<f32>(a5), b3, acc5_3);
        let a6 = a[a_row6 + a_k];
        acc6_0 = fma(vec4<f32>(a6), b0, acc6_0); acc6_1 = fma(vec4<f32>(a6), b1, acc6_1); acc6_2 = fma(vec4<f32>(a6), b2, acc6_2); acc6_3 = fma(vec4<f32>(a6), b3, acc6_3);
        let a7 = a[a_row7 + a_k];
        acc7_0 = fma(vec4<f32>(a7), b0, acc7_0); acc7_1 = fma(vec4<f32>(a7), b1, acc7_1); acc7_2 = fma(vec4<f32>(a7), b2, acc7_2); acc7_3 = fma(vec4<f32>(a7), b3, acc7_3);
    }

    if (0u < rows) {
        store4(batch, m0 + 0u, n0 + 0u, cols, 0u, acc0_0);
        store4(batch, m0 + 0u, n0 + 4u, cols, 4u, acc0_1);
        store4(batch, m0 + 0u, n0 + 8u, cols, 8u, acc0_2);
        store4(batch, m0 + 0u, n0 + 12u, cols, 12u, acc0_3);
    }
    if (1u < rows) {
        store4(batch, m0 + 1u, n0 + 0u, cols, 0u, acc1_0);
        store4(batch, m0 + 1u, n0 + 4u, cols, 4u, acc1_1);
        store4(batch, m0 + 1u, n0 + 8u, cols, 8u, acc1_2);
        store4(batch, m0 + 1u, n0 + 12u, cols, 12u, acc1_3);
    }
    if (2u < rows) {
        store4(batch, m0 + 2u, n0 + 0u, cols, 0u, acc2_0);
        store4(batch, m0 + 2u, n0 + 4u, cols, 4u, acc2_1);
        store4(batch, m0 + 2u, n0 + 8u, cols, 8u, acc2_2);
        store4(batch, m0 + 2u, n0 + 12u, cols, 12u, acc2_3);
    }
    if (3u < rows) {
        store4(batch, m0 + 3u, n0 + 0u, cols, 0u, acc3_0);
        store4(batch, m0 + 3u, n0 + 4u, cols, 4u, acc3_1);
        store4(batch, m0 + 3u, n0 + 8u, cols, 8u, acc3_2);
        store4(batch, m0 + 3u, n0 + 12u, cols, 12u, acc3_3);
    }
    if (4u < rows) {
        store4(batch, m0 + 4u, n0 + 0u, cols, 0u, acc4_0);
        store4(batch, m0 + 4u, n0 + 4u, cols, 4u, acc4_1);
        store4(batch, m0 + 4u, n0 + 8u, cols, 8u, acc4_2);
        store4(batch, m0 + 4u, n0 + 12u, cols, 12u, acc4_3);
    }
    if (5u < rows) {
        store4(batch, m0 + 5u, n0 + 0u, cols, 0u, acc5_0);
        store4(batch, m0 + 5u, n0 + 4u, cols, 4u, acc5_1);
        store4(batch, m0 + 5u, n0 + 8u, cols, 8u, acc5_2);
        store4(batch, m0 + 5u, n0 + 12u, cols, 12u, acc5_3);
    }
    if (6u < rows) {
        store4(batch, m0 + 6u, n0 + 0u, cols, 0u, acc6_0);
        store4(batch, m0 + 6u, n0 + 4u, cols, 4u, acc6_1);
        store4(batch, m0 + 6u, n0 + 8u, cols, 8u, acc6_2);
        store4(batch, m0 + 6u, n0 + 12u, cols, 12u, acc6_3);
    }
    if (7u < rows) {
        store4(batch, m0 + 7u, n0 + 0u, cols, 0u, acc7_0);
        store4(batch, m0 + 7u, n0 + 4u, cols, 4u, acc7_1);
        store4(batch, m0 + 7u, n0 + 8u, cols, 8u, acc7_2);
        store4(batch, m0 + 7u, n0 + 12u, cols, 12u, acc7_3);
    }
}

fn store4(batch: u32, row: u32, col: u32, cols: u32, j: u32, v: vec4<f32>) {
    for (var t = 0u; t < 4u; t++) {
        if (j + t < cols) {
            epilogue(batch, row, col + t, v[t]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Variant `tiled`: a 16 x 16 workgroup computes a 64 x 64 block of C, staging BK-deep slices
// of A and B in workgroup memory; each invocation owns a 4 x 4 sub-block. Suits GPUs, where
// workgroup memory is fast and many workgroups hide latency.

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

var<workgroup> a_tile: array<array<f32, BM>, BK>;
var<workgroup> b_tile: array<array<f32, BN>, BK>;

@compute @workgroup_size(16, 16, 1)
fn matmul_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) flat: u32,
) {
    let batch = wid.z;
    let m_block = wid.y * BM;
    let n_block = wid.x * BN;
    let a_base = p.a_off + batch * p.a_bs;
    let b_base = p.b_off + batch * p.b_bs;

    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            acc[i][j] = 0.0;
        }
    }

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // pass 1: 256 invocations stage BK x 64 elements of A and of B, four each.
        for (var r = 0u; r < 4u; r++) {
            let e = flat + r * 256u;
            let kk = e / BM;
            let mm = e % BM;
            let gm = m_block + mm;
            let gk = k0 + kk;
            var av = 0.0;
            if (gm < p.m && gk < p.k) {
                av = a[a_base + gm * p.a_rs + gk * p.a_cs];
            }
            a_tile[kk][mm] = av;

            let nn = e % BN;
            let gn = n_block + nn;
            var bv = 0.0;
            if (gn < p.n && gk < p.k) {
                bv = b[b_base + gk * p.b_rs + gn * p.b_cs];
            }
            b_tile[kk][nn] = bv;
        }
        workgroupBarrier();

        // pass 2: multiply the staged slices.
        for (var kk = 0u; kk < BK; kk++) {
            var a_reg: array<f32, 4>;
            var b_reg: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a_reg[i] = a_tile[kk][lid.y + 16u * i];
                b_reg[i] = b_tile[kk][lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] = fma(a_reg[i], b_reg[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            let row = m_block + lid.y + 16u * i;
            let col = n_block + lid.x + 16u * j;
            if (row < p.m && col < p.n) {
                epilogue(batch, row, col, acc[i][j]);
            }
        }
    }
}
