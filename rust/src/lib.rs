//! Python bindings of `itdr_batch._core`. Only binding code lives here: the algorithms are in
//! PyO3-free modules so that `cargo test` runs them without Python.

mod cut;
mod ids;
mod part_order;
mod positions;
mod prompts;
mod render;
mod rng;
mod sampling;

use std::sync::Arc;

use arrow_array::builder::UInt32Builder;
use arrow_array::types::UInt8Type;
use arrow_array::{
    Array, ArrayRef, DictionaryArray, Float64Array, LargeStringArray, ListArray, RecordBatch,
    StringArray, UInt32Array, UInt8Array,
};
use arrow_buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_arrow::error::PyArrowResult;
use pyo3_arrow::export::{Arro3ChunkedArray, Arro3Table};
use pyo3_arrow::input::AnyArray;
use pyo3_arrow::{PyChunkedArray, PyTable};
use std::path::PathBuf;

use crate::prompts::{Chunk, Job, Sampling, SlotColumns, Source};
use crate::render::{Field as EntryField, ListFormat, Part, Piece, Template};
use crate::sampling::Sampler;

/// Stable 64-bit hash of each id (int64 or string): XXH3-64, seed 0, over the id's bytes.
#[pyfunction]
fn stable_hash(py: Python<'_>, ids: AnyArray) -> PyArrowResult<Arro3ChunkedArray> {
    let (chunks, _field) = ids.into_chunked_array()?.into_inner();
    let hashed = py.detach(|| {
        chunks
            .iter()
            .map(|chunk| ids::hash_ids(chunk.as_ref()).map(|h| Arc::new(h) as ArrayRef))
            .collect::<Result<Vec<_>, _>>()
    });
    let hashed = hashed.map_err(|e| PyValueError::new_err(e.to_string()))?;
    let field = Arc::new(Field::new("hash", DataType::UInt64, false));
    Ok(PyChunkedArray::try_new(hashed, field)?.into())
}

/// A part's rows in `(row, time)` order, ties as given: a table of `order` (the permutation)
/// and `__row` (the rows in it).
#[pyfunction]
fn row_time_order(py: Python<'_>, rows: AnyArray, times: AnyArray) -> PyArrowResult<Arro3Table> {
    let rows = downcast::<UInt32Array>(cast(rows, &DataType::UInt32)?);
    let times = downcast::<arrow_array::Int64Array>(cast(times, &DataType::Int64)?);
    if rows.null_count() + times.null_count() > 0 || rows.len() != times.len() {
        return Err(PyValueError::new_err("rows and times: one non-null time per row").into());
    }
    let ordered = py.detach(|| part_order::row_time_order(rows.values(), times.values()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("order", DataType::UInt32, false),
        Field::new(cut::ROW, DataType::UInt32, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(ordered.order)),
        Arc::new(UInt32Array::from(ordered.rows)),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(PyTable::try_new(vec![batch], schema)?.into())
}

/// A template part: literal text, or the number of a list slot.
#[derive(FromPyObject)]
enum PartArg {
    Text(String),
    Slot(usize),
}

/// An entry-format piece: literal text, or a field (`{"field": ...}`).
#[derive(FromPyObject)]
enum PieceArg {
    Text(String),
    Field(FieldArg),
}

/// `{"field": k}`: the k-th item field; `{"field": "index" | "rating" | "text"}`.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct FieldArg {
    field: NameOrNumber,
}

#[derive(FromPyObject)]
enum NameOrNumber {
    Number(usize),
    Name(String),
}

/// One list slot of the template: how its entries are written and where they come from.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct ListArg {
    entry: Vec<PieceArg>,
    separator: Option<String>,
    /// A data slot's number, `"candidates"` or `"held_out"`.
    source: NameOrNumber,
}

/// One data slot's columns: items, ratings, texts (lists per row) and how many entries to keep.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct SlotArg {
    items: Option<AnyArray>,
    ratings: Option<AnyArray>,
    texts: Option<AnyArray>,
    max_entries: Option<usize>,
}

/// Candidate sampling: the pool of dense item indices, optional weights (popularity), how many,
/// and optional provided candidates per row.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct SamplingArg {
    pool: AnyArray,
    weights: Option<AnyArray>,
    count: usize,
    provided: Option<AnyArray>,
    order: usize,
    orders: usize,
}

