// Batched matmul, vec4 variant of `matmul_registers` in matmul.wgsl, for CPU adapters.
//
//   C[b] = alpha * op(A[b]) @ B[b] + bias (when flags & 1) + C[b] (when flags & 2)
//
// B is row-major [K, N]. A is row-major [M, K] (TRANS_A = false) or [K, M] (TRANS_A = true).
// Every row length and offset is a multiple of 4 so rows load as vec4: K % 4 == 0 without
// TRANS_A, M % 4 == 0 with it, N % 4 == 0, and a_off, b_off, a_bs, b_bs divisible by 4.
// The Rust wrapper checks this and falls back to `matmul_registers` otherwise.
//
// Bindings (element strides as in matmul.wgsl; a_rs, a_cs, b_rs are in f32 elements):
//   0  params  uniform Params
//   1  a       array<vec4<f32>>
//   2  b       array<vec4<f32>>
//   3  bias    array<f32>   [N] from bias_off, read only when flags & 1
//   4  c       array<f32>
//
// Each invocation computes an 8 x 16 block of C in 32 vec4 registers.

struct Params {
    m: u32, n: u32, k: u32, flags: u32,
    a_off: u32, a_bs: u32, a_rs: u32, a_cs: u32,
    b_off: u32, b_bs: u32, b_rs: u32, b_cs: u32,
    c_off: u32, c_bs: u32, c_rs: u32, bias_off: u32,
    alpha: f32, _pad0: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

override TRANS_A: bool = false;
override WG_X: u32 = 8u;
override WG_Y: u32 = 8u;

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

fn store4(batch: u32, row: u32, col: u32, cols: u32, j: u32, v: vec4<f32>) {
    for (var t = 0u; t < 4u; t++) {
        if (j + t < cols) {
            epilogue(batch, row, col + t, v[t]);
        }
    }
}

@compute @workgroup_size(WG_X, WG_Y, 1)
fn matmul_vec4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let batch = gid.z;
    let m0 = gid.y * 8u;
    let n0 = gid.x * 16u;
    if (m0 >= p.m || n0 >= p.n) {
        return;
    }
    let rows = min(8u, p.m - m0);
    let cols = min(16u, p.n - n0);
    let last_a = arrayLength(&a) - 1u;
    // Quarters of the 16 columns past N re-read the last valid quarter; rows past M re-read
    // the last valid row. Neither is stored.
    let last_q = cols / 4u - 1u;
    let b_base = (p.b_off + batch * p.b_bs + n0) / 4u;
    let b_row = p.b_rs / 4u;
    let a_base = p.a_off + batch * p.a_bs;

    var acc0_0 = vec4<f32>(0.0); var acc0_1 = vec4<f32>(0.0); var acc0_2 = vec4<f32>(0.0); var acc0_3 = vec4<f32>(0.0);
    var acc1_0 = vec4<f32>(0.0); var acc1_1 = vec4<f32>(0.0); var acc1_2 = vec4<f32>(0.0); var acc1_3 = vec4<f32>(0.0);
    var acc2_0 = vec4<f32>(0.0); var acc2_1 = vec4<f32>(0.0); var acc2_2 = vec4<f32>(0.0); var acc2_3 = vec4<f32>(0.0);
    var acc3_0 = vec4<f32>(0.0); var acc3_1 = vec4<f32>(0.0); var acc3_2 = vec4<f32>(0.0); var acc3_3 = vec4<f32>(0.0);
    var acc4_0 = vec4<f32>(0.0); var acc4_1 = vec4<f32>(0.0); var acc4_2 = vec4<f32>(0.0); var acc4_3 = vec4<f32>(0.0);
    var acc5_0 = vec4<f32>(0.0); var acc5_1 = vec4<f32>(0.0); var acc5_2 = vec4<f32>(0.0); var acc5_3 = vec4<f32>(0.0);
    var acc6_0 = vec4<f32>(0.0); var acc6_1 = vec4<f32>(0.0); var acc6_2 = vec4<f32>(0.0); var acc6_3 = vec4<f32>(0.0);
    var acc7_0 = vec4<f32>(0.0); var acc7_1 = vec4<f32>(0.0); var acc7_2 = vec4<f32>(0.0); var acc7_3 = vec4<f32>(0.0);

