// Batched 2-D transpose: out[b, j, i] = x[b, i, j] for x [batch, rows, cols].
//
// Bindings:
//   0  params  uniform Params
//   1  x       array<f32>   [batch, rows, cols]
//   2  out     array<f32>   [batch, cols, rows]
//
// Grid: x covers cols, y covers rows, z the batch. 16 x 16 tiles through workgroup memory so
// both the read and the write are contiguous.

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

var<workgroup> tile: array<array<f32, 17>, 16>;

@compute @workgroup_size(16, 16, 1)
fn transpose(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let base = wid.z * p.rows * p.cols;
    let i = wid.y * 16u + lid.y;
    let j = wid.x * 16u + lid.x;
    if (i < p.rows && j < p.cols) {
        tile[lid.y][lid.x] = x[base + i * p.cols + j];
    }
    workgroupBarrier();
    let oi = wid.x * 16u + lid.y;
    let oj = wid.y * 16u + lid.x;
    if (oi < p.cols && oj < p.rows) {
        out[base + oi * p.rows + oj] = tile[lid.x][lid.y];
    }
}
