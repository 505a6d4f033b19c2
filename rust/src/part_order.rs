//! A part of the cut read back (`itdr_batch/run/extract.py`), put in `(row, time)` order: a
//! batch is then a slice of it, and its lists need no sort.

use std::borrow::Cow;
use std::iter::{once, repeat_n};

use rayon::prelude::*;

use crate::cut::grouped;

/// A part's entries in `(row, time)` order, ties in their given order: `order` the permutation,
/// `rows` the entries' rows in it (already known, so the caller gathers only the other columns).
#[derive(Debug, PartialEq)]
pub struct Ordered {
    pub order: Vec<u32>,
    pub rows: Vec<u32>,
}

/// Rows already grouped in order (a log sorted by key) keep their order; others are grouped by
/// the (dense) rows in a stable counting sort and their times gathered in that order once. Each
/// row's few entries are then sorted stably by time where they lie, rows on every core; a row
/// already in time order (a log kept by time) costs one look.
pub fn row_time_order(rows: &[u32], times: &[i64]) -> Ordered {
    assert_eq!(rows.len(), times.len(), "one time per row");
    let (starts, mut order, rows, times) = if rows.is_sorted() {
        let changes = (1..rows.len()).filter(|&i| rows[i] != rows[i - 1]);
        let starts: Vec<usize> = once(0).chain(changes).chain([rows.len()]).collect();
        let order: Vec<u32> = (0..rows.len() as u32).collect();
        (starts, order, rows.to_vec(), Cow::Borrowed(times))
    } else {
        let low = *rows.iter().min().expect("not empty");
        let groups = (rows.iter().max().expect("not empty") - low) as usize + 1;
        let keys = rows.iter().map(|&row| Some((row - low) as usize));
        let (mut starts, mut order) = (Vec::new(), Vec::new());
        grouped(keys, groups, &mut starts, &mut order);
        // Read all over the part once, here, rather than by each row's sort in turn.
        let times = order.par_iter().map(|&i| times[i as usize]).collect();
        let counts = starts.windows(2).map(|w| w[1] - w[0]);
        let rows = (low..)
            .zip(counts)
            .flat_map(|(row, n)| repeat_n(row, n))
            .collect();
        (starts, order, rows, Cow::Owned(times))
    };
    segments(&mut order, &starts)
        .into_par_iter()
        .zip(starts.par_windows(2))
        .for_each_init(Vec::new, |keys, (entries, w)| {
            by_time(entries, &times[w[0]..w[1]], keys)
        });
    Ordered { order, rows }
}

/// `values` split at `starts` (`starts[g]..starts[g + 1]`, covering them all), each mutable.
fn segments<'a, T>(values: &'a mut [T], starts: &[usize]) -> Vec<&'a mut [T]> {
    let mut segments = Vec::with_capacity(starts.len().saturating_sub(1));
    let mut rest = values;
    for window in starts.windows(2) {
        let (segment, tail) = rest.split_at_mut(window[1] - window[0]);
        segments.push(segment);
        rest = tail;
    }
    segments
}

/// Sorts one row's entries (positions in the part, ascending) stably by their `times` (one
/// each, in the same order): as `u64` keys, the time since the row's first in the high half and
/// the position in the low (unique, so ties keep their order), which sort ~40% faster than
/// pairs; by pairs when the row's times span 2^32 or more. `keys` is scratch space.
fn by_time(entries: &mut [u32], times: &[i64], keys: &mut Vec<u64>) {
    if times.is_sorted() {
        return;
    }
    let (low, high) = times
        .iter()
        .fold((i64::MAX, i64::MIN), |(l, h), &t| (l.min(t), h.max(t)));
    keys.clear();
    if u32::try_from(high.abs_diff(low)).is_ok() {
        let key = |(&i, &t): (&u32, &i64)| (t.abs_diff(low) << 32) | u64::from(i);
        keys.extend(entries.iter().zip(times).map(key));
        keys.sort_unstable();
        for (entry, key) in entries.iter_mut().zip(keys.iter()) {
            *entry = *key as u32;
        }
    } else {
        let mut pairs: Vec<(i64, u32)> =
            times.iter().copied().zip(entries.iter().copied()).collect();
        pairs.sort_unstable();
        for (entry, (_, i)) in entries.iter_mut().zip(pairs) {
            *entry = i;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ordered(order: &[u32], rows: &[u32]) -> Ordered {
        Ordered {
            order: order.to_vec(),
            rows: rows.to_vec(),
        }
    }

    #[test]
    fn rows_in_row_and_time_order_ties_as_given() {
        let rows = [7, 5, 7, 5, 7, 9];
        let times = [30, 20, 10, 20, 30, 0];
        // Row 5: entries 1 and 3 (a tie, as given); row 7: 2 (t=10), then 0 and 4 (a tie).
        let want = ordered(&[1, 3, 2, 0, 4, 5], &[5, 5, 7, 7, 7, 9]);
        assert_eq!(row_time_order(&rows, &times), want);
        assert_eq!(row_time_order(&[], &[]), ordered(&[], &[]));
        // Rows already grouped in order (a log sorted by key) take the same order.
        let rows = [5, 5, 7, 7, 7, 9];
        let times = [20, 20, 30, 10, 30, 0];
        let want = ordered(&[0, 1, 3, 2, 4, 5], &rows);
        assert_eq!(row_time_order(&rows, &times), want);
    }

    #[test]
    fn times_spanning_2_to_the_32_sort_as_pairs_in_the_same_order() {
        let times = [i64::MAX, i64::MIN, 0, i64::MIN, 5];
        // Grouped in order, and not.
        let want = ordered(&[1, 3, 2, 0, 4], &[5, 5, 5, 5, 6]);
        assert_eq!(row_time_order(&[5, 5, 5, 5, 6], &times), want);
        let want = ordered(&[4, 1, 3, 2, 0], &[4, 5, 5, 5, 5]);
        assert_eq!(row_time_order(&[5, 5, 5, 5, 4], &times), want);
    }

    #[test]
    fn a_shuffled_part_takes_a_stable_sorts_order() {
        // A part of 300 rows whose entries are spread over it, times with many ties.
        let n = 20_000u64;
        let mix = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        let rows: Vec<u32> = (0..n).map(|i| 1000 + (mix(i) % 300) as u32).collect();
        let times: Vec<i64> = (0..n)
            .map(|i| 1_600_000_000 + (mix(i + n) % 50) as i64)
            .collect();
        let got = row_time_order(&rows, &times);
        // The reference: a stable sort by (row, time).
        let mut want: Vec<u32> = (0..n as u32).collect();
        want.sort_by_key(|&i| (rows[i as usize], times[i as usize]));
        assert_eq!(got.order, want);
        let rows_in_order: Vec<u32> = want.iter().map(|&i| rows[i as usize]).collect();
        assert_eq!(got.rows, rows_in_order);
        // The same times with the rows grouped in order (a log sorted by key).
        let mut grouped_rows = rows.clone();
        grouped_rows.sort_unstable();
        let got = row_time_order(&grouped_rows, &times);
        let mut want: Vec<u32> = (0..n as u32).collect();
        want.sort_by_key(|&i| (grouped_rows[i as usize], times[i as usize]));
        assert_eq!(got.order, want);
        assert_eq!(got.rows, grouped_rows);
    }
}
