// Tile loaders of attention_dense.wgsl for CPU adapters with 8-lane subgroups. All lanes of a
// subgroup walk the same tiles, and there every storage load runs lane by lane, so each lane
// loads two of the TILE = 16 rows (mine_*) and the lanes exchange them by shuffles (pick_*):
// row t of the tile comes from lane t / 2, as its load t % 2.

fn mine_q(rows: vec2<u32>, c: u32) -> Pair {
    return Pair(q[rows.x + c], q[rows.y + c]);
}

fn pick_q(row: u32, mine: Pair, t: u32, c: u32) -> vec4<f32> {
    return subgroupShuffle(select(mine.first, mine.second, (t & 1u) == 1u), t / 2u);
}

fn mine_k(rows: vec2<u32>, c: u32) -> Pair {
    return Pair(k[rows.x + c], k[rows.y + c]);
}

fn pick_k(row: u32, mine: Pair, t: u32, c: u32) -> vec4<f32> {
    return subgroupShuffle(select(mine.first, mine.second, (t & 1u) == 1u), t / 2u);
}

fn mine_v(rows: vec2<u32>, c: u32) -> Pair {
    return Pair(v[rows.x + c], v[rows.y + c]);
}

fn pick_v(row: u32, mine: Pair, t: u32, c: u32) -> vec4<f32> {
    return subgroupShuffle(select(mine.first, mine.second, (t & 1u) == 1u), t / 2u);
}

fn mine_dout(rows: vec2<u32>, c: u32) -> Pair {
    return Pair(dout[rows.x + c], dout[rows.y + c]);
}

fn pick_dout(row: u32, mine: Pair, t: u32, c: u32) -> vec4<f32> {
    return subgroupShuffle(select(mine.first, mine.second, (t & 1u) == 1u), t / 2u);
}
