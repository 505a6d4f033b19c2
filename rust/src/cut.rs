//! Cutting an interactions log into a shard's batches (stage 0 of a run,
//! `itdr_batch/run/extract.py`).
//!
//! The log streams through once, in chunks. Each row's key is looked up among the shard's keys
//! (a hash table, built once: `positions.rs`); a row of shard row `r` goes to part `r / rows_per_part`, with `r`
//! in an added `__row` column in place of the key (the shard's, a gather away); rows of no shard
//! row are dropped. Given the items, each row's `item_id` is looked up the same way and gives
//! way to `__item`, its item's position (what prompts index by; rows of unknown items are
//! dropped). Each part is one Arrow IPC stream file (uncompressed: LZ4 took a third of the
//! cut's time), rows in log order, so ties in time
//! still break by the log's order. A hash lookup and a gather per row: what a join and a
//! partitioned Parquet sink cost in Polars, several times cheaper, and the same whatever the
//! log's order.
//!
//! A part read back is put in row order, each row's interactions by time, by `row_time_order`
//! (a counting sort by row, then a small stable sort per row): a batch is then a slice, and its
//! lists need no sort.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow_ipc::writer::{
    write_message, DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions,
    StreamWriter,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use arrow_select::take::take;
use rayon::prelude::*;

use crate::positions::{invalid, Positions, NONE};

/// The added column: the row's position in the shard.
pub const ROW: &str = "__row";
/// The column an item id gives way to: the item's position among the items.
pub const ITEM: &str = "__item";
/// The log's item column.
const ITEM_ID: &str = "item_id";
/// Rows per encoded piece of a part (memory: a chunk's pieces, encoded, before writing).
const PIECE_ROWS: usize = 1 << 16;

/// Writes a log's rows into one IPC stream file per part of a shard's rows.
pub struct Cutter {
    key: String,
    positions: Positions,
    items: Option<Positions>,
    rows_per_part: u32,
    dir: PathBuf,
    options: IpcWriteOptions,
    writers: Vec<Option<StreamWriter<BufWriter<File>>>>,
}

impl Cutter {
    /// `keys`: the shard's keys in row order; `key`: the log's key column; `items`: the item
    /// ids by position, whose `item_id`s become `ITEM` (not with `item_id` as the key); part
    /// `p` holds shard rows `[p * rows_per_part, (p + 1) * rows_per_part)`, in
    /// `part_path(dir, p)`.
    pub fn new(
        keys: &dyn Array,
        key: &str,
        items: Option<&dyn Array>,
        rows_per_part: u32,
        dir: &Path,
    ) -> Result<Self, ArrowError> {
        if rows_per_part == 0 {
            return Err(invalid("rows_per_part must be at least 1"));
        }
        if items.is_some() && key == ITEM_ID {
            return Err(invalid(
                "items are looked up only when the key is not item_id",
            ));
        }
        let positions = Positions::new(keys, "shard keys")?;
        let items = items
            .map(|ids| Positions::new(ids, "item ids"))
            .transpose()?;
        let parts = positions.len().div_ceil(rows_per_part as usize);
        Ok(Cutter {
            key: key.to_string(),
            positions,
            items,
            rows_per_part,
            dir: dir.to_path_buf(),
            options: IpcWriteOptions::default(),
            writers: (0..parts).map(|_| None).collect(),
        })
    }

