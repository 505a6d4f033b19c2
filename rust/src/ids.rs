//! Stable hashing of user and item ids.
//!
//! A user's candidates and its shard depend only on this hash, so it must never drift:
//! the hash of an id is XXH3-64 with seed 0 over the id's bytes — an int64 id as its
//! 8 little-endian bytes, a string id as its UTF-8 bytes. XXH3's output is frozen by its
//! specification; the golden tests below guard against an accidental change here.

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, UInt64Array};
use arrow_schema::DataType;
use xxhash_rust::xxh3::xxh3_64;

/// Why an Arrow array cannot be hashed as ids.
#[derive(Debug, PartialEq, Eq)]
pub enum IdError {
    /// Ids are int64 or strings; anything else is a schema error upstream.
    UnsupportedType(DataType),
    /// Ids are never null; the index is the first null's position.
    Null { index: usize },
}

impl std::fmt::Display for IdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdError::UnsupportedType(dt) => {
                write!(f, "ids must be int64 or string, got {dt}")
            }
            IdError::Null { index } => write!(f, "null id at position {index}"),
        }
    }
}

impl std::error::Error for IdError {}

/// Hash of an int64 id.
pub fn hash_i64(id: i64) -> u64 {
    xxh3_64(&id.to_le_bytes())
}

/// Hash of a string id.
pub fn hash_str(id: &str) -> u64 {
    xxh3_64(id.as_bytes())
}

/// Hashes every id of an int64 or string (Utf8, LargeUtf8, Utf8View) array.
pub fn hash_ids(ids: &dyn Array) -> Result<UInt64Array, IdError> {
    if let Some(index) = first_null(ids) {
        return Err(IdError::Null { index });
    }
    let hashes: Vec<u64> = match ids.data_type() {
        DataType::Int64 => ids
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .map(|&id| hash_i64(id))
            .collect(),
        DataType::Utf8 => ids.as_string::<i32>().iter().map(hash_opt_str).collect(),
        DataType::LargeUtf8 => ids.as_string::<i64>().iter().map(hash_opt_str).collect(),
        DataType::Utf8View => ids.as_string_view().iter().map(hash_opt_str).collect(),
        other => return Err(IdError::UnsupportedType(other.clone())),
    };
    Ok(UInt64Array::from(hashes))
}

fn first_null(ids: &dyn Array) -> Option<usize> {
    if ids.null_count() == 0 {
        return None;
    }
    (0..ids.len()).find(|&i| ids.is_null(i))
}

fn hash_opt_str(id: Option<&str>) -> u64 {
    // Nulls were rejected before hashing.
    hash_str(id.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int32Array, Int64Array, LargeStringArray, StringArray, StringViewArray};

    // Golden values: XXH3-64, seed 0. The empty input's hash is the one published with the
    // xxHash specification; the others agree with the independent C implementation (PyPI
    // `xxhash`) and must never change.
    #[test]
    fn golden_hashes() {
        assert_eq!(hash_str(""), 0x2D06_8005_38D3_94C2);
        assert_eq!(hash_i64(0), xxh3_64(&[0u8; 8]));
        assert_eq!(hash_i64(1), GOLDEN_I64_1);
        assert_eq!(hash_str("A1B2C3"), GOLDEN_STR_A1B2C3);
    }

    const GOLDEN_I64_1: u64 = 0x2FBC_5935_64DB_792E;
    const GOLDEN_STR_A1B2C3: u64 = 0x88AC_49E9_D74D_37E4;

    #[test]
    fn all_string_layouts_hash_alike() {
        let ids = ["u1", "", "ユーザー", "🙂"];
        let expected: Vec<u64> = ids.iter().map(|s| hash_str(s)).collect();
        let utf8 = StringArray::from(ids.to_vec());
        let large = LargeStringArray::from(ids.to_vec());
        let view = StringViewArray::from(ids.to_vec());
        for array in [&utf8 as &dyn Array, &large, &view] {
            assert_eq!(hash_ids(array).unwrap().values().to_vec(), expected);
        }
    }

    #[test]
    fn int_ids_hash_by_value() {
        let ids = Int64Array::from(vec![7, -1, i64::MAX]);
        let hashes = hash_ids(&ids).unwrap();
        assert_eq!(
            hashes.values().to_vec(),
            vec![hash_i64(7), hash_i64(-1), hash_i64(i64::MAX)]
        );
    }

    #[test]
    fn int_and_string_ids_differ() {
        assert_ne!(hash_i64(1), hash_str("1"));
    }

    #[test]
    fn null_id_is_an_error_with_its_position() {
        let ids = StringArray::from(vec![Some("a"), Some("b"), None]);
        assert_eq!(hash_ids(&ids), Err(IdError::Null { index: 2 }));
    }

    #[test]
    fn other_types_are_rejected() {
        let ids = Int32Array::from(vec![1, 2]);
        assert_eq!(
            hash_ids(&ids),
            Err(IdError::UnsupportedType(DataType::Int32))
        );
    }
}
