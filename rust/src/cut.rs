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
//! A part read back is put in row order, each row's interactions by time (`part_order.rs`).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use arrow_array::{make_array, Array, ArrayRef, RecordBatch, UInt32Array};
use arrow_buffer::{ArrowNativeType, Buffer, MutableBuffer, ScalarBuffer};
use arrow_data::ArrayData;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use arrow_select::concat::{concat, concat_batches};
use arrow_select::take::take;
use rayon::prelude::*;

use crate::positions::{invalid, Positions, NONE};

/// The added column: the row's position in the shard.
pub const ROW: &str = "__row";
/// The column an item id gives way to: the item's position among the items.
pub const ITEM: &str = "__item";
/// The log's item column.
const ITEM_ID: &str = "item_id";
/// Values gathered per task on a core.
const GATHER_ROWS: usize = 1 << 16;
/// Bytes a part's file gathers before writing them: a chunk of a shuffled log gives every part
/// a small piece of a few buffers (with 8 KiB, a third more of the cut's time in the kernel).
const WRITE_BUFFER: usize = 1 << 16;
/// Rows a part's piece gathers before it is written (a shuffled log's are small).
const MIN_PIECE_ROWS: usize = 2048;

/// Writes a log's rows into one IPC stream file per part of a shard's rows.
pub struct Cutter {
    key: String,
    positions: Positions,
    items: Option<Positions>,
    rows_per_part: u32,
    parts: usize,
    scratch: Scratch,
    writer: Writer,
}

/// What one push leaves to the next: the chunk's lookups and their grouping by part (the
/// columns' memory comes back from the writer). Each push's own (tens of MB a chunk) was, in
/// about half the runs, handed back to the OS by glibc's malloc and faulted in again by the next
/// push: a 1M-user shard's cut then took ~600k page faults and 1.5-2.5 s more.
#[derive(Default)]
struct Scratch {
    rows: Vec<u32>,
    items: Vec<u32>,
    starts: Vec<usize>,
    order: Vec<u32>,
}

/// A chunk's rows in part order: part `p`'s are rows `starts[p]..starts[p + 1]` of `columns`.
struct Gathered {
    schema: SchemaRef,
    columns: Vec<ArrayRef>,
    starts: Vec<usize>,
}

/// The thread that writes the parts' files while the next chunk's rows are looked up and
/// grouped: copying a chunk into the page cache took a quarter of the cut's CPU (~2.8 s at a
/// 1M-user shard's 2.6 GB), on the thread that cuts. The next chunk is gathered into the
/// columns' memory once it is written and given back: one chunk's columns at a time (a second
/// set, gathered meanwhile, held ~40 MiB more at the 1M-user shard).
struct Writer {
    chunks: Option<SyncSender<Gathered>>,
    // In a mutex only for the Python class, which must be `Sync`: one thread pushes at a time.
    returns: Mutex<Returns>,
    thread: Option<JoinHandle<Result<(), ArrowError>>>,
}

/// The columns handed to the writer and not yet given back (`None`: memory another array
/// still holds, freed).
struct Returns {
    receiver: Receiver<Option<MutableBuffer>>,
    lent: usize,
}

impl Writer {
    fn start(dir: &Path, parts: usize) -> Result<Self, ArrowError> {
        let (chunks, pending) = sync_channel::<Gathered>(0);
        let (give_back, receiver) = channel();
        let mut files = PartFiles::new(dir, parts);
        let thread = std::thread::Builder::new()
            .name("cut-writer".into())
            .spawn(move || {
                for chunk in pending {
                    files.write(&chunk)?;
                    for column in chunk.columns {
                        // A cutter that failed takes none back: the memory is freed.
                        let _ = give_back.send(reclaim(column));
                    }
                }
                files.finish()
            })?;
        let returns = Mutex::new(Returns { receiver, lent: 0 });
        Ok(Writer {
            chunks: Some(chunks),
            returns,
            thread: Some(thread),
        })
    }