    /// Cuts one chunk of the log: its rows of shard rows, with `ROW` in place of the key
    /// (and `ITEM` in place of `item_id`), appended to their parts.
    pub fn push(&mut self, chunk: &RecordBatch) -> Result<(), ArrowError> {
        let column = |name: &str| {
            chunk
                .schema_ref()
                .index_of(name)
                .map_err(|_| invalid(&format!("the log has no {name:?} column")))
        };
        let key = column(&self.key)?;
        let mut rows = self.positions.rows(chunk.column(key).as_ref())?;
        let mut replaced = vec![key];
        let items = match &self.items {
            Some(items) => {
                let item = column(ITEM_ID)?;
                replaced.push(item);
                let positions = items.rows(chunk.column(item).as_ref())?;
                for (row, &position) in rows.iter_mut().zip(&positions) {
                    if position == NONE {
                        *row = NONE;
                    }
                }
                Some(positions)
            }
            None => None,
        };
        let others: Vec<usize> = (0..chunk.num_columns())
            .filter(|c| !replaced.contains(c))
            .collect();
        let chunk = &chunk.project(&others)?;
        // Grouped by part in a stable counting sort: the log's order in each part.
        let parts = rows
            .iter()
            .map(|&row| (row != NONE).then(|| (row / self.rows_per_part) as usize));
        let (starts, order) = grouped(parts, self.writers.len());
        // Each part's rows in pieces, gathered and encoded on every core (a log sorted by user
        // sends a whole chunk to one part), then written in order.
        let pieces: Vec<(usize, &[u32])> = (0..self.writers.len())
            .flat_map(|p| {
                order[starts[p]..starts[p + 1]]
                    .chunks(PIECE_ROWS)
                    .map(move |r| (p, r))
            })
            .collect();
        let schema = with_added(chunk.schema_ref(), items.is_some());
        let encoded = pieces
            .into_par_iter()
            .map(|(p, picked)| {
                let indices = UInt32Array::from(picked.to_vec());
                let mut columns = chunk
                    .columns()
                    .iter()
                    .map(|c| take(c.as_ref(), &indices, None))
                    .collect::<Result<Vec<ArrayRef>, _>>()?;
                if let Some(items) = &items {
                    let positions = picked.iter().map(|&i| items[i as usize]);
                    columns.push(Arc::new(UInt32Array::from_iter_values(positions)));
                }
                let shard_rows = picked.iter().map(|&i| rows[i as usize]);
                columns.push(Arc::new(UInt32Array::from_iter_values(shard_rows)));
                let piece = RecordBatch::try_new(schema.clone(), columns)?;
                let (dictionaries, message) = IpcDataGenerator::default().encode(
                    &piece,
                    &mut DictionaryTracker::new(false),
                    &self.options,
                    &mut IpcWriteContext::default(),
                )?;
                if !dictionaries.is_empty() {
                    return Err(invalid("the log has dictionary-encoded columns"));
                }
                Ok((p, message))
            })
            .collect::<Result<Vec<_>, ArrowError>>()?;
        for (p, message) in encoded {
            self.open(p, &schema)?;
            let writer = self.writers[p].as_mut().expect("opened above");
            write_message(writer.get_mut(), message, &self.options)?;
        }
        Ok(())
    }

    /// Ends every part's stream; parts no row went to have no file.
    pub fn finish(self) -> Result<(), ArrowError> {
        for writer in self.writers.into_iter().flatten() {
            writer
                .into_inner()?
                .into_inner()
                .map_err(|e| e.into_error())?;
        }
        Ok(())
    }

    /// Creates part `part`'s file (its stream's schema) on its first rows.
    fn open(&mut self, part: usize, schema: &SchemaRef) -> Result<(), ArrowError> {
        if self.writers[part].is_none() {
            let file = BufWriter::new(File::create(part_path(&self.dir, part))?);
            let writer = StreamWriter::try_new_with_options(file, schema, self.options.clone())?;
            self.writers[part] = Some(writer);
        }
        Ok(())
    }
}

