//! Python bindings of `itdr_batch._core`. Only binding code lives here: the algorithms are in
//! PyO3-free modules so that `cargo test` runs them without Python.

mod ids;
mod prompts;
mod render;
mod rng;
mod sampling;

use std::sync::Arc;

use arrow_array::builder::{UInt32Builder, UInt8Builder};
use arrow_array::{
    Array, ArrayRef, Float64Array, LargeStringArray, ListArray, RecordBatch, StringArray,
    UInt32Array,
};
use arrow_buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_arrow::error::PyArrowResult;
use pyo3_arrow::export::{Arro3ChunkedArray, Arro3Table};
use pyo3_arrow::input::AnyArray;
use pyo3_arrow::{PyChunkedArray, PyTable};

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

/// A literal piece of text or a slot / field number.
#[derive(FromPyObject)]
enum TextOrCode {
    Text(String),
    Code(i64),
}

/// One data slot's columns: items, ratings, texts (lists per row) and how many entries to keep.
type ColumnsArg = (
    Option<AnyArray>,
    Option<AnyArray>,
    Option<AnyArray>,
    Option<usize>,
);

/// Candidate sampling: pool of dense item indices, optional weights (popularity), count,
/// optional provided candidates per row.
type SamplingArg = (AnyArray, Option<AnyArray>, usize, Option<AnyArray>);

const FIELD_INDEX: i64 = -1;
const FIELD_RATING: i64 = -2;
const FIELD_TEXT: i64 = -3;
const SOURCE_CANDIDATES: i64 = -1;
const SOURCE_HELD_OUT: i64 = -2;