    /// Hands `chunk` over; the error that stopped the writer, if it stopped.
    fn write(&mut self, chunk: Gathered) -> Result<(), ArrowError> {
        self.returns().lent += chunk.columns.len();
        match self.chunks.as_ref().map(|chunks| chunks.send(chunk)) {
            Some(Ok(())) => Ok(()),
            _ => Err(self
                .finish()
                .err()
                .unwrap_or_else(|| invalid("the part writer has stopped"))),
        }
    }

    /// The memory of the chunk handed over last, once it is written.
    fn written(&self) -> Vec<MutableBuffer> {
        let mut returns = self.returns();
        let mut buffers = Vec::with_capacity(returns.lent);
        while returns.lent > 0 {
            match returns.receiver.recv() {
                Ok(buffer) => buffers.extend(buffer),
                Err(_) => break, // the writer stopped: `write` says so next
            }
            returns.lent -= 1;
        }
        returns.lent = 0;
        buffers
    }

    fn returns(&self) -> std::sync::MutexGuard<'_, Returns> {
        self.returns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for every chunk handed over to be written and the files ended; once.
    fn finish(&mut self) -> Result<(), ArrowError> {
        drop(self.chunks.take());
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(invalid("the part writer panicked"))),
            None => Err(invalid("the part writer has stopped")),
        }
    }
}

/// The parts' files, each an IPC stream created on its first rows.
struct PartFiles {
    dir: PathBuf,
    writers: Vec<Option<StreamWriter<BufWriter<File>>>>,
    /// Each part's small pieces, copied, not yet written.
    pending: Vec<Pending>,
}

#[derive(Default)]
struct Pending {
    pieces: Vec<RecordBatch>,
    rows: usize,
}

impl PartFiles {
    fn new(dir: &Path, parts: usize) -> Self {
        PartFiles {
            dir: dir.to_path_buf(),
            writers: (0..parts).map(|_| None).collect(),
            pending: (0..parts).map(|_| Pending::default()).collect(),
        }
    }

    /// Each part's rows of `chunk` appended to its file (arrow copies the columns' slices). A
    /// shuffled log gives every part a small piece of each chunk: those are gathered into
    /// pieces of `MIN_PIECE_ROWS` first (as many small batches took pyarrow five times as long
    /// to read back).
    fn write(&mut self, chunk: &Gathered) -> Result<(), ArrowError> {
        for (p, bounds) in chunk.starts.windows(2).enumerate() {
            let (start, end) = (bounds[0], bounds[1]);
            if start == end {
                continue;
            }
            let slices = chunk.columns.iter().map(|c| c.slice(start, end - start));
            let piece = RecordBatch::try_new(chunk.schema.clone(), slices.collect())?;
            let pending = &mut self.pending[p];
            if pending.rows + piece.num_rows() < MIN_PIECE_ROWS {
                // A copy: the chunk's columns go back to the cutter once written.
                pending
                    .pieces
                    .push(concat_batches(&chunk.schema, [&piece])?);
                pending.rows += piece.num_rows();
                continue;
            }
            self.write_merged(p, Some(piece))?;
        }
        Ok(())
    }

    /// Part `p`'s pending pieces, then `last`, written as one batch (nothing when there are
    /// none).
    fn write_merged(&mut self, p: usize, last: Option<RecordBatch>) -> Result<(), ArrowError> {
        let pending = &mut self.pending[p];
        pending.pieces.extend(last);
        pending.rows = 0;
        let pieces = std::mem::take(&mut pending.pieces);
        let piece = match pieces.as_slice() {
            [] => return Ok(()),
            [one] => one.clone(),
            [first, ..] => concat_batches(&first.schema(), &pieces)?,
        };
        self.writer(p, &piece.schema())?.write(&piece)
    }