/// Everything `build_prompts` takes: `PromptJob` in `itdr_batch/_core.pyi`.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct PromptJobArg {
    row_ids: AnyArray,
    seed: u64,
    parts: Vec<PartArg>,
    lists: Vec<ListArg>,
    slots: Vec<SlotArg>,
    item_ids: AnyArray,
    item_titles: Option<AnyArray>,
    item_fields: Vec<AnyArray>,
    history: usize,
    also_seen: Vec<usize>,
    hold_out_last: bool,
    sampling: Option<SamplingArg>,
}

/// Samples candidates and renders one prompt per row; see `itdr_batch/prompts/build.py`.
#[pyfunction]
fn build_prompts(py: Python<'_>, job: PromptJobArg) -> PyArrowResult<Arro3Table> {
    let mut sources = Vec::with_capacity(job.lists.len());
    let mut lists = Vec::with_capacity(job.lists.len());
    for list in job.lists {
        sources.push(list.source);
        let entry = list.entry.into_iter().map(piece).collect::<PyResult<_>>()?;
        lists.push(ListFormat::new(entry, list.separator));
    }
    let template = Template {
        parts: job
            .parts
            .into_iter()
            .map(|p| match p {
                PartArg::Text(text) => Part::Literal(text),
                PartArg::Slot(k) => Part::Slot(k),
            })
            .collect(),
        lists,
    };
    let item_fields: Vec<StringArray> = job
        .item_fields
        .into_iter()
        .map(|a| Ok(downcast::<StringArray>(cast(a, &DataType::Utf8)?)))
        .collect::<PyResult<_>>()?;
    let item_ids = single(job.item_ids)?;
    let n_items = item_ids.len();
    if let Some(field) = item_fields.iter().find(|f| f.len() != n_items) {
        let message = format!(
            "an item field has {} values for {n_items} items",
            field.len()
        );
        return Err(PyValueError::new_err(message).into());
    }
    let item_titles = job
        .item_titles
        .map(|a| Ok::<_, PyErr>(downcast::<StringArray>(cast(a, &DataType::Utf8)?)))
        .transpose()?;
    if item_titles.as_ref().is_some_and(|t| t.len() != n_items) {
        return Err(PyValueError::new_err("item_titles must have one title per item").into());
    }
    let slots = job
        .slots
        .into_iter()
        .map(|slot| {
            Ok(SlotColumns {
                items: slot
                    .items
                    .map(|a| list_of(a, DataType::UInt32))
                    .transpose()?,
                ratings: slot
                    .ratings
                    .map(|a| list_of(a, DataType::Float64))
                    .transpose()?,
                texts: slot.texts.map(|a| list_of(a, DataType::Utf8)).transpose()?,
                max_entries: slot.max_entries,
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let sources = sources
        .into_iter()
        .map(|source| match source {
            NameOrNumber::Name(name) if name == "candidates" => Ok(Source::Candidates),
            NameOrNumber::Name(name) if name == "held_out" => Ok(Source::HeldOut),
            NameOrNumber::Number(k) if k < slots.len() => Ok(Source::Data(k)),
            NameOrNumber::Number(k) => Err(PyValueError::new_err(format!(
                "list source {k}: there are {} data slots",
                slots.len()
            ))),
            NameOrNumber::Name(name) => Err(PyValueError::new_err(format!(
                "unknown list source {name:?}: a slot number, \"candidates\" or \"held_out\""
            ))),
        })
        .collect::<PyResult<Vec<_>>>()?;
    let sampling = job
        .sampling
        .map(|sampling| {
            let pool = downcast::<UInt32Array>(cast(sampling.pool, &DataType::UInt32)?);
            let weights = sampling
                .weights
                .map(|w| Ok::<_, PyErr>(downcast::<Float64Array>(cast(w, &DataType::Float64)?)))
                .transpose()?;
            check_items(pool.values(), n_items, "pool")?;
            if sampling.order >= sampling.orders {
                return Err(PyValueError::new_err(format!(
                    "sampling: order {} is not one of {} orders",
                    sampling.order, sampling.orders
                )));
            }
            let sampler = Sampler::new(
                pool.values().to_vec(),
                weights.map(|w| w.values().to_vec()),
                n_items,
            );
            let provided = sampling
                .provided
                .map(|p| list_of(p, DataType::UInt32))
                .transpose()?;
            Ok::<_, PyErr>(Sampling {
                sampler,
                count: sampling.count,
                provided,
                order: sampling.order,
                orders: sampling.orders,
            })
        })
        .transpose()?;
    let row_ids = single(job.row_ids)?;
    let rows = row_ids.len();
    prompts::check_columns(&slots, rows).map_err(PyValueError::new_err)?;
    for slot in &slots {
        if let Some(items) = &slot.items {
            check_items(
                downcast_ref::<UInt32Array>(items.values()).values(),
                n_items,
                "history",
            )?;
        }
    }
    if job.history >= slots.len() || job.also_seen.iter().any(|&k| k >= slots.len()) {
        return Err(PyValueError::new_err("history and also_seen must name data slots").into());
    }
    let prompt_job = Job {
        template,
        sources,
        history: job.history,
        also_seen: job.also_seen,
        hold_out_last: job.hold_out_last,
        sampling,
        n_items,
    };
    let chunks = py.detach(|| {
        let seeds = ids::hash_ids_with_seed(row_ids.as_ref(), job.seed);
        seeds.map(|seeds| prompts::build(&prompt_job, &slots, &item_fields, &seeds))
    });
    let chunks = chunks.map_err(|e| PyValueError::new_err(e.to_string()))?;
    let id_type = item_ids.data_type().clone();
    let list_of_field =
        |dtype: DataType| DataType::List(Arc::new(Field::new_list_field(dtype, false)));
    let mut fields = vec![
        Field::new("prompt", DataType::LargeUtf8, true),
        Field::new("candidates", list_of_field(id_type.clone()), false),
        Field::new("held_out_item", id_type, true),
        Field::new("held_out_position", DataType::UInt32, true),
        Field::new("status", status_type(), false),
    ];
    if item_titles.is_some() {
        fields.push(Field::new(
            "candidate_titles",
            list_of_field(DataType::Utf8),
            false,
        ));
    }
    let schema = Arc::new(Schema::new(fields));
    let batches = chunks
        .into_iter()
        .map(|chunk| batch(chunk, &item_ids, item_titles.as_ref(), schema.clone()))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(PyTable::try_new(batches, schema)?.into())
}

fn piece(arg: PieceArg) -> PyResult<Piece> {
    Ok(match arg {
        PieceArg::Text(text) => Piece::Literal(text),
        PieceArg::Field(FieldArg { field }) => Piece::Field(match field {
            NameOrNumber::Number(k) => EntryField::Item(k),
            NameOrNumber::Name(name) => match name.as_str() {
                "index" => EntryField::Index,
                "rating" => EntryField::Rating,
                "text" => EntryField::Text,
                _ => {
                    return Err(PyValueError::new_err(format!(
                        "unknown entry field {name:?}: an item field number, \"index\", \
                         \"rating\" or \"text\""
                    )))
                }
            },
        }),
    })
}

/// Statuses are written by name (a dictionary of `Status::NAMES`), so Python never maps codes.
fn status_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::UInt8), Box::new(DataType::Utf8))
}

/// One output batch; candidates and held-out items go back to their item ids (and titles).
fn batch(
    chunk: Chunk,
    item_ids: &ArrayRef,
    item_titles: Option<&StringArray>,
    schema: Arc<Schema>,
) -> PyResult<RecordBatch> {
    let take = |values: &dyn Array, indices: &UInt32Array| {
        arrow_select::take::take(values, indices, None)
            .map_err(|e| PyValueError::new_err(e.to_string()))
    };
    let rows = chunk.status.len();
    let has_prompt: Vec<bool> = chunk
        .status
        .iter()
        .map(|s| *s != prompts::Status::EmptyHistory)
        .collect();
    // SAFETY: `render` writes only whole `&str` values and ASCII digits, so the bytes are UTF-8,
    // and the offsets are the increasing buffer lengths recorded after each row.
    let prompt = unsafe {
        LargeStringArray::new_unchecked(
            OffsetBuffer::new_unchecked(ScalarBuffer::from(chunk.offsets)),
            Buffer::from_vec(chunk.bytes),
            Some(NullBuffer::from(has_prompt)),
        )
    };
    let offsets = OffsetBuffer::new(ScalarBuffer::from(chunk.candidate_offsets));
    let candidate_indices = UInt32Array::from(chunk.candidates);
    let list = |values: ArrayRef| {
        ListArray::try_new(
            Arc::new(Field::new_list_field(values.data_type().clone(), false)),
            offsets.clone(),
            values,
            None,
        )
        .map_err(|e| PyValueError::new_err(e.to_string()))
    };
    let candidates = list(take(item_ids.as_ref(), &candidate_indices)?)?;
    let held_item = take(item_ids.as_ref(), &UInt32Array::from(chunk.held_out_item))?;
    let mut held_position = UInt32Builder::with_capacity(rows);
    held_position.extend(chunk.held_out_position);
    let keys = UInt8Array::from_iter_values(chunk.status.into_iter().map(|s| s as u8));
    let names = StringArray::from(prompts::Status::NAMES.to_vec());
    let status = DictionaryArray::<UInt8Type>::try_new(keys, Arc::new(names))
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(prompt),
        Arc::new(candidates),
        held_item,
        Arc::new(held_position.finish()),
        Arc::new(status),
    ];
    if let Some(titles) = item_titles {
        columns.push(Arc::new(list(take(titles, &candidate_indices)?)?));
    }
    RecordBatch::try_new(schema, columns).map_err(|e| PyValueError::new_err(e.to_string()))
}

