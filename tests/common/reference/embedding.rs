//! CPU reference of the embedding gather and its backward.

/// out [ids.len(), dim] = rows of table [vocab, dim] at ids; ids >= vocab give zero rows.
pub fn embedding(table: &[f32], ids: &[u32], dim: usize) -> Vec<f32> {
    let vocab = table.len() / dim.max(1);
    let mut out = vec![0.0f32; ids.len() * dim];
    for (row, &id) in out.chunks_mut(dim).zip(ids) {
        if (id as usize) < vocab {
            row.copy_from_slice(&table[id as usize * dim..(id as usize + 1) * dim]);
        }
    }
    out
}

/// Row `v` [dim] of the table gradient: the sum in f64 of the rows of dy [ids.len(), dim] at
/// the positions whose id is v.
pub fn embedding_backward_row(dy: &[f32], ids: &[u32], dim: usize, v: u32) -> Vec<f32> {
    let mut row = vec![0.0f64; dim];
    for (dy_row, _) in dy.chunks(dim).zip(ids).filter(|&(_, &id)| id == v) {
        for (acc, &g) in row.iter_mut().zip(dy_row) {
            *acc += g as f64;
        }
    }
    row.into_iter().map(|a| a as f32).collect()
}

/// dtable [vocab, dim]: the rows of dy [ids.len(), dim] summed per id; ids >= vocab add nothing.
pub fn embedding_backward(dy: &[f32], ids: &[u32], vocab: usize, dim: usize) -> Vec<f32> {
    (0..vocab as u32)
        .flat_map(|v| embedding_backward_row(dy, ids, dim, v))
        .collect()
}