    /// Part `p`'s stream, created on its first rows.
    fn writer(
        &mut self,
        p: usize,
        schema: &SchemaRef,
    ) -> Result<&mut StreamWriter<BufWriter<File>>, ArrowError> {
        if self.writers[p].is_none() {
            let file =
                BufWriter::with_capacity(WRITE_BUFFER, File::create(part_path(&self.dir, p))?);
            self.writers[p] = Some(StreamWriter::try_new(file, schema)?);
        }
        Ok(self.writers[p].as_mut().expect("created above"))
    }

    /// Writes what is pending and ends every part's stream; parts no row went to have no file.
    fn finish(mut self) -> Result<(), ArrowError> {
        for p in 0..self.pending.len() {
            self.write_merged(p, None)?;
        }
        for writer in self.writers.into_iter().flatten() {
            writer
                .into_inner()?
                .into_inner()
                .map_err(|e| e.into_error())?;
        }
        Ok(())
    }
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
            parts,
            scratch: Scratch::default(),
            writer: Writer::start(dir, parts)?,
        })
    }

    /// Cuts one chunk of the log, its record batches (of one schema) together: its rows of
    /// shard rows, with `ROW` in place of the key (and `ITEM` in place of `item_id`), appended
    /// to their parts (by the writer, while the next chunk is looked up: an error of the
    /// writer's comes from the next push, or `finish`). The batches are gathered from where
    /// they lie (a chunk spans row groups of the log, a batch each), not copied into one
    /// first. After an error the cutter takes no more chunks.
    pub fn push(&mut self, chunk: &[RecordBatch]) -> Result<(), ArrowError> {
        let Some(first) = chunk.first() else {
            return Ok(());
        };
        let column = |name: &str| {
            first
                .schema_ref()
                .index_of(name)
                .map_err(|_| invalid(&format!("the log has no {name:?} column")))
        };
        let key = column(&self.key)?;
        let s = &mut self.scratch;
        s.rows.clear();
        for batch in chunk {
            self.positions
                .rows(batch.column(key).as_ref(), &mut s.rows)?;
        }
        let mut replaced = vec![key];
        if let Some(items) = &self.items {
            let item = column(ITEM_ID)?;
            replaced.push(item);
            s.items.clear();
            for batch in chunk {
                items.rows(batch.column(item).as_ref(), &mut s.items)?;
            }
            for (row, &position) in s.rows.iter_mut().zip(&s.items) {
                if position == NONE {
                    *row = NONE;
                }
            }
        }
        let others: Vec<usize> = (0..first.num_columns())
            .filter(|c| !replaced.contains(c))
            .collect();
        // Grouped by part in a stable counting sort: the log's order in each part.
        let by_part = s
            .rows
            .iter()
            .map(|&row| (row != NONE).then(|| (row / self.rows_per_part) as usize));
        grouped(by_part, self.parts, &mut s.starts, &mut s.order);
        // Every column in part order at once, each part then a slice of them.
        let mut spare = self.writer.written();
        let mut columns = Vec::with_capacity(others.len() + 2);
        for &c in &others {
            let pieces: Vec<&dyn Array> = chunk.iter().map(|b| b.column(c).as_ref()).collect();
            columns.push(gather(&pieces, &s.order, spare.pop())?);
        }
        if self.items.is_some() {
            columns.push(gather_u32(&s.items, &s.order, spare.pop()));
        }
        columns.push(gather_u32(&s.rows, &s.order, spare.pop()));
        let gathered = Gathered {
            schema: with_added(
                &Arc::new(first.schema().project(&others)?),
                self.items.is_some(),
            ),
            columns,
            starts: s.starts.clone(),
        };
        self.writer.write(gathered)
    }

    /// Ends every part's stream once the writer has written every chunk (or gives the error
    /// that stopped it); parts no row went to have no file. The cut's memory then goes back to
    /// the OS.
    pub fn finish(mut self) -> Result<(), ArrowError> {
        let written = self.writer.finish();
        drop((self.positions, self.items, self.scratch));
        release_free_memory();
        written
    }
}

