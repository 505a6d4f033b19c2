//! One prompt per row: sample the row's candidates, then render its template, in parallel.
//!
//! Rows are split into fixed-size chunks that rayon renders independently into their own
//! contiguous buffers; every row's randomness comes from its own stream (seeded by its id), so
//! the output does not depend on chunking or thread count.

use arrow_array::{Array, Float64Array, ListArray, StringArray, UInt32Array};
use rayon::prelude::*;

use crate::render::{render, Slot, Template};
use crate::rng::Rng;
use crate::sampling::{Marks, Request, Sampler};

/// Rows rendered by one task; small enough to balance threads, large enough to amortise.
pub const CHUNK_ROWS: usize = 4096;

/// One data slot: per-row lists of items and/or ratings and/or texts (same lengths per row).
#[derive(Debug, Clone, Default)]
pub struct SlotColumns {
    pub items: Option<ListArray>,
    pub ratings: Option<ListArray>,
    pub texts: Option<ListArray>,
    /// Keep only the last `max_entries` entries of each row (after any hold-out).
    pub max_entries: Option<usize>,
}

/// Where each slot of the template gets its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `columns[k]`.
    Data(usize),
    /// The row's candidates.
    Candidates,
    /// The held-out item (the last history entry), with its rating.
    HeldOut,
}

/// Candidate sampling for a task.
#[derive(Debug, Clone)]
pub struct Sampling {
    pub sampler: Sampler,
    pub count: usize,
    /// Upstream candidates per row (dense item indices), passed through first.
    pub provided: Option<ListArray>,
    /// Which of `orders` balanced presentation orders of the drawn candidates to render
    /// (`Drawn::rotate`); the draw itself does not depend on it.
    pub order: usize,
    pub orders: usize,
}

/// A task's inputs besides the rows' data.
#[derive(Debug, Clone)]
pub struct Job {
    pub template: Template,
    pub sources: Vec<Source>,
    /// The slot whose emptiness means "no history"; its items count as seen.
    pub history: usize,
    /// Further slots whose items count as seen.
    pub also_seen: Vec<usize>,
    /// Evaluation: the history's last entry is held out.
    pub hold_out_last: bool,
    pub sampling: Option<Sampling>,
    pub n_items: usize,
}

/// What became of a row; Python reads the names (`PromptStatus` in `itdr_batch/status.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    EmptyHistory = 1,
    TooFewCandidates = 2,
}

impl Status {
    /// Each status's name, indexed by its discriminant.
    pub const NAMES: [&'static str; 3] = ["ok", "empty_history", "too_few_candidates"];
}

/// The rendered rows of one chunk.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Prompt bytes and their offsets (`offsets.len() == rows + 1`); empty for empty histories.
    pub bytes: Vec<u8>,
    pub offsets: Vec<i64>,
    /// Candidates (dense item indices) per row, flattened, with offsets.
    pub candidates: Vec<u32>,
    pub candidate_offsets: Vec<i32>,
    /// Held-out item per row (evaluation), and its position among the candidates.
    pub held_out_item: Vec<Option<u32>>,
    pub held_out_position: Vec<Option<u32>>,
    pub status: Vec<Status>,
}

/// Renders every row; `stream_seeds[row]` seeds the row's random stream.
pub fn build(
    job: &Job,
    columns: &[SlotColumns],
    item_fields: &[StringArray],
    stream_seeds: &[u64],
) -> Vec<Chunk> {
    let starts: Vec<usize> = (0..stream_seeds.len()).step_by(CHUNK_ROWS).collect();
    starts
        .into_par_iter()
        .map(|start| {
            let end = (start + CHUNK_ROWS).min(stream_seeds.len());
            build_chunk(job, columns, item_fields, stream_seeds, start..end)
        })
        .collect()
}