/// Samples candidates and renders one prompt per row; see `itdr_batch/prompts.py`.
#[pyfunction]
#[pyo3(signature = (
    user_ids, seed, parts, lists, sources, columns, item_ids, item_fields, history, also_seen,
    hold_out_last, sampling
))]
#[allow(clippy::too_many_arguments)]
fn build_prompts(
    py: Python<'_>,
    user_ids: AnyArray,
    seed: u64,
    parts: Vec<TextOrCode>,
    lists: Vec<(Vec<TextOrCode>, Option<String>)>,
    sources: Vec<i64>,
    columns: Vec<ColumnsArg>,
    item_ids: AnyArray,
    item_fields: Vec<AnyArray>,
    history: usize,
    also_seen: Vec<usize>,
    hold_out_last: bool,
    sampling: Option<SamplingArg>,
) -> PyArrowResult<Arro3Table> {
    let template = Template {
        parts: parts.into_iter().map(part).collect::<PyResult<_>>()?,
        lists: lists
            .into_iter()
            .map(|(entry, separator)| {
                let entry = entry.into_iter().map(piece).collect::<PyResult<_>>()?;
                Ok(ListFormat::new(entry, separator))
            })
            .collect::<PyResult<_>>()?,
    };
    let item_fields: Vec<StringArray> = item_fields
        .into_iter()
        .map(|a| Ok(downcast::<StringArray>(cast(a, &DataType::Utf8)?)))
        .collect::<PyResult<_>>()?;
    let item_ids = single(item_ids)?;
    let n_items = item_ids.len();
    if let Some(field) = item_fields.iter().find(|f| f.len() != n_items) {
        let message = format!(
            "an item field has {} values for {n_items} items",
            field.len()
        );
        return Err(PyValueError::new_err(message).into());
    }
    let slots = columns
        .into_iter()
        .map(|(items, ratings, texts, max_entries)| {
            Ok(SlotColumns {
                items: items.map(|a| list_of(a, DataType::UInt32)).transpose()?,
                ratings: ratings.map(|a| list_of(a, DataType::Float64)).transpose()?,
                texts: texts.map(|a| list_of(a, DataType::Utf8)).transpose()?,
                max_entries,
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let sources = sources
        .into_iter()
        .map(|code| match code {
            SOURCE_CANDIDATES => Ok(Source::Candidates),
            SOURCE_HELD_OUT => Ok(Source::HeldOut),
            k if k >= 0 && (k as usize) < slots.len() => Ok(Source::Data(k as usize)),
            k => Err(PyValueError::new_err(format!("unknown slot source {k}"))),
        })
        .collect::<PyResult<Vec<_>>>()?;
    if sources.len() != template.lists.len() {
        return Err(PyValueError::new_err("one source is needed per template list").into());
    }
    let sampling = sampling
        .map(|(pool, weights, count, provided)| {
            let pool = downcast::<UInt32Array>(cast(pool, &DataType::UInt32)?);
            let weights = weights
                .map(|w| Ok::<_, PyErr>(downcast::<Float64Array>(cast(w, &DataType::Float64)?)))
                .transpose()?;
            check_items(pool.values(), n_items, "pool")?;
            let sampler = Sampler::new(
                pool.values().to_vec(),
                weights.map(|w| w.values().to_vec()),
                n_items,
            );
            let provided = provided.map(|p| list_of(p, DataType::UInt32)).transpose()?;
            Ok::<_, PyErr>(Sampling {
                sampler,
                count,
                provided,
            })
        })
        .transpose()?;
    let user_ids = single(user_ids)?;
    let rows = user_ids.len();
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
    if history >= slots.len() || also_seen.iter().any(|&k| k >= slots.len()) {
        return Err(PyValueError::new_err("history and also_seen must name data slots").into());
    }
    let job = Job {
        template,
        sources,
        history,
        also_seen,
        hold_out_last,
        sampling,
        n_items,
    };
    let chunks = py.detach(|| {
        let seeds = ids::hash_ids_with_seed(user_ids.as_ref(), seed);
        seeds.map(|seeds| prompts::build(&job, &slots, &item_fields, &seeds))
    });
    let chunks = chunks.map_err(|e| PyValueError::new_err(e.to_string()))?;
    let id_type = item_ids.data_type().clone();
    let schema = Arc::new(Schema::new(vec![
        Field::new("prompt", DataType::LargeUtf8, true),
        Field::new(
            "candidates",
            DataType::List(Arc::new(Field::new_list_field(id_type.clone(), false))),
            false,
        ),
        Field::new("held_out_item", id_type, true),
        Field::new("held_out_position", DataType::UInt32, true),
        Field::new("status", DataType::UInt8, false),
    ]));
    let batches = chunks
        .into_iter()
        .map(|chunk| batch(chunk, &item_ids, schema.clone()))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(PyTable::try_new(batches, schema)?.into())
}

fn part(arg: TextOrCode) -> PyResult<Part> {
    Ok(match arg {
        TextOrCode::Text(text) => Part::Literal(text),
        TextOrCode::Code(k) if k >= 0 => Part::Slot(k as usize),
        TextOrCode::Code(k) => return Err(PyValueError::new_err(format!("bad slot {k}"))),
    })
}

fn piece(arg: TextOrCode) -> PyResult<Piece> {
    Ok(match arg {
        TextOrCode::Text(text) => Piece::Literal(text),
        TextOrCode::Code(FIELD_INDEX) => Piece::Field(EntryField::Index),
        TextOrCode::Code(FIELD_RATING) => Piece::Field(EntryField::Rating),
        TextOrCode::Code(FIELD_TEXT) => Piece::Field(EntryField::Text),
        TextOrCode::Code(k) if k >= 0 => Piece::Field(EntryField::Item(k as usize)),
        TextOrCode::Code(k) => return Err(PyValueError::new_err(format!("bad field {k}"))),
    })
}

/// One output batch; candidates and held-out items go back to their item ids.
fn batch(chunk: Chunk, item_ids: &ArrayRef, schema: Arc<Schema>) -> PyResult<RecordBatch> {
    let ids = |indices: &UInt32Array| {
        arrow_select::take::take(item_ids, indices, None)
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
    let candidates = ListArray::try_new(
        Arc::new(Field::new_list_field(item_ids.data_type().clone(), false)),
        OffsetBuffer::new(ScalarBuffer::from(chunk.candidate_offsets)),
        ids(&UInt32Array::from(chunk.candidates))?,
        None,
    )
    .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let held_item = ids(&UInt32Array::from(chunk.held_out_item))?;
    let mut held_position = UInt32Builder::with_capacity(rows);
    held_position.extend(chunk.held_out_position);
    let mut status = UInt8Builder::with_capacity(rows);
    status.extend(chunk.status.into_iter().map(|s| Some(s as u8)));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(prompt),
        Arc::new(candidates),
        held_item,
        Arc::new(held_position.finish()),
        Arc::new(status.finish()),
    ];
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

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(stable_hash, m)?)?;
    m.add_function(wrap_pyfunction!(build_prompts, m)?)?;
    Ok(())
}