    if (TRANS_A) {
        // A is [K, M]: the 8 rows of op(A) at step k are two consecutive vec4.
        let a_col = (a_base + m0) / 4u;
        let a_step = p.a_cs / 4u;
        for (var kk = 0u; kk < p.k; kk++) {
            let lo = a[min(a_col + kk * a_step, last_a)];
            let hi = a[min(a_col + kk * a_step + 1u, last_a)];
            let bk = b_base + kk * b_row;
            let b0 = b[bk + min(0u, last_q)];
            let b1 = b[bk + min(1u, last_q)];
            let b2 = b[bk + min(2u, last_q)];
            let b3 = b[bk + min(3u, last_q)];
            let a0 = vec4<f32>(lo.x);
            acc0_0 = fma(a0, b0, acc0_0); acc0_1 = fma(a0, b1, acc0_1); acc0_2 = fma(a0, b2, acc0_2); acc0_3 = fma(a0, b3, acc0_3);
            let a1 = vec4<f32>(lo.y);
            acc1_0 = fma(a1, b0, acc1_0); acc1_1 = fma(a1, b1, acc1_1); acc1_2 = fma(a1, b2, acc1_2); acc1_3 = fma(a1, b3, acc1_3);
            let a2 = vec4<f32>(lo.z);
            acc2_0 = fma(a2, b0, acc2_0); acc2_1 = fma(a2, b1, acc2_1); acc2_2 = fma(a2, b2, acc2_2); acc2_3 = fma(a2, b3, acc2_3);
            let a3 = vec4<f32>(lo.w);
            acc3_0 = fma(a3, b0, acc3_0); acc3_1 = fma(a3, b1, acc3_1); acc3_2 = fma(a3, b2, acc3_2); acc3_3 = fma(a3, b3, acc3_3);
            let a4 = vec4<f32>(hi.x);
            acc4_0 = fma(a4, b0, acc4_0); acc4_1 = fma(a4, b1, acc4_1); acc4_2 = fma(a4, b2, acc4_2); acc4_3 = fma(a4, b3, acc4_3);
            let a5 = vec4<f32>(hi.y);
            acc5_0 = fma(a5, b0, acc5_0); acc5_1 = fma(a5, b1, acc5_1); acc5_2 = fma(a5, b2, acc5_2); acc5_3 = fma(a5, b3, acc5_3);
            let a6 = vec4<f32>(hi.z);
            acc6_0 = fma(a6, b0, acc6_0); acc6_1 = fma(a6, b1, acc6_1); acc6_2 = fma(a6, b2, acc6_2); acc6_3 = fma(a6, b3, acc6_3);
            let a7 = vec4<f32>(hi.w);
            acc7_0 = fma(a7, b0, acc7_0); acc7_1 = fma(a7, b1, acc7_1); acc7_2 = fma(a7, b2, acc7_2); acc7_3 = fma(a7, b3, acc7_3);
        }
    } else {
        // A is [M, K]: each row loads four steps of k as one vec4.
        let a_row0 = (a_base + (m0 + min(0u, rows - 1u)) * p.a_rs) / 4u;
        let a_row1 = (a_base + (m0 + min(1u, rows - 1u)) * p.a_rs) / 4u;
        let a_row2 = (a_base + (m0 + min(2u, rows - 1u)) * p.a_rs) / 4u;
        let a_row3 = (a_base + (m0 + min(3u, rows - 1u)) * p.a_rs) / 4u;
        let a_row4 = (a_base + (m0 + min(4u, rows - 1u)) * p.a_rs) / 4u;
        let a_row5 = (a_base + (m0 + min(5u, rows - 1u)) * p.a_rs) / 4u;
        let a_row6 = (a_base + (m0 + min(6u, rows - 1u)) * p.a_rs) / 4u;
        let a_row7 = (a_base + (m0 + min(7u, rows - 1u)) * p.a_rs) / 4u;
        for (var kk = 0u; kk < p.k; kk += 4u) {
            let av0 = a[a_row0 + kk / 4u];
            let av1 = a[a_row1 + kk / 4u];
            let av2 = a[a_row2 + kk / 4u];
            let av3 = a[a_row3 + kk / 4u];
            let av4 = a[a_row4 + kk / 4u];
            let av5 = a[a_row5 + kk / 4u];
            let av6 = a[a_row6 + kk / 4u];
            let av7 = a[a_row7 + kk / 4u];
            // k = kk + 0
            {
                let bk = b_base + (kk + 0u) * b_row;
                let b0 = b[bk + min(0u, last_q)];
                let b1 = b[bk + min(1u, last_q)];
                let b2 = b[bk + min(2u, last_q)];
                let b3 = b[bk + min(3u, last_q)];
                let a0 = vec4<f32>(av0.x);
                acc0_0 = fma(a0, b0, acc0_0); acc0_1 = fma(a0, b1, acc0_1); acc0_2 = fma(a0, b2, acc0_2); acc0_3 = fma(a0, b3, acc0_3);
                let a1 = vec4<f32>(av1.x);
                acc1_0 = fma(a1, b0, acc1_0); acc1_1 = fma(a1, b1, acc1_1); acc1_2 = fma(a1, b2, acc1_2); acc1_3 = fma(a1, b3, acc1_3);
                let a2 = vec4<f32>(av2.x);
                acc2_0 = fma(a2, b0, acc2_0); acc2_1 = fma(a2, b1, acc2_1); acc2_2 = fma(a2, b2, acc2_2); acc2_3 = fma(a2, b3, acc2_3);
                let a3 = vec4<f32>(av3.x);
                acc3_0 = fma(a3, b0, acc3_0); acc3_1 = fma(a3, b1, acc3_1); acc3_2 = fma(a3, b2, acc3_2); acc3_3 = fma(a3, b3, acc3_3);
                let a4 = vec4<f32>(av4.x);
                acc4_0 = fma(a4, b0, acc4_0); acc4_1 = fma(a4, b1, acc4_1); acc4_2 = fma(a4, b2, acc4_2); acc4_3 = fma(a4, b3, acc4_3);
                let a5 = vec4<f32>(av5.x);
                acc5_0 = fma(a5, b0, acc5_0); acc5_1 = fma(a5, b1, acc5_1); acc5_2 = fma(a5, b2, acc5_2); acc5_3 = fma(a5, b3, acc5_3);
                let a6 = vec4<f32>(av6.x);
                acc6_0 = fma(a6, b0, acc6_0); acc6_1 = fma(a6, b1, acc6_1); acc6_2 = fma(a6, b2, acc6_2); acc6_3 = fma(a6, b3, acc6_3);
                let a7 = vec4<f32>(av7.x);
                acc7_0 = fma(a7, b0, acc7_0); acc7_1 = fma(a7, b1, acc7_1); acc7_2 = fma(a7, b2, acc7_2); acc7_3 = fma(a7, b3, acc7_3);
            }
            // k = kk + 1
            {
                let bk = b_base + (kk + 1u) * b_row;
                let b0 = b[bk + min(0u, last_q)];
                let b1 = b[bk + min(1u, last_q)];
                let b2 = b[bk + min(2u, last_q)];
                let b3 = b[bk + min(3u, last_q)];
                let a0 = vec4<f32>(av0.y);
                acc0_0 = fma(a0, b0, acc0_0); acc0_1 = fma(a0, b1, acc0_1); acc0_2 = fma(a0, b2, acc0_2); acc0_3 = fma(a0, b3, acc0_3);
                let a1 = vec4<f32>(av1.y);
                acc1_0 = fma(a1, b0, acc1_0); acc1_1 = fma(a1, b1, acc1_1); acc1_2 = fma(a1, b2, acc1_2); acc1_3 = fma(a1, b3, acc1_3);
                let a2 = vec4<f32>(av2.y);
                acc2_0 = fma(a2, b0, acc2_0); acc2_1 = fma(a2, b1, acc2_1); acc2_2 = fma(a2, b2, acc2_2); acc2_3 = fma(a2, b3, acc2_3);
                let a3 = vec4<f32>(av3.y);
                acc3_0 = fma(a3, b0, acc3_0); acc3_1 = fma(a3, b1, acc3_1); acc3_2 = fma(a3, b2, acc3_2); acc3_3 = fma(a3, b3, acc3_3);
                let a4 = vec4<f32>(av4.y);
                acc4_0 = fma(a4, b0, acc4_0); acc4_1 = fma(a4, b1, acc4_1); acc4_2 = fma(a4, b2, acc4_2); acc4_3 = fma(a4, b3, acc4_3);
                let a5 = vec4<f32>(av5.y);
                acc5_0 = fma(a5, b0, acc5_0); acc5_1 = fma(a5, b1, acc5_1); acc5_2 = fma(a5, b2, acc5_2); acc5_3 = fma(a5, b3, acc5_3);
                let a6 = vec4<f32>(av6.y);
                acc6_0 = fma(a6, b0, acc6_0); acc6_1 = fma(a6, b1, acc6_1); acc6_2 = fma(a6, b2, acc6_2); acc6_3 = fma(a6, b3, acc6_3);
                let a7 = vec4<f32>(av7.y);
                acc7_0 = fma(a7, b0, acc7_0); acc7_1 = fma(a7, b1, acc7_1); acc7_2 = fma(a7, b2, acc7_2); acc7_3 = fma(a7, b3, acc7_3);
            }
            // k = kk + 2
            {
                let bk = b_base + (kk + 2u) * b_row;
                let b0 = b[bk + min(0u, last_q)];
                let b1 = b[bk + min(1u, last_q)];
                let b2 = b[bk + min(2u, last_q)];
                let b3 = b[bk + min(3u, last_q)];
                let a0 = vec4<f32>(av0.z);
                acc0_0 = fma(a0, b0, acc0_0); acc0_1 = fma(a0, b1, acc0_1); acc0_2 = fma(a0, b2, acc0_2); acc0_3 = fma(a0, b3, acc0_3);
                let a1 = vec4<f32>(av1.z);
                acc1_0 = fma(a1, b0, acc1_0); acc1_1 = fma(a1, b1, acc1_1); acc1_2 = fma(a1, b2, acc1_2); acc1_3 = fma(a1, b3, acc1_3);
                let a2 = vec4<f32>(av2.z);
                acc2_0 = fma(a2, b0, acc2_0); acc2_1 = fma(a2, b1, acc2_1); acc2_2 = fma(a2, b2, acc2_2); acc2_3 = fma(a2, b3, acc2_3);
                let a3 = vec4<f32>(av3.z);
                acc3_0 = fma(a3, b0, acc3_0); acc3_1 = fma(a3, b1, acc3_1); acc3_2 = fma(a3, b2, acc3_2); acc3_3 = fma(a3, b3, acc3_3);
                let a4 = vec4<f32>(av4.z);
                acc4_0 = fma(a4, b0, acc4_0); acc4_1 = fma(a4, b1, acc4_1); acc4_2 = fma(a4, b2, acc4_2); acc4_3 = fma(a4, b3, acc4_3);
                let a5 = vec4<f32>(av5.z);
                acc5_0 = fma(a5, b0, acc5_0); acc5_1 = fma(a5, b1, acc5_1); acc5_2 = fma(a5, b2, acc5_2); acc5_3 = fma(a5, b3, acc5_3);
                let a6 = vec4<f32>(av6.z);
                acc6_0 = fma(a6, b0, acc6_0); acc6_1 = fma(a6, b1, acc6_1); acc6_2 = fma(a6, b2, acc6_2); acc6_3 = fma(a6, b3, acc6_3);
                let a7 = vec4<f32>(av7.z);
                acc7_0 = fma(a7, b0, acc7_0); acc7_1 = fma(a7, b1, acc7_1); acc7_2 = fma(a7, b2, acc7_2); acc7_3 = fma(a7, b3, acc7_3);
            }
            // k = kk + 3
            {
                let bk = b_base + (kk + 3u) * b_row;
                let b0 = b[bk + min(0u, last_q)];
                let b1 = b[bk + min(1u, last_q)];
                let b2 = b[bk + min(2u, last_q)];
                let b3 = b[bk + min(3u, last_q)];
                let a0 = vec4<f32>(av0.w);
                acc0_0 = fma(a0, b0, acc0_0); acc0_1 = fma(a0, b1, acc0_1); acc0_2 = fma(a0, b2, acc0_2); acc0_3 = fma(a0, b3, acc0_3);
                let a1 = vec4<f32>(av1.w);
                acc1_0 = fma(a1, b0, acc1_0); acc1_1 = fma(a1, b1, acc1_1); acc1_2 = fma(a1, b2, acc1_2); acc1_3 = fma(a1, b3, acc1_3);
                let a2 = vec4<f32>(av2.w);
                acc2_0 = fma(a2, b0, acc2_0); acc2_1 = fma(a2, b1, acc2_1); acc2_2 = fma(a2, b2, acc2_2); acc2_3 = fma(a2, b3, acc2_3);
                let a3 = vec4<f32>(av3.w);
                acc3_0 = fma(a3, b0, acc3_0); acc3_1 = fma(a3, b1, acc3_1); acc3_2 = fma(a3, b2, acc3_2); acc3_3 = fma(a3, b3, acc3_3);
                let a4 = vec4<f32>(av4.w);
                acc4_0 = fma(a4, b0, acc4_0); acc4_1 = fma(a4, b1, acc4_1); acc4_2 = fma(a4, b2, acc4_2); acc4_3 = fma(a4, b3, acc4_3);
                let a5 = vec4<f32>(av5.w);
                acc5_0 = fma(a5, b0, acc5_0); acc5_1 = fma(a5, b1, acc5_1); acc5_2 = fma(a5, b2, acc5_2); acc5_3 = fma(a5, b3, acc5_3);
                let a6 = vec4<f32>(av6.w);
                acc6_0 = fma(a6, b0, acc6_0); acc6_1 = fma(a6, b1, acc6_1); acc6_2 = fma(a6, b2, acc6_2); acc6_3 = fma(a6, b3, acc6_3);
                let a7 = vec4<f32>(av7.w);
                acc7_0 = fma(a7, b0, acc7_0); acc7_1 = fma(a7, b1, acc7_1); acc7_2 = fma(a7, b2, acc7_2); acc7_3 = fma(a7, b3, acc7_3);
            }
        }
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
