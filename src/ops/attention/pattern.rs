//! Pruning patterns: which keys each query row of each head keeps.

use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The kept entries (h, i, j) of an attention layer, in CSR form per head.
///
/// Head h, row i owns `key_index[row_offsets[h * (nq + 1) + i] .. row_offsets[h * (nq + 1) + i + 1]]`,
/// keys ascending; the offsets count across heads, so head h's entries follow head h - 1's. A
/// per-entry bias follows the same order. A row may be empty: gathered attention then returns
/// zeros for it.
///
/// When every row of a head keeps the same keys (a keys-only pattern), the pattern also stores
/// that list once per head. Gathered attention then runs the dense kernels on the kept keys,
/// which read each K and V row once per block of queries instead of once per query.
///
/// The GPU copies are uploaded on first use.
#[derive(Clone)]
pub struct Pattern {
    heads: usize,
    nq: usize,
    nk: usize,
    row_offsets: Vec<u32>,
    key_index: Vec<u32>,
    /// Keys-only patterns: list offsets [H + 1], then the kept keys of every head.
    shared_keys: Option<Vec<u32>>,
    device: Device,
}

/// Lazily uploaded GPU copies of a pattern.
#[derive(Clone, Default)]
struct Device {
    row_offsets: OnceLock<Tensor>,
    key_index: OnceLock<Tensor>,
    transposed: OnceLock<Tensor>,
    shared_keys: OnceLock<Tensor>,
    key_union: OnceLock<KeyUnion>,
}

/// Marks a grid slot of a [`KeyUnion`] without a kept entry.
pub(super) const NONE: u32 = u32::MAX;

/// A pattern seen as per-head key lists. Head h's list contains every key that some row of h
/// keeps, and the [Nq, list length] grid of each head contains the kept entries plus slots to
/// mask. The fused dense kernels run over such lists with the mask in the bias. On CPU adapters
/// that reads far less than the row kernels whenever rows share most of their keys.
#[derive(Clone)]
pub(super) struct KeyUnion {
    /// List offsets [H + 1], then the keys of every head's list (the KEY_LIST layout).
    pub lists: Tensor,
    pub longest: usize,
    /// Slots of all heads' grids: sum over h of Nq x list length.
    pub slots: usize,
    /// The slots whose key j <= i, which are all a causal mask leaves the kernels to score.
    pub causal_slots: usize,
    /// u32 [slots]: the CSR entry of each slot, or NONE.
    pub to_entries: Tensor,
    /// u32 [nnz]: the slot of each CSR entry.
    pub to_slots: Tensor,
    /// Every row keeps a key, and with a causal mask a key j <= i: masking then never empties
    /// a row, so the grid gives the same result as the entries.
    pub rows_covered: bool,
    pub rows_covered_causal: bool,
}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pattern")
            .field("heads", &self.heads)
            .field("nq", &self.nq)
            .field("nk", &self.nk)
            .field("nnz", &self.nnz())
            .field("keys_only", &self.is_keys_only())
            .finish()
    }
}

/// Checks that `keys` ascend strictly and stay below `nk`; `what` names the list in errors.
fn check_keys(op: &'static str, keys: &[u32], nk: usize, what: impl Fn() -> String) -> Result<()> {
    for (t, &j) in keys.iter().enumerate() {
        if j as usize >= nk {
            return Err(Error::shape(
                op,
                format!("{} has key {j}, but there are {nk} keys", what()),
            ));
        }
        if t > 0 && keys[t - 1] >= j {
            return Err(Error::shape(
                op,
                format!("{} is not strictly ascending: key {j} follows {}", what(), keys[t - 1]),
            ));
        }
    }
    Ok(())
}