fn check_items(items: &[u32], n_items: usize, what: &str) -> PyResult<()> {
    match items.iter().find(|&&i| i as usize >= n_items) {
        Some(i) => Err(PyValueError::new_err(format!(
            "{what}: item index {i} out of range (items: {n_items})"
        ))),
        None => Ok(()),
    }
}

/// One contiguous array (chunks are concatenated when there are several).
fn single(array: AnyArray) -> PyResult<ArrayRef> {
    let (chunks, field) = array.into_chunked_array()?.into_inner();
    match chunks.len() {
        1 => Ok(chunks[0].clone()),
        0 => Ok(arrow_array::new_empty_array(field.data_type())),
        _ => {
            let refs: Vec<&dyn Array> = chunks.iter().map(|c| c.as_ref()).collect();
            arrow_select::concat::concat(&refs).map_err(|e| PyValueError::new_err(e.to_string()))
        }
    }
}

fn cast(array: AnyArray, to: &DataType) -> PyResult<ArrayRef> {
    let array = single(array)?;
    if array.data_type() == to {
        return Ok(array);
    }
    arrow_cast::cast(&array, to).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// A list array (any list flavour in, `List<value>` out).
fn list_of(array: AnyArray, value: DataType) -> PyResult<ListArray> {
    let to = DataType::List(Arc::new(Field::new_list_field(value, true)));
    Ok(downcast::<ListArray>(cast(array, &to)?))
}

fn downcast<T: Array + Clone + 'static>(array: ArrayRef) -> T {
    downcast_ref::<T>(&array).clone()
}