/// A stable counting sort: the positions of `keys` (each below `groups`; `None` leaves a
/// position out) grouped by key into `order`, in input order within a group, and each group's
/// start into `starts` (`starts[g]..starts[g + 1]`); both vectors' memory is reused.
pub(crate) fn grouped(
    keys: impl Iterator<Item = Option<usize>> + Clone,
    groups: usize,
    starts: &mut Vec<usize>,
    order: &mut Vec<u32>,
) {
    starts.clear();
    starts.resize(groups + 1, 0);
    for g in keys.clone().flatten() {
        starts[g + 1] += 1;
    }
    for g in 1..starts.len() {
        starts[g] += starts[g - 1];
    }
    let mut next = starts.clone();
    order.clear();
    order.resize(starts[groups], 0);
    for (i, key) in keys.enumerate() {
        if let Some(g) = key {
            order[next[g]] = i as u32;
            next[g] += 1;
        }
    }
}

/// `pieces` (consecutive pieces of one column) taken at `order`: fixed-width values without
/// nulls into `buffer` (memory a push before used, when there is some), on every core; others
/// by arrow's `concat` and `take`.
fn gather(
    pieces: &[&dyn Array],
    order: &[u32],
    buffer: Option<MutableBuffer>,
) -> Result<ArrayRef, ArrowError> {
    let data: Vec<ArrayData> = pieces.iter().map(|p| p.to_data()).collect();
    let data_type = data[0].data_type().clone();
    let buffer = buffer.unwrap_or_default();
    let gathered = match data_type.primitive_width() {
        _ if data.iter().any(|d| d.nulls().is_some()) => None,
        Some(1) => Some(gather_native(&buffers::<i8>(&data), order, buffer)),
        Some(2) => Some(gather_native(&buffers::<i16>(&data), order, buffer)),
        Some(4) => Some(gather_native(&buffers::<i32>(&data), order, buffer)),
        Some(8) => Some(gather_native(&buffers::<i64>(&data), order, buffer)),
        Some(16) => Some(gather_native(&buffers::<i128>(&data), order, buffer)),
        _ => None,
    };
    match gathered {
        Some(buffer) => {
            let data = ArrayData::builder(data_type)
                .len(order.len())
                .add_buffer(buffer)
                .build()?;
            Ok(make_array(data))
        }
        None => take(
            concat(pieces)?.as_ref(),
            &UInt32Array::from(order.to_vec()),
            None,
        ),
    }
}

/// Each piece's values (its offset applied).
fn buffers<T: ArrowNativeType>(data: &[ArrayData]) -> Vec<&[T]> {
    data.iter().map(|d| d.buffer::<T>(0)).collect()
}

/// `values` taken at `order`, a `UInt32Array`, into `buffer`'s memory.
fn gather_u32(values: &[u32], order: &[u32], buffer: Option<MutableBuffer>) -> ArrayRef {
    let buffer = gather_native(&[values], order, buffer.unwrap_or_default());
    Arc::new(UInt32Array::new(
        ScalarBuffer::new(buffer, 0, order.len()),
        None,
    ))
}

/// The values of `pieces`, one sequence, at `order`. A part's positions ascend, so the piece
/// of the one before is looked up again only when a position leaves it.
fn gather_native<T: ArrowNativeType>(
    pieces: &[&[T]],
    order: &[u32],
    mut out: MutableBuffer,
) -> Buffer {
    let ends: Vec<usize> = pieces
        .iter()
        .scan(0, |end, piece| {
            *end += piece.len();
            Some(*end)
        })
        .collect();
    out.clear();
    out.resize(order.len() * std::mem::size_of::<T>(), 0);
    out.typed_data_mut::<T>()
        .par_chunks_mut(GATHER_ROWS)
        .zip(order.par_chunks(GATHER_ROWS))
        .for_each(|(out, order)| {
            if let [values] = pieces {
                // One piece: no lookups (a branch a value cost the cut ~5% more CPU).
                for (value, &i) in out.iter_mut().zip(order) {
                    *value = values[i as usize];
                }
                return;
            }
            // The piece in hand: positions `start..start + values.len()`.
            let (mut start, mut values): (usize, &[T]) = (0, &[]);
            for (value, &i) in out.iter_mut().zip(order) {
                let i = i as usize;
                if i.wrapping_sub(start) >= values.len() {
                    let piece = ends.partition_point(|&end| end <= i);
                    values = pieces[piece];
                    start = ends[piece] - values.len();
                }
                *value = values[i - start];
            }
        });
    out.into()
}