/// The permutation putting a part's rows in `(row, time)` order, ties in their given order:
/// grouped by the (dense) rows in a stable counting sort (rows already grouped in order, from a
/// log sorted by key, are kept as they are), then each row's few entries sorted stably by time,
/// rows on every core; a row already in time order (a log kept by time) costs one look.
pub fn row_time_order(rows: &[u32], times: &[i64]) -> Vec<u32> {
    assert_eq!(rows.len(), times.len(), "one time per row");
    if rows.is_empty() {
        return Vec::new();
    }
    let (starts, mut order) = if rows.is_sorted() {
        let changes = (1..rows.len()).filter(|&i| rows[i] != rows[i - 1]);
        let starts = std::iter::once(0).chain(changes).chain([rows.len()]);
        (starts.collect(), (0..rows.len() as u32).collect())
    } else {
        let (low, high) = (rows.iter().min(), rows.iter().max());
        let (&low, &high) = (low.expect("not empty"), high.expect("not empty"));
        let keys = rows.iter().map(|&row| Some((row - low) as usize));
        grouped(keys, (high - low) as usize + 1)
    };
    let mut segments = Vec::with_capacity(starts.len() - 1);
    let mut rest = order.as_mut_slice();
    for window in starts.windows(2) {
        let (segment, tail) = rest.split_at_mut(window[1] - window[0]);
        segments.push(segment);
        rest = tail;
    }
    segments
        .par_iter_mut()
        .for_each_init(Vec::new, |keys, s| by_time(s, times, keys));
    order
}

/// Sorts one row's entries (positions into `times`) stably by time: as `u64` keys, the time
/// since the row's first in the high half and the position in the low (unique, so ties keep
/// their order), which sort ~40% faster than looking each time up; by lookup when the row's
/// times span 2^32 or more. `keys` is scratch space.
fn by_time(entries: &mut [u32], times: &[i64], keys: &mut Vec<u64>) {
    let time = |&i: &u32| times[i as usize];
    if entries.is_sorted_by_key(time) {
        return;
    }
    let (low, high) = entries
        .iter()
        .map(time)
        .fold((i64::MAX, i64::MIN), |(l, h), t| (l.min(t), h.max(t)));
    match u32::try_from(high.abs_diff(low)) {
        Ok(_) => {
            keys.clear();
            let key = |&i: &u32| (time(&i).abs_diff(low) << 32) | u64::from(i);
            keys.extend(entries.iter().map(key));
            keys.sort_unstable();
            for (entry, key) in entries.iter_mut().zip(keys.iter()) {
                *entry = *key as u32;
            }
        }
        Err(_) => entries.sort_by_key(time),
    }
}

/// A stable counting sort: the positions of `keys` (each below `groups`; `None` leaves a
/// position out) grouped by key, in input order within a group, and each group's start
/// (`starts[g]..starts[g + 1]`).
fn grouped(
    keys: impl Iterator<Item = Option<usize>> + Clone,
    groups: usize,
) -> (Vec<usize>, Vec<u32>) {
    let mut starts = vec![0usize; groups + 1];
    for g in keys.clone().flatten() {
        starts[g + 1] += 1;
    }
    for g in 1..starts.len() {
        starts[g] += starts[g - 1];
    }
    let mut next = starts.clone();
    let mut order = vec![0u32; starts[groups]];
    for (i, key) in keys.enumerate() {
        if let Some(g) = key {
            order[next[g]] = i as u32;
            next[g] += 1;
        }
    }
    (starts, order)
}

/// The file of part `part` under `dir`.
pub fn part_path(dir: &Path, part: usize) -> PathBuf {
    dir.join(format!("part-{part:06}.arrow"))
}

