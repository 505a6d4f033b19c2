//! Python bindings of `itdr_batch._core`. Only binding code lives here: the algorithms are in
//! PyO3-free modules so that `cargo test` runs them without Python.

mod ids;

use std::sync::Arc;

use arrow_array::ArrayRef;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_arrow::error::PyArrowResult;
use pyo3_arrow::export::Arro3ChunkedArray;
use pyo3_arrow::input::AnyArray;
use pyo3_arrow::PyChunkedArray;

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
    let field = Arc::new(arrow_schema::Field::new(
        "hash",
        arrow_schema::DataType::UInt64,
        false,
    ));
    Ok(PyChunkedArray::try_new(hashed, field)?.into())
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(stable_hash, m)?)?;
    Ok(())
}
