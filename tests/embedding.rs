//! Embedding gather and its backward against the CPU reference: repeated ids, ids out of range
//! and a table over the 128 MiB storage binding limit of lavapipe.
//!
//! The kernels run in the row-kernel variant of the adapter; `FIAK_ROW_KERNELS=invocation` or
//! `FIAK_ROW_KERNELS=workgroup` forces one, and both must pass.

mod common;

use common::{Rng, assert_close, reference};
use fiak::ops::embedding::{embedding, embedding_backward, embedding_backward_distinct};
use fiak::{DType, Tensor};

/// The gather copies exactly. The backward sums at most a few dozen f32 rows per id.
const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-5;

fn check(rng: &mut Rng, vocab: usize, dim: usize, ids_shape: &[usize]) {
    let positions: usize = ids_shape.iter().product();
    let table = rng.vec(vocab * dim, 1.0);
    // A small id range relative to the positions makes repeats likely; a few ids are out of
    // range.
    let ids: Vec<u32> = (0..positions)
        .map(|_| {
            if rng.below(10) == 0 {
                (vocab + rng.below(3)) as u32
            } else {
                rng.below(vocab) as u32
            }
        })
        .collect();
    let what = format!("embedding V={vocab} D={dim} ids {ids_shape:?}");

    let tt = Tensor::from_f32(&[vocab, dim], &table).unwrap();
    let ti = Tensor::from_u32(ids_shape, &ids).unwrap();
    let out = embedding(&tt, &ti).unwrap();
    let mut shape = ids_shape.to_vec();
    shape.push(dim);
    assert_eq!(out.shape(), &shape[..]);
    assert_eq!(
        out.to_f32_vec(),
        reference::embedding::embedding(&table, &ids, dim),
        "{what}"
    );

    let dy = rng.vec(positions * dim, 1.0);
    let tdy = Tensor::from_f32(&shape, &dy).unwrap();
    let dtable = embedding_backward(&tdy, &ids, vocab).unwrap();
    assert_eq!(dtable.shape(), &[vocab, dim]);
    let want = reference::embedding::embedding_backward(&dy, &ids, vocab, dim);
    assert_close(&format!("{what} dtable"), &dtable.to_f32_vec(), &want, ATOL, RTOL);
}

#[test]
fn embedding_random_shapes() {
    let mut rng = Rng::new(41);
    check(&mut rng, 1, 1, &[1]);
    check(&mut rng, 1, 5, &[4]);
    check(&mut rng, 7, 3, &[2, 9]);
    check(&mut rng, 50, 65, &[3, 40]);
    check(&mut rng, 300, 1100, &[17]);
    for _ in 0..4 {
        let vocab = 1 + rng.below(40);
        let dim = 1 + rng.below(200);
        let shape: Vec<usize> = (0..1 + rng.below(3)).map(|_| 1 + rng.below(12)).collect();
        check(&mut rng, vocab, dim, &shape);
    }
}

#[test]
fn embedding_repeated_ids() {
    let (vocab, dim) = (4, 6);
    let table: Vec<f32> = (0..vocab * dim).map(|i| i as f32).collect();
    let ids = [2u32, 2, 0, 2, 0, 9];
    let tt = Tensor::from_f32(&[vocab, dim], &table).unwrap();
    let out = embedding(&tt, &Tensor::from_u32(&[6], &ids).unwrap())
        .unwrap()
        .to_f32_vec();
    assert_eq!(out, reference::embedding::embedding(&table, &ids, dim));
    assert!(
        out[5 * dim..].iter().all(|&v| v == 0.0),
        "id 9 >= vocab gives a zero row"
    );

    let dy: Vec<f32> = (0..ids.len() * dim).map(|i| (i % 7) as f32 - 3.0).collect();
    let dtable = embedding_backward(&Tensor::from_f32(&[6, dim], &dy).unwrap(), &ids, vocab).unwrap();
    let got = dtable.to_f32_vec();
    assert_eq!(got, reference::embedding::embedding_backward(&dy, &ids, vocab, dim));
    assert!(got[dim..2 * dim].iter().all(|&v| v == 0.0), "id 1 never occurs");
}

/// Distinct ids drawn from a shuffled range that runs past `vocab`, so a few are out of range.
fn distinct_ids(rng: &mut Rng, vocab: usize, positions: usize) -> Vec<u32> {
    let mut pool: Vec<u32> = (0..(vocab + 3) as u32).collect();
    for i in (1..pool.len()).rev() {
        pool.swap(i, rng.below(i + 1));
    }
    pool.truncate(positions);
    pool
}

#[test]
fn distinct_backward_matches_summing_backward() {
    let mut rng = Rng::new(43);
    for (vocab, dim, positions) in [(1, 1, 1), (9, 1, 5), (40, 3, 40), (300, 70, 120), (5000, 1, 2100)] {
        let ids = distinct_ids(&mut rng, vocab, positions);
        let dy = rng.vec(ids.len() * dim, 1.0);
        let tdy = Tensor::from_f32(&[ids.len(), dim], &dy).unwrap();
        let tids = Tensor::from_u32(&[ids.len()], &ids).unwrap();
        let got = embedding_backward_distinct(&tdy, &tids, vocab).unwrap();
        assert_eq!(got.shape(), &[vocab, dim]);
        // A copy, so exactly equal to the summing backward of the same ids.
        assert_eq!(
            got.to_f32_vec(),
            reference::embedding::embedding_backward(&dy, &ids, vocab, dim),
            "V={vocab} D={dim} {positions} distinct ids"
        );
    }
    let dy = Tensor::zeros(&[2, 3], DType::F32);
    let ids = Tensor::from_u32(&[3], &[0, 1, 2]).unwrap();
    assert!(
        embedding_backward_distinct(&dy, &ids, 4).is_err(),
        "dy rows differ from the id count"
    );
}