fn build_chunk(
    job: &Job,
    columns: &[SlotColumns],
    item_fields: &[StringArray],
    stream_seeds: &[u64],
    rows: std::ops::Range<usize>,
) -> Chunk {
    let mut chunk = Chunk {
        offsets: vec![0],
        candidate_offsets: vec![0],
        ..Chunk::default()
    };
    let mut marks = Marks::new(job.n_items);
    let mut scratch = Vec::new();
    let no_items: &[u32] = &[];
    let rows_in_chunk = rows.len();
    for row in rows {
        let history = row_slot(&columns[job.history], row);
        let history_items = history.items.unwrap_or(no_items);
        let kept = history.len.saturating_sub(usize::from(job.hold_out_last));
        if kept == 0 {
            chunk.offsets.push(chunk.bytes.len() as i64);
            chunk.candidate_offsets.push(chunk.candidates.len() as i32);
            chunk.held_out_item.push(None);
            chunk.held_out_position.push(None);
            chunk.status.push(Status::EmptyHistory);
            continue;
        }
        let mut rng = Rng::from_seed(stream_seeds[row]);
        let also_seen: Vec<u32> = job
            .also_seen
            .iter()
            .flat_map(|&k| {
                row_slot(&columns[k], row)
                    .items
                    .unwrap_or(no_items)
                    .iter()
                    .copied()
            })
            .collect();
        let drawn = job.sampling.as_ref().map(|sampling| {
            let request = Request {
                history: history_items,
                also_seen: &also_seen,
                provided: sampling.provided.as_ref().map(|p| row_items(p, row)),
                count: sampling.count,
                hold_out_last: job.hold_out_last,
            };
            let mut drawn = sampling.sampler.draw(&request, &mut rng, &mut marks);
            drawn.rotate(sampling.order, sampling.orders);
            drawn
        });
        let mut slots = Vec::with_capacity(job.sources.len());
        for source in &job.sources {
            let slot = match source {
                Source::Data(c) => {
                    // The history was read above; it loses its held-out entry, if any.
                    let slot = if *c == job.history {
                        history.skip(0, kept)
                    } else {
                        row_slot(&columns[*c], row)
                    };
                    match columns[*c].max_entries {
                        Some(n) => slot.tail(n),
                        None => slot,
                    }
                }
                Source::Candidates => Slot {
                    len: drawn.as_ref().map_or(0, |d| d.candidates.len()),
                    items: drawn.as_ref().map(|d| d.candidates.as_slice()),
                    ..Slot::default()
                },
                Source::HeldOut => history.skip(kept, 1),
            };
            slots.push(slot);
        }
        let before = chunk.bytes.len();
        render(
            &job.template,
            item_fields,
            &slots,
            &mut chunk.bytes,
            &mut scratch,
        );
        if before == 0 {
            // Size the chunk's buffer from its first prompt, instead of growing it by copies.
            let estimate = (chunk.bytes.len() + chunk.bytes.len() / 8) * rows_in_chunk;
            chunk.bytes.reserve(estimate);
        }
        chunk.offsets.push(chunk.bytes.len() as i64);
        let short = drawn.as_ref().is_some_and(|d| d.short);
        if let Some(d) = &drawn {
            chunk.candidates.extend_from_slice(&d.candidates);
        }
        chunk.candidate_offsets.push(chunk.candidates.len() as i32);
        chunk
            .held_out_item
            .push(job.hold_out_last.then(|| history_items[kept]));
        chunk.held_out_position.push(
            drawn
                .as_ref()
                .and_then(|d| d.held_out)
                .map(|(_, at)| at as u32),
        );
        chunk.status.push(if short {
            Status::TooFewCandidates
        } else {
            Status::Ok
        });
    }
    chunk
}

/// Checks that every row has as many ratings and texts as items in each slot.
pub fn check_columns(columns: &[SlotColumns], rows: usize) -> Result<(), String> {
    for (k, slot) in columns.iter().enumerate() {
        let lists: Vec<&ListArray> = [&slot.items, &slot.ratings, &slot.texts]
            .into_iter()
            .flatten()
            .collect();
        for list in &lists {
            if list.len() != rows {
                return Err(format!("slot {k}: {} rows, expected {rows}", list.len()));
            }
        }
        if let Some((first, rest)) = lists.split_first() {
            for row in 0..rows {
                let len = row_range(first, row).1;
                if rest.iter().any(|l| row_range(l, row).1 != len) {
                    return Err(format!(
                        "slot {k}: row {row} has lists of different lengths"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn row_range(list: &ListArray, row: usize) -> (usize, usize) {
    let offsets = list.value_offsets();
    (
        offsets[row] as usize,
        (offsets[row + 1] - offsets[row]) as usize,
    )
}

fn row_items(list: &ListArray, row: usize) -> &[u32] {
    let (start, len) = row_range(list, row);
    &values_as::<UInt32Array>(list).values()[start..start + len]
}

fn row_slot(columns: &SlotColumns, row: usize) -> Slot<'_> {
    let len = [&columns.items, &columns.ratings, &columns.texts]
        .into_iter()
        .flatten()
        .map(|list| row_range(list, row).1)
        .next()
        .unwrap_or(0);
    Slot {
        len,
        items: columns.items.as_ref().map(|l| row_items(l, row)),
        ratings: columns
            .ratings
            .as_ref()
            .map(|l| (values_as::<Float64Array>(l), row_range(l, row).0)),
        texts: columns
            .texts
            .as_ref()
            .map(|l| (values_as::<StringArray>(l), row_range(l, row).0)),
    }
}

fn values_as<T: 'static>(list: &ListArray) -> &T {
    list.values()
        .as_any()
        .downcast_ref::<T>()
        .expect("list value types are checked by the binding")
}

#[cfg(test)]
mod tests {
    use super::Status;

    #[test]
    fn status_names_are_indexed_by_discriminant() {
        for (status, name) in [
            (Status::Ok, "ok"),
            (Status::EmptyHistory, "empty_history"),
            (Status::TooFewCandidates, "too_few_candidates"),
        ] {
            assert_eq!(Status::NAMES[status as usize], name);
        }
    }
}
