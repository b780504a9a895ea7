//! Axis permutation and the attention layout ops against the CPU reference, and round trips
//! through each op's inverse. All of them move values without arithmetic, except the sum over
//! the batch in the class-token backward, so results must match exactly or to 1e-6.

mod common;

use common::{Rng, assert_close, reference};
use fiak::ops::permute::{
    concat_cls, concat_cls_backward, merge_heads, merge_qkv, permute, select_token, select_token_backward, split_heads,
    split_qkv,
};
use fiak::{DType, Tensor};

/// Returns a random permutation of 0..rank.
fn random_perm(rng: &mut Rng, rank: usize) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..rank).collect();
    for i in (1..rank).rev() {
        perm.swap(i, rng.below(i + 1));
    }
    perm
}

fn inverse(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (i, &a) in perm.iter().enumerate() {
        inv[a] = i;
    }
    inv
}

#[test]
fn permute_random_ranks_2_to_5() {
    let mut rng = Rng::new(51);
    for rank in 2..=5 {
        for _ in 0..6 {
            let shape: Vec<usize> = (0..rank).map(|_| 1 + rng.below(7)).collect();
            let perm = random_perm(&mut rng, rank);
            let n: usize = shape.iter().product();
            let x = rng.vec(n, 1.0);
            let tx = Tensor::from_f32(&shape, &x).unwrap();

            let y = permute(&tx, &perm).unwrap();
            let want_shape: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
            assert_eq!(y.shape(), &want_shape[..], "shape of permute {shape:?} by {perm:?}");
            assert_eq!(
                y.to_f32_vec(),
                reference::permute::permute(&x, &shape, &perm),
                "permute {shape:?} by {perm:?}"
            );

            let back = permute(&y, &inverse(&perm)).unwrap();
            assert_eq!(back.shape(), &shape[..]);
            assert_eq!(back.to_f32_vec(), x, "round trip of {shape:?} by {perm:?}");
        }
    }
}

#[test]
fn permute_rank_6_and_odd_sizes() {
    let mut rng = Rng::new(52);
    let cases: [(&[usize], &[usize]); 5] = [
        (&[2, 3, 1, 4, 2, 3], &[5, 3, 1, 0, 4, 2]),
        (&[3, 1, 4], &[0, 2, 1]),
        (&[1, 1], &[1, 0]),
        (&[5, 7], &[0, 1]),
        (&[2, 129, 3], &[1, 2, 0]),
    ];
    for (shape, perm) in cases {
        let n: usize = shape.iter().product();
        let x = rng.vec(n, 1.0);
        let y = permute(&Tensor::from_f32(shape, &x).unwrap(), perm).unwrap();
        assert_eq!(
            y.to_f32_vec(),
            reference::permute::permute(&x, shape, perm),
            "permute {shape:?} by {perm:?}"
        );
    }
}

#[test]
fn permute_contiguous_inner_axes_in_vec4() {
    // An innermost output axis that stays contiguous and is a multiple of 4 long, alone or
    // merged with a neighbour, moves as vec4s. The last case keeps scalar moves.
    let mut rng = Rng::new(57);
    let cases: [(&[usize], &[usize]); 5] = [
        (&[2, 3, 8], &[1, 0, 2]),
        (&[3, 5, 2, 2], &[1, 0, 2, 3]),
        (&[2, 3, 4, 4], &[2, 0, 1, 3]),
        (&[4, 1, 3, 12], &[2, 1, 0, 3]),
        (&[3, 4, 4], &[0, 2, 1]),
    ];
    for (shape, perm) in cases {
        let n: usize = shape.iter().product();
        let x = rng.vec(n, 1.0);
        let y = permute(&Tensor::from_f32(shape, &x).unwrap(), perm).unwrap();
        assert_eq!(
            y.to_f32_vec(),
            reference::permute::permute(&x, shape, perm),
            "permute {shape:?} by {perm:?}"
        );
    }
}

#[test]
fn permute_rejects_bad_permutations() {
    let x = Tensor::zeros(&[2, 3, 4], DType::F32);
    for perm in [&[0, 1][..], &[0, 1, 1], &[0, 1, 3]] {
        assert!(permute(&x, perm).is_err(), "perm {perm:?}");
    }
}

#[test]
fn heads_split_merge() {
    let mut rng = Rng::new(53);
    for (b, n, h, dh) in [(1, 1, 1, 1), (2, 5, 3, 4), (1, 197, 3, 64), (3, 7, 1, 9)] {
        let x = rng.vec(b * n * h * dh, 1.0);
        let tx = Tensor::from_f32(&[b, n, h * dh], &x).unwrap();
        let split = split_heads(&tx, h).unwrap();
        assert_eq!(split.shape(), &[b, h, n, dh]);
        let want = reference::permute::permute(&x, &[b, n, h, dh], &[0, 2, 1, 3]);
        assert_eq!(split.to_f32_vec(), want, "split_heads b={b} n={n} h={h} dh={dh}");

        let merged = merge_heads(&split).unwrap();
        assert_eq!(merged.shape(), &[b, n, h * dh]);
        assert_eq!(
            merged.to_f32_vec(),
            x,
            "merge_heads round trip b={b} n={n} h={h} dh={dh}"
        );
    }
    assert!(
        split_heads(&Tensor::zeros(&[1, 2, 6], DType::F32), 4).is_err(),
        "4 heads do not divide 6"
    );
}