impl Pattern {
    /// Builds a pattern from CSR arrays: `row_offsets` [H * (Nq + 1)], counting across heads,
    /// and `key_index` [nnz] with strictly ascending keys below `nk` in each row.
    pub fn from_csr(heads: usize, nq: usize, nk: usize, row_offsets: Vec<u32>, key_index: Vec<u32>) -> Result<Pattern> {
        const OP: &str = "Pattern::from_csr";
        if row_offsets.len() != heads * (nq + 1) {
            return Err(Error::shape(
                OP,
                format!(
                    "row_offsets has {} values, but {heads} heads of {nq} rows need {}",
                    row_offsets.len(),
                    heads * (nq + 1)
                ),
            ));
        }
        if u32::try_from(key_index.len()).is_err() {
            return Err(Error::shape(
                OP,
                format!("{} entries exceed the u32 range", key_index.len()),
            ));
        }
        let mut expected_start = 0u32;
        for h in 0..heads {
            let offsets = &row_offsets[h * (nq + 1)..(h + 1) * (nq + 1)];
            if offsets[0] != expected_start {
                return Err(Error::shape(
                    OP,
                    format!(
                        "head {h} starts at entry {}, but the previous head ends at {expected_start}",
                        offsets[0]
                    ),
                ));
            }
            for i in 0..nq {
                let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
                if end < start || end > key_index.len() {
                    return Err(Error::shape(
                        OP,
                        format!(
                            "row {i} of head {h} spans entries {start}..{end}, outside 0..{} or decreasing",
                            key_index.len()
                        ),
                    ));
                }
                check_keys(OP, &key_index[start..end], nk, || format!("row {i} of head {h}"))?;
            }
            expected_start = offsets[nq];
        }
        if expected_start as usize != key_index.len() {
            return Err(Error::shape(
                OP,
                format!(
                    "the offsets end at entry {expected_start}, but key_index has {} entries",
                    key_index.len()
                ),
            ));
        }

        let shared_keys = shared_lists(heads, nq, &row_offsets, &key_index);
        Ok(Pattern {
            heads,
            nq,
            nk,
            row_offsets,
            key_index,
            shared_keys,
            device: Device::default(),
        })
    }

    /// Builds a keys-only pattern: every query row of head h keeps the keys `kept[h]`, which
    /// must ascend strictly and stay below `nk`.
    pub fn keys_only(heads: usize, nq: usize, nk: usize, kept: Vec<Vec<u32>>) -> Result<Pattern> {
        const OP: &str = "Pattern::keys_only";
        if kept.len() != heads {
            return Err(Error::shape(
                OP,
                format!("kept has lists for {} heads, expected {heads}", kept.len()),
            ));
        }
        let mut shared = Vec::with_capacity(heads + 1 + kept.iter().map(Vec::len).sum::<usize>());
        shared.push(0u32);
        for (h, keys) in kept.iter().enumerate() {
            check_keys(OP, keys, nk, || format!("the key list of head {h}"))?;
            shared.push(shared[h] + keys.len() as u32);
        }
        let nnz: usize = kept.iter().map(|keys| keys.len() * nq).sum();
        if u32::try_from(nnz).is_err() {
            return Err(Error::shape(OP, format!("{nnz} entries exceed the u32 range")));
        }

        let mut row_offsets = Vec::with_capacity(heads * (nq + 1));
        let mut key_index = Vec::with_capacity(nnz);
        for keys in &kept {
            for _ in 0..nq {
                row_offsets.push(key_index.len() as u32);
                key_index.extend_from_slice(keys);
            }
            row_offsets.push(key_index.len() as u32);
        }
        for keys in kept {
            shared.extend(keys);
        }
        Ok(Pattern {
            heads,
            nq,
            nk,
            row_offsets,
            key_index,
            shared_keys: Some(shared),
            device: Device::default(),
        })
    }

