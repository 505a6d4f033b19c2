//! Stable hashing of user and item ids.
//!
//! A user's candidates and its shard depend only on this hash, so it must never drift:
//! the hash of an id is XXH3-64 over the id's bytes — an int64 id as its 8 little-endian bytes,
//! a string id as its UTF-8 bytes — with seed 0 for the stable hash (shards) and the run seed for
//! a user's random stream (`rng`). XXH3's output is frozen by its specification; the golden tests
//! below guard against an accidental change here.

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, UInt64Array};
use arrow_schema::DataType;
use xxhash_rust::xxh3::xxh3_64_with_seed;

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

/// Stable hash (seed 0) of every id of an int64 or string (Utf8, LargeUtf8, Utf8View) array.
pub fn hash_ids(ids: &dyn Array) -> Result<UInt64Array, IdError> {
    hash_ids_with_seed(ids, 0).map(UInt64Array::from)
}

/// XXH3-64 of every id's bytes with `seed` as XXH3's seed (seed 0 is the stable hash).
pub fn hash_ids_with_seed(ids: &dyn Array, seed: u64) -> Result<Vec<u64>, IdError> {
    if let Some(index) = first_null(ids) {
        return Err(IdError::Null { index });
    }
    let hashes: Vec<u64> = match ids.data_type() {
        DataType::Int64 => ids
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .map(|&id| xxh3_64_with_seed(&id.to_le_bytes(), seed))
            .collect(),
        DataType::Utf8 => strings(ids.as_string::<i32>().iter(), seed),
        DataType::LargeUtf8 => strings(ids.as_string::<i64>().iter(), seed),
        DataType::Utf8View => strings(ids.as_string_view().iter(), seed),
        other => return Err(IdError::UnsupportedType(other.clone())),
    };
    Ok(hashes)
}

fn strings<'a>(ids: impl Iterator<Item = Option<&'a str>>, seed: u64) -> Vec<u64> {
    // Nulls were rejected before hashing.
    ids.map(|id| xxh3_64_with_seed(id.unwrap_or_default().as_bytes(), seed))
        .collect()
}

fn first_null(ids: &dyn Array) -> Option<usize> {
    if ids.null_count() == 0 {
        return None;
    }
    (0..ids.len()).find(|&i| ids.is_null(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int32Array, Int64Array, LargeStringArray, StringArray, StringViewArray};
    use xxhash_rust::xxh3::xxh3_64;

    fn hash_i64(id: i64) -> u64 {
        hash_ids(&Int64Array::from(vec![id])).unwrap().value(0)
    }

    fn hash_str(id: &str) -> u64 {
        hash_ids(&StringArray::from(vec![id])).unwrap().value(0)
    }

    // Golden values: XXH3-64, seed 0. The empty input's hash is the one published with the
    // xxHash specification; the others agree with the independent C implementation (PyPI
    // `xxhash`) and must never change.
    #[test]
    fn golden_hashes() {
        assert_eq!(hash_str(""), 0x2D06_8005_38D3_94C2);
        assert_eq!(hash_i64(0), xxh3_64(&[0u8; 8]));
        assert_eq!(hash_str("abc"), xxh3_64(b"abc"));
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
            [7i64, -1, i64::MAX]
                .map(|id| xxh3_64(&id.to_le_bytes()))
                .to_vec()
        );
    }

    #[test]
    fn seed_zero_is_the_stable_hash_and_seeds_differ() {
        let ids = StringArray::from(vec!["u1", "u2"]);
        let stable = hash_ids(&ids).unwrap().values().to_vec();
        assert_eq!(hash_ids_with_seed(&ids, 0).unwrap(), stable);
        assert_ne!(hash_ids_with_seed(&ids, 1).unwrap(), stable);
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
