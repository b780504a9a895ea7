// Tile loaders of attention_dense.wgsl for adapters without 8-lane subgroups: every invocation
// loads all TILE rows of a tile itself, in pick_*; mine_* load nothing.

fn mine_q(rows: vec2<u32>, c: u32) -> Pair {
    return Pair();
}

fn pick_q(row: u32, mine: Pair, t: u32, c: u32) -> vec4<f32> {
    return q[row + c];
}

fn mine_k(rows: vec2<u32>, c: u32) -> Pair {
    return Pair();
}

fn pick_k(row: u32, mine: Pair, t: u32, c: u32) -> vec4<f32> {
    return k[row + c];
}

fn mine_v(rows: vec2<u32>, c: u32) -> Pair {
    return Pair();
}

fn pick_v(row: u32, mine: Pair, t: u32, c: u32) -> vec4<f32> {
    return v[row + c];
}

fn mine_dout(rows: vec2<u32>, c: u32) -> Pair {
    return Pair();
}

fn pick_dout(row: u32, mine: Pair, t: u32, c: u32) -> vec4<f32> {
    return dout[row + c];
}