fn downcast_ref<T: 'static>(array: &ArrayRef) -> &T {
    array
        .as_any()
        .downcast_ref::<T>()
        .expect("cast to this type just before")
}

/// Cuts an interactions log into a shard's parts; see `itdr_batch/run/extract.py`.
#[pyclass(module = "itdr_batch._core")]
struct Cutter {
    inner: Option<cut::Cutter>,
}

#[pymethods]
impl Cutter {
    #[new]
    #[pyo3(signature = (keys, key, items, rows_per_part, dir))]
    fn new(
        keys: AnyArray,
        key: String,
        items: Option<AnyArray>,
        rows_per_part: u32,
        dir: PathBuf,
    ) -> PyResult<Self> {
        let keys = single(keys)?;
        let items = items.map(single).transpose()?;
        let inner = cut::Cutter::new(keys.as_ref(), &key, items.as_deref(), rows_per_part, &dir)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(Cutter { inner: Some(inner) })
    }

    /// Appends a chunk of the log (any Arrow table; its record batches cut together, as they
    /// lie) to its parts.
    fn push(&mut self, py: Python<'_>, chunk: PyTable) -> PyResult<()> {
        let cutter = self.inner.as_mut().ok_or_else(finished)?;
        let (batches, _schema) = chunk.into_inner();
        py.detach(|| cutter.push(&batches))
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// Ends the parts' files; the cutter takes no more chunks.
    fn finish(&mut self, py: Python<'_>) -> PyResult<()> {
        let cutter = self.inner.take().ok_or_else(finished)?;
        py.detach(|| cutter.finish())
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }
}

fn finished() -> PyErr {
    PyValueError::new_err("the cutter is finished")
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(stable_hash, m)?)?;
    m.add_function(wrap_pyfunction!(build_prompts, m)?)?;
    m.add_function(wrap_pyfunction!(row_time_order, m)?)?;
    m.add_class::<Cutter>()?;
    Ok(())
}