#[test]
fn qkv_split_merge() {
    let mut rng = Rng::new(54);
    for (b, n, h, dh) in [(1, 1, 1, 1), (2, 5, 3, 4), (2, 17, 3, 64), (1, 3, 2, 7)] {
        let qkv = rng.vec(b * n * 3 * h * dh, 1.0);
        let tqkv = Tensor::from_f32(&[b, n, 3 * h * dh], &qkv).unwrap();
        let (q, k, v) = split_qkv(&tqkv, h).unwrap();
        let want = reference::permute::split_qkv(&qkv, b, n, h, dh);
        for (name, got, want) in [("q", &q, &want[0]), ("k", &k, &want[1]), ("v", &v, &want[2])] {
            assert_eq!(got.shape(), &[b, h, n, dh], "{name} shape");
            assert_eq!(&got.to_f32_vec(), want, "split_qkv {name} b={b} n={n} h={h} dh={dh}");
        }

        let merged = merge_qkv(&q, &k, &v).unwrap();
        assert_eq!(merged.shape(), &[b, n, 3 * h * dh]);
        assert_eq!(
            merged.to_f32_vec(),
            qkv,
            "merge_qkv round trip b={b} n={n} h={h} dh={dh}"
        );
    }
    let q = Tensor::zeros(&[1, 2, 3, 4], DType::F32);
    let k = Tensor::zeros(&[1, 2, 3, 5], DType::F32);
    assert!(merge_qkv(&q, &k, &q).is_err(), "mismatched shapes");
    assert!(
        split_qkv(&Tensor::zeros(&[1, 2, 8], DType::F32), 2).is_err(),
        "6 does not divide 8"
    );
}

#[test]
fn class_token_concat_and_backward() {
    let mut rng = Rng::new(55);
    // Widths that are multiples of 4 run the vec4 kernels.
    for (b, n, d) in [
        (1, 1, 1),
        (2, 4, 3),
        (3, 196, 33),
        (5, 0, 7),
        (2, 5, 8),
        (3, 0, 4),
        (4, 49, 64),
    ] {
        let cls = rng.vec(d, 1.0);
        let x = rng.vec(b * n * d, 1.0);
        for cls_shape in [vec![d], vec![1, 1, d]] {
            let tcls = Tensor::from_f32(&cls_shape, &cls).unwrap();
            let out = concat_cls(&tcls, &Tensor::from_f32(&[b, n, d], &x).unwrap()).unwrap();
            assert_eq!(out.shape(), &[b, n + 1, d]);
            let want = reference::permute::concat_cls(&cls, &x, b, n, d);
            assert_eq!(out.to_f32_vec(), want, "concat_cls b={b} n={n} d={d} cls {cls_shape:?}");
        }

        let dy = rng.vec(b * (n + 1) * d, 1.0);
        let (dcls, dx) = concat_cls_backward(&Tensor::from_f32(&[b, n + 1, d], &dy).unwrap()).unwrap();
        assert_eq!(dcls.shape(), &[d]);
        assert_eq!(dx.shape(), &[b, n, d]);
        let (want_dcls, want_dx) = reference::permute::concat_cls_backward(&dy, b, n, d);
        assert_close(
            &format!("dcls b={b} n={n} d={d}"),
            &dcls.to_f32_vec(),
            &want_dcls,
            1e-6,
            1e-6,
        );
        // NOTE: Tensor::to_f32_vec panics on an empty tensor (bytemuck rejects the unaligned
        // empty byte vector), so the empty dx of N = 0 is not read back.
        if n > 0 {
            assert_eq!(dx.to_f32_vec(), want_dx, "dx b={b} n={n} d={d}");
        }
    }
    let x = Tensor::zeros(&[2, 3, 4], DType::F32);
    assert!(
        concat_cls(&Tensor::zeros(&[5], DType::F32), &x).is_err(),
        "cls width differs"
    );
}

#[test]
fn token_select_and_backward() {
    let mut rng = Rng::new(56);
    for (b, n, d, index) in [
        (1, 1, 1, 0),
        (2, 5, 3, 0),
        (3, 197, 40, 196),
        (4, 9, 130, 4),
        (2, 3, 4, 1),
    ] {
        let x = rng.vec(b * n * d, 1.0);
        let out = select_token(&Tensor::from_f32(&[b, n, d], &x).unwrap(), index).unwrap();
        assert_eq!(out.shape(), &[b, d]);
        assert_eq!(out.to_f32_vec(), reference::permute::select_token(&x, b, n, d, index));

        let dy = rng.vec(b * d, 1.0);
        let dx = select_token_backward(&Tensor::from_f32(&[b, d], &dy).unwrap(), n, index).unwrap();
        assert_eq!(dx.shape(), &[b, n, d]);
        assert_eq!(
            dx.to_f32_vec(),
            reference::permute::select_token_backward(&dy, b, n, d, index)
        );
    }
    let x = Tensor::zeros(&[2, 3, 4], DType::F32);
    assert!(select_token(&x, 3).is_err(), "index past the last token");
    assert!(select_token_backward(&Tensor::zeros(&[2, 4], DType::F32), 3, 3).is_err());
}