#[test]
fn embedding_backward_without_valid_ids() {
    let dy = Tensor::full(&[2, 3], 1.0);
    let dtable = embedding_backward(&dy, &[5, 6], 4).unwrap();
    assert_eq!(dtable.to_f32_vec(), vec![0.0; 12]);
}

#[test]
fn embedding_rejects_bad_arguments() {
    let table = Tensor::zeros(&[4, 3], DType::F32);
    let float_ids = Tensor::zeros(&[2], DType::F32);
    assert!(embedding(&table, &float_ids).is_err(), "f32 ids");
    let dy = Tensor::zeros(&[2, 3], DType::F32);
    assert!(
        embedding_backward(&dy, &[0, 1, 2], 4).is_err(),
        "dy rows differ from the id count"
    );
}

#[test]
fn embedding_table_over_binding_limit() {
    // [33000, 1024] f32 is 135.2 MB, over the 128 MiB (134.2 MB) storage binding limit of
    // lavapipe, so the table and its gradient are bound in windows of rows there. The values
    // come from a formula to keep the host side cheap.
    let (vocab, dim) = (33_000usize, 1024usize);
    let value = |v: usize, d: usize| ((v * 131 + d * 7) % 1009) as f32 * 1e-3 - 0.5;
    let table: Vec<f32> = (0..vocab * dim).map(|i| value(i / dim, i % dim)).collect();
    let tt = Tensor::from_f32(&[vocab, dim], &table).unwrap();
    drop(table);

    // Rows at both ends and around the window boundary near 32767 rows, repeats and an id
    // out of range.
    let ids = [
        0u32, 1, 32_766, 32_767, 32_768, 32_769, 32_999, 32_767, 0, 40_000, 20_000, 32_999,
    ];
    let out = embedding(&tt, &Tensor::from_u32(&[3, 4], &ids).unwrap()).unwrap();
    assert_eq!(out.shape(), &[3, 4, dim]);
    let got = out.to_f32_vec();
    for (s, &id) in ids.iter().enumerate() {
        let want: Vec<f32> = if (id as usize) < vocab {
            (0..dim).map(|d| value(id as usize, d)).collect()
        } else {
            vec![0.0; dim]
        };
        assert_eq!(&got[s * dim..(s + 1) * dim], &want[..], "row of position {s} (id {id})");
    }
    drop(tt);

    let mut rng = Rng::new(42);
    let dy = rng.vec(ids.len() * dim, 1.0);
    let dtable = embedding_backward(&Tensor::from_f32(&[3, 4, dim], &dy).unwrap(), &ids, vocab).unwrap();
    assert_eq!(dtable.shape(), &[vocab, dim]);
    let got = dtable.to_f32_vec();
    drop(dtable);
    for v in [0u32, 1, 2, 20_000, 32_766, 32_767, 32_768, 32_769, 32_998, 32_999] {
        let want = reference::embedding::embedding_backward_row(&dy, &ids, dim, v);
        let row = &got[v as usize * dim..(v as usize + 1) * dim];
        assert_close(&format!("dtable row {v}"), row, &want, ATOL, RTOL);
    }
    drop(got);

    // The distinct-id scatter writes each window of the gradient too.
    let distinct = [0u32, 32_766, 32_767, 32_768, 32_999, 40_000];
    let dy = &dy[..distinct.len() * dim];
    let tdy = Tensor::from_f32(&[distinct.len(), dim], dy).unwrap();
    let tids = Tensor::from_u32(&[distinct.len()], &distinct).unwrap();
    let got = embedding_backward_distinct(&tdy, &tids, vocab).unwrap().to_f32_vec();
    for v in [0u32, 1, 32_765, 32_766, 32_767, 32_768, 32_769, 32_999] {
        let want = reference::embedding::embedding_backward_row(dy, &distinct, dim, v);
        let row = &got[v as usize * dim..(v as usize + 1) * dim];
        assert_eq!(row, &want[..], "distinct-id gradient row {v}");
    }
}

#[test]
fn embedding_gradient_over_binding_limit() {
    // dy [33000, 1024] f32 is 135.2 MB, over lavapipe's 128 MiB binding limit, so the backward
    // adds the sums of a second window of positions onto the first.
    let (positions, dim, vocab) = (33_000usize, 1024usize, 64usize);
    let ids: Vec<u32> = (0..positions).map(|p| (p * 7 % vocab) as u32).collect();
    let value = |p: usize, d: usize| ((p * 13 + d * 5) % 997) as f32 * 1e-3 - 0.5;
    let dy: Vec<f32> = (0..positions * dim).map(|i| value(i / dim, i % dim)).collect();
    let tdy = Tensor::from_f32(&[positions, dim], &dy).unwrap();
    let got = embedding_backward(&tdy, &ids, vocab).unwrap().to_f32_vec();
    drop(tdy);
    let want = reference::embedding::embedding_backward(&dy, &ids, vocab, dim);
    // Each id sums about 515 rows of values in [-0.5, 0.5].
    assert_close("dtable from a windowed dy", &got, &want, 1e-3, 1e-4);
}