/// A gathered column's memory, to reuse, once its pieces are written and nothing else holds it.
fn reclaim(column: ArrayRef) -> Option<MutableBuffer> {
    let buffer = column.to_data().buffers().first()?.clone();
    drop(column);
    buffer.into_mutable().ok()
}

/// Hands what malloc holds free back to the OS. glibc's malloc keeps much of what a cut frees
/// (its lookups and buffers) in its arenas, unused by what follows (Polars and pyarrow allocate
/// on their own) and under its peak: at a 1M-user shard the process held 15-20 MiB less after
/// the cut (`RssAnon` 200-211 MiB instead of 214-231).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only gives free memory of malloc's arenas back to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
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
    use arrow_array::cast::AsArray;
    use arrow_array::types::UInt32Type;
    use arrow_array::{Float64Array, Int16Array, Int64Array, StringArray};
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
            cutter.push(std::slice::from_ref(&chunk)).unwrap();
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
        cutter.push(std::slice::from_ref(&chunk)).unwrap();
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
    fn a_chunk_in_several_batches_is_cut_as_one() {
        let keys = Int64Array::from(vec![30, 10, 20]);
        let items = Int64Array::from(vec![5, 2, 4]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("item_id", DataType::Int64, false),
            Field::new("rating", DataType::Float64, true),
        ]));
        let chunk = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![20, 10, 99, 30, 10, 20, 30])),
                Arc::new(Int64Array::from(vec![5, 2, 4, 4, 7, 2, 5])),
                Arc::new(Float64Array::from(vec![
                    Some(1.0),
                    None,
                    Some(3.0),
                    Some(4.0),
                    Some(5.0),
                    None,
                    Some(7.0),
                ])),
            ],
        )
        .unwrap();
        let cut = |name: &str, batches: &[RecordBatch]| {
            let dir = std::env::temp_dir().join(format!("cut-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut cutter = Cutter::new(&keys, "user_id", Some(&items), 2, &dir).unwrap();
            cutter.push(batches).unwrap();
            cutter.push(&[]).unwrap();
            cutter.finish().unwrap();
            let parts: Vec<RecordBatch> = (0..2)
                .map(|p| {
                    let batches = read(&dir, p);
                    concat_batches(&batches[0].schema(), &batches).unwrap()
                })
                .collect();
            std::fs::remove_dir_all(&dir).unwrap();
            parts
        };
        let whole = cut("whole", std::slice::from_ref(&chunk));
        let pieces = [
            chunk.slice(0, 2),
            chunk.slice(2, 0),
            chunk.slice(2, 4),
            chunk.slice(6, 1),
        ];
        assert_eq!(cut("pieces", &pieces), whole);
        // Rows 0, 1, 3, 5 and 6 (rows 2 and 4: no shard row, no item), by part in log order.
        assert_eq!(
            whole[0]
                .column_by_name(ROW)
                .unwrap()
                .as_primitive::<UInt32Type>()
                .values(),
            &[1, 0, 0]
        );
        assert_eq!(
            whole[1]
                .column_by_name(ROW)
                .unwrap()
                .as_primitive::<UInt32Type>()
                .values(),
            &[2, 2]
        );
    }

    #[test]
    fn small_pieces_of_a_part_are_written_together_in_log_order() {
        let dir = std::env::temp_dir().join(format!("cut-small-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let keys = Int64Array::from(vec![10, 20]);
        let mut cutter = Cutter::new(&keys, "user_id", None, 1, &dir).unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("item_id", DataType::Int64, false),
        ]));
        // Part 0 gets a few rows a chunk, then a piece over MIN_PIECE_ROWS; part 1 one row.
        let big = MIN_PIECE_ROWS as i64 + 1;
        let chunks = [(vec![10, 20, 10], vec![1, 2, 3]), (vec![10], vec![4])];
        let tail = (vec![10; big as usize], (5..5 + big).collect::<Vec<i64>>());
        for (users, items) in chunks.into_iter().chain([tail]) {
            let columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(users)),
                Arc::new(Int64Array::from(items)),
            ];
            let chunk = RecordBatch::try_new(schema.clone(), columns).unwrap();
            cutter.push(std::slice::from_ref(&chunk)).unwrap();
        }
        cutter.finish().unwrap();
        let first = read(&dir, 0);
        assert_eq!(first.len(), 1, "one batch");
        let items = column::<Int64Array>(&first, "item_id")[0].values().to_vec();
        assert_eq!(items, (1..5 + big).filter(|&i| i != 2).collect::<Vec<_>>());
        let second = read(&dir, 1);
        assert_eq!(
            column::<Int64Array>(&second, "item_id")[0]
                .values()
                .to_vec(),
            vec![2]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_writers_error_comes_from_the_next_push_or_finish() {
        let dir = std::env::temp_dir().join(format!("cut-gone-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let keys = Int64Array::from(vec![10, 20]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("item_id", DataType::Int64, false),
        ]));
        // A piece large enough to be written at once.
        let chunk = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![10; MIN_PIECE_ROWS])),
                Arc::new(Int64Array::from(vec![1; MIN_PIECE_ROWS])),
            ],
        )
        .unwrap();
        let gone = |error: ArrowError| error.to_string().contains("No such file");
        // The parts' folder is removed: the writer cannot create a part.
        let mut cutter = Cutter::new(&keys, "user_id", None, 1, &dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        cutter.push(std::slice::from_ref(&chunk)).unwrap(); // handed over; written meanwhile
        assert!(gone(cutter.push(std::slice::from_ref(&chunk)).unwrap_err()));
        assert!(cutter.push(std::slice::from_ref(&chunk)).is_err());
        let mut cutter = Cutter::new(&keys, "user_id", None, 1, &dir).unwrap();
        cutter.push(std::slice::from_ref(&chunk)).unwrap();
        assert!(gone(cutter.finish().unwrap_err()));
    }

    #[test]
    fn gathering_reuses_memory_and_equals_take() {
        let order = [3u32, 0, 3, 1];
        let indices = UInt32Array::from(order.to_vec());
        let sliced = Int64Array::from(vec![9, 1, 2, 3, 4]).slice(1, 4);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(sliced),
            Arc::new(Float64Array::from(vec![0.5, 1.5, 2.5, 3.5])),
            Arc::new(Int16Array::from(vec![-1, 2, -3, 4])),
            Arc::new(Int64Array::from(vec![Some(1), None, Some(3), None])),
            Arc::new(StringArray::from(vec!["a", "bb", "", "d"])),
        ];
        // A buffer a longer column left: its memory is reused, its contents never read.
        let mut spare = gather(&[columns[0].as_ref()], &[0; 64], None)
            .ok()
            .and_then(reclaim);
        assert!(spare.is_some());
        for column in &columns {
            let want = take(column.as_ref(), &indices, None).unwrap();
            // Whole, and in pieces (a chunk of several record batches).
            let (head, tail) = (column.slice(0, 1), column.slice(1, 3));
            for pieces in [vec![column.as_ref()], vec![head.as_ref(), tail.as_ref()]] {
                let got = gather(&pieces, &order, spare.take()).unwrap();
                assert_eq!(got.to_data(), want.to_data(), "{}", column.data_type());
                spare = reclaim(got);
            }
        }
        let rows = gather_u32(&[7, 8, 9, 10], &order, spare);
        assert_eq!(rows.as_primitive::<UInt32Type>().values(), &[10, 7, 10, 8]);
    }
}