    /// Builds the pattern that keeps every entry, or with `causal` every key j <= i.
    pub fn dense(heads: usize, nq: usize, nk: usize, causal: bool) -> Pattern {
        if !causal {
            let all: Vec<u32> = (0..nk as u32).collect();
            return Pattern::keys_only(heads, nq, nk, vec![all; heads]).expect("all keys form a valid pattern");
        }
        let mut row_offsets = Vec::with_capacity(heads * (nq + 1));
        let mut key_index = Vec::new();
        for _ in 0..heads {
            for i in 0..nq {
                row_offsets.push(key_index.len() as u32);
                key_index.extend(0..(i + 1).min(nk) as u32);
            }
            row_offsets.push(key_index.len() as u32);
        }
        Pattern::from_csr(heads, nq, nk, row_offsets, key_index).expect("a causal mask forms a valid pattern")
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    pub fn nq(&self) -> usize {
        self.nq
    }

    pub fn nk(&self) -> usize {
        self.nk
    }

    /// Number of kept entries over all heads.
    pub fn nnz(&self) -> usize {
        self.key_index.len()
    }

    /// Kept entries as a fraction of the H x Nq x Nk grid.
    pub fn kept_fraction(&self) -> f64 {
        let total = self.heads * self.nq * self.nk;
        if total == 0 {
            0.0
        } else {
            self.nnz() as f64 / total as f64
        }
    }

    /// Returns the row offsets [H * (Nq + 1)], counting across heads.
    pub fn row_offsets(&self) -> &[u32] {
        &self.row_offsets
    }

    /// Returns the key of every kept entry [nnz], ascending within each row.
    pub fn key_index(&self) -> &[u32] {
        &self.key_index
    }

    /// Returns whether all rows of each head keep the same keys.
    pub fn is_keys_only(&self) -> bool {
        self.shared_keys.is_some()
    }

    /// Returns the keys every row of head `h` keeps, for keys-only patterns.
    pub fn kept_keys(&self, h: usize) -> Option<&[u32]> {
        let shared = self.shared_keys.as_ref()?;
        let (start, end) = (shared[h] as usize, shared[h + 1] as usize);
        Some(&shared[self.heads + 1 + start..self.heads + 1 + end])
    }

    /// Returns the row offsets on the GPU, u32 [H, Nq + 1].
    pub fn row_offsets_tensor(&self) -> &Tensor {
        self.device
            .row_offsets
            .get_or_init(|| upload(&[self.heads, self.nq + 1], &self.row_offsets))
    }

    /// Returns the key of every entry on the GPU, u32 [nnz].
    pub fn key_index_tensor(&self) -> &Tensor {
        self.device
            .key_index
            .get_or_init(|| upload(&[self.nnz()], &self.key_index))
    }

    /// Returns the transposed pattern on the GPU: column offsets [H, Nk + 1] counting across heads, then
    /// the row of every entry in column order [nnz], then its position in row order [nnz].
    pub(super) fn transposed_tensor(&self) -> &Tensor {
        self.device.transposed.get_or_init(|| {
            let data = self.transpose();
            upload(&[data.len()], &data)
        })
    }

    /// Returns the per-head key lists on the GPU, u32 [H + 1 + kept keys], with the longest list's
    /// length; None unless keys-only.
    pub(super) fn shared_keys_tensor(&self) -> Option<(&Tensor, usize)> {
        let shared = self.shared_keys.as_ref()?;
        let tensor = self.device.shared_keys.get_or_init(|| upload(&[shared.len()], shared));
        Some((tensor, longest_list(self.heads, shared)))
    }

    /// Returns the pattern as per-head key lists over the union of their rows' keys.
    pub(super) fn key_union(&self) -> &KeyUnion {
        self.device.key_union.get_or_init(|| {
            let (heads, nq, nk) = (self.heads, self.nq, self.nk);
            let mut lists = vec![0u32];
            let mut keys = Vec::new();
            let mut to_entries = Vec::new();
            let mut to_slots = vec![0u32; self.nnz()];
            let (mut rows_covered, mut rows_covered_causal) = (true, true);
            let mut causal_slots = 0;
            for h in 0..heads {
                let entries = |i: usize| {
                    let at = h * (nq + 1) + i;
                    self.row_offsets[at] as usize..self.row_offsets[at + 1] as usize
                };
                let mut kept = vec![false; nk];
                for i in 0..nq {
                    for e in entries(i) {
                        kept[self.key_index[e] as usize] = true;
                    }
                }
                let list: Vec<u32> = (0..nk as u32).filter(|&j| kept[j as usize]).collect();
                let mut slot_of = vec![NONE; nk];
                for (t, &j) in list.iter().enumerate() {
                    slot_of[j as usize] = t as u32;
                }
                for i in 0..nq {
                    causal_slots += list.partition_point(|&j| j as usize <= i);
                    let row = entries(i);
                    rows_covered &= !row.is_empty();
                    rows_covered_causal &= !row.is_empty() && self.key_index[row.start] as usize <= i;
                    let base = to_entries.len();
                    to_entries.resize(base + list.len(), NONE);
                    for e in row {
                        let slot = base + slot_of[self.key_index[e] as usize] as usize;
                        to_entries[slot] = e as u32;
                        to_slots[e] = slot as u32;
                    }
                }
                keys.extend_from_slice(&list);
                lists.push(keys.len() as u32);
            }
            lists.extend(keys);
            KeyUnion {
                longest: longest_list(heads, &lists),
                lists: upload(&[lists.len()], &lists),
                slots: to_entries.len(),
                causal_slots,
                to_entries: upload_map(to_entries),
                to_slots: upload_map(to_slots),
                rows_covered,
                rows_covered_causal,
            }
        })
    }

    /// Builds the CSC form: column offsets, rows in column order and their entry positions.
    fn transpose(&self) -> Vec<u32> {
        let (heads, nq, nk, nnz) = (self.heads, self.nq, self.nk, self.nnz());
        let mut counts = vec![0u32; heads * nk];
        for h in 0..heads {
            let first = self.row_offsets[h * (nq + 1)] as usize;
            let last = self.row_offsets[h * (nq + 1) + nq] as usize;
            for &j in &self.key_index[first..last] {
                counts[h * nk + j as usize] += 1;
            }
        }
        let mut data = vec![0u32; heads * (nk + 1) + 2 * nnz];
        let mut running = 0u32;
        for h in 0..heads {
            for j in 0..nk {
                data[h * (nk + 1) + j] = running;
                running += counts[h * nk + j];
            }
            data[h * (nk + 1) + nk] = running;
        }
        // Walking rows in order keeps each column's rows ascending.
        let mut next: Vec<u32> = (0..heads * nk).map(|c| data[c / nk * (nk + 1) + c % nk]).collect();
        let (rows_at, entries_at) = (heads * (nk + 1), heads * (nk + 1) + nnz);
        for h in 0..heads {
            for i in 0..nq {
                let (start, end) = (
                    self.row_offsets[h * (nq + 1) + i] as usize,
                    self.row_offsets[h * (nq + 1) + i + 1] as usize,
                );
                for e in start..end {
                    let column = h * nk + self.key_index[e] as usize;
                    let slot = next[column] as usize;
                    next[column] += 1;
                    data[rows_at + slot] = i as u32;
                    data[entries_at + slot] = e as u32;
                }
            }
        }
        data
    }
}

/// Returns the length of the longest of `heads` key lists, from their offsets [H + 1].
fn longest_list(heads: usize, offsets: &[u32]) -> usize {
    (0..heads)
        .map(|h| (offsets[h + 1] - offsets[h]) as usize)
        .max()
        .unwrap_or(0)
}

/// Uploads a slot or entry map, padded with NONE to one element when empty so it can be bound.
fn upload_map(mut map: Vec<u32>) -> Tensor {
    if map.is_empty() {
        map.push(NONE);
    }
    upload(&[map.len()], &map)
}

fn upload(shape: &[usize], data: &[u32]) -> Tensor {
    Tensor::from_u32(shape, data).expect("length matches shape")
}

/// Returns the per-head key lists, [H + 1] offsets and then the keys, when every row of each
/// head keeps the same keys.
fn shared_lists(heads: usize, nq: usize, row_offsets: &[u32], key_index: &[u32]) -> Option<Vec<u32>> {
    let row = |h: usize, i: usize| {
        let at = h * (nq + 1) + i;
        &key_index[row_offsets[at] as usize..row_offsets[at + 1] as usize]
    };
    let mut offsets = vec![0u32];
    let mut keys = Vec::new();
    for h in 0..heads {
        let first: &[u32] = if nq == 0 { &[] } else { row(h, 0) };
        if (1..nq).any(|i| row(h, i) != first) {
            return None;
        }
        keys.extend_from_slice(first);
        offsets.push(keys.len() as u32);
    }
    offsets.extend(keys);
    Some(offsets)
}