/// `schema` with `ITEM` (when items are looked up) and `ROW` added.
fn with_added(schema: &SchemaRef, items: bool) -> SchemaRef {
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    if items {
        fields.push(Arc::new(Field::new(ITEM, DataType::UInt32, false)));
    }
    fields.push(Arc::new(Field::new(ROW, DataType::UInt32, false)));
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Int64Array;
    use arrow_ipc::reader::StreamReader;

    fn read(dir: &Path, part: usize) -> Vec<RecordBatch> {
        let file = File::open(part_path(dir, part)).unwrap();
        StreamReader::try_new(file, None)
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
    }

    fn column<T: Array + Clone + 'static>(batches: &[RecordBatch], name: &str) -> Vec<T> {
        batches
            .iter()
            .map(|b| {
                b.column_by_name(name)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<T>()
                    .unwrap()
                    .clone()
            })
            .collect()
    }

    fn names(batches: &[RecordBatch]) -> Vec<String> {
        batches[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    #[test]
    fn rows_go_to_their_part_in_log_order() {
        let dir = std::env::temp_dir().join(format!("cut-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Shard rows: 30 -> 0, 10 -> 1, 20 -> 2; two rows per part.
        let keys = Int64Array::from(vec![30, 10, 20]);
        let mut cutter = Cutter::new(&keys, "user_id", None, 2, &dir).unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("item_id", DataType::Int64, false),
        ]));
        for (users, items) in [
            (vec![20, 10, 99, 30], vec![1, 2, 3, 4]),
            (vec![10, 20], vec![5, 6]),
        ] {
            let chunk = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(users)),
                    Arc::new(Int64Array::from(items)),
                ],
            )
            .unwrap();
            cutter.push(&chunk).unwrap();
        }
        cutter.finish().unwrap();
        let first = read(&dir, 0);
        let items: Vec<i64> = column::<Int64Array>(&first, "item_id")
            .iter()
            .flat_map(|a| a.values().to_vec())
            .collect();
        let rows: Vec<u32> = column::<UInt32Array>(&first, ROW)
            .iter()
            .flat_map(|a| a.values().to_vec())
            .collect();
        assert_eq!(items, vec![2, 4, 5]); // users 10 and 30, in log order; 99 is dropped
        assert_eq!(rows, vec![1, 0, 1]);
        // The key gives way to the shard row.
        assert_eq!(names(&first), vec!["item_id", ROW]);
        let second = read(&dir, 1);
        let items: Vec<i64> = column::<Int64Array>(&second, "item_id")
            .iter()
            .flat_map(|a| a.values().to_vec())
            .collect();
        assert_eq!(items, vec![1, 6]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn item_ids_give_way_to_their_positions() {
        let dir = std::env::temp_dir().join(format!("cut-items-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let keys = Int64Array::from(vec![30, 10]);
        let items = Int64Array::from(vec![5, 2, 4]);
        let mut cutter = Cutter::new(&keys, "user_id", Some(&items), 2, &dir).unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("item_id", DataType::Int64, false),
            Field::new("timestamp", DataType::Int64, false),
        ]));
        let chunk = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![10, 30, 10, 99])),
                Arc::new(Int64Array::from(vec![2, 4, 7, 5])),
                Arc::new(Int64Array::from(vec![100, 200, 300, 400])),
            ],
        )
        .unwrap();
        cutter.push(&chunk).unwrap();
        cutter.finish().unwrap();
        let part = read(&dir, 0);
        assert_eq!(names(&part), vec!["timestamp", ITEM, ROW]);
        let values = |name| -> Vec<u32> {
            column::<UInt32Array>(&part, name)
                .iter()
                .flat_map(|a| a.values().to_vec())
                .collect()
        };
        // Item 7 is no item and user 99 no shard row: both rows are dropped.
        assert_eq!(values(ITEM), vec![1, 2]);
        assert_eq!(values(ROW), vec![1, 0]);
        assert!(Cutter::new(&items, "item_id", Some(&items), 2, &dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rows_in_row_and_time_order_ties_as_given() {
        let rows = [7, 5, 7, 5, 7, 9];
        let times = [30, 20, 10, 20, 30, 0];
        // Row 5: entries 1 and 3 (a tie, as given); row 7: 2 (t=10), then 0 and 4 (a tie).
        assert_eq!(row_time_order(&rows, &times), vec![1, 3, 2, 0, 4, 5]);
        assert!(row_time_order(&[], &[]).is_empty());
        // Times spanning 2^32 or more sort by lookup, with the same order.
        let wide = [5, 5, 5, 5];
        let times = [i64::MAX, i64::MIN, 0, i64::MIN];
        assert_eq!(row_time_order(&wide, &times), vec![1, 3, 2, 0]);
        // Rows already grouped in order (a log sorted by key) take the same order.
        let rows = [5, 5, 7, 7, 7, 9];
        let times = [20, 20, 30, 10, 30, 0];
        assert_eq!(row_time_order(&rows, &times), vec![0, 1, 3, 2, 4, 5]);
    }
}
