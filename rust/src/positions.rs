//! Ids to their positions: a shard's keys and the items, looked up for each row of a log as it
//! is cut (`cut.rs`).
//!
//! Integer ids go in `IdTable`, an open-addressing table looked up a run of ids at a time, each
//! id's slot prefetched a few lookups ahead: a log not grouped by key looks up a different key
//! nearly every row, and a million keys' table (32 MB) is far bigger than the cache, so each
//! lookup waited for memory in turn. Prefetching overlaps those waits: cutting a million-row
//! chunk of a shuffled log for a million-key shard took 63-84 ms of CPU instead of 104-126
//! with `FxHashMap` (which offers no way to prefetch), a log sorted by key 51-60 instead of
//! 72-90. String ids stay in `FxHashMap`.

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::Array;
use arrow_schema::{ArrowError, DataType};
use rayon::prelude::*;
use rustc_hash::FxHashMap;

/// The position of an unknown (or null) id.
pub const NONE: u32 = u32::MAX;
/// Ids looked up per task on a core.
const LOOKUP_ROWS: usize = 1 << 14;

/// Ids (shard keys, item ids; `what` names them in errors) to their positions.
pub struct Positions {
    what: &'static str,
    map: Map,
}

enum Map {
    Int(IdTable),
    Text(FxHashMap<Box<str>, u32>),
}

impl Positions {
    pub fn new(keys: &dyn Array, what: &'static str) -> Result<Self, ArrowError> {
        if keys.null_count() > 0 {
            return Err(invalid(&format!("{what} hold a null")));
        }
        if keys.len() >= NONE as usize {
            return Err(invalid(&format!("at most 2^32 - 1 {what}")));
        }
        let duplicate = |key: String| invalid(&format!("{what}: {key} occurs twice"));
        let map = match keys.data_type() {
            DataType::Int64 => {
                let keys = keys.as_primitive::<Int64Type>().values();
                Map::Int(IdTable::new(keys).map_err(|key| duplicate(key.to_string()))?)
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                let mut map = FxHashMap::default();
                for (row, key) in strings(keys)?.into_iter().enumerate() {
                    let key = key.expect("no nulls");
                    if map.insert(Box::from(key), row as u32).is_some() {
                        return Err(duplicate(format!("{key:?}")));
                    }
                }
                Map::Text(map)
            }
            other => {
                return Err(invalid(&format!(
                    "{what} must be int64 or string, got {other}"
                )))
            }
        };
        Ok(Positions { what, map })
    }

    pub fn len(&self) -> usize {
        match &self.map {
            Map::Int(table) => table.len,
            Map::Text(map) => map.len(),
        }
    }

    /// Each id's position appended to `rows`, `NONE` for unknown ids (and null ids); on every
    /// core.
    pub fn rows(&self, ids: &dyn Array, rows: &mut Vec<u32>) -> Result<(), ArrowError> {
        match (&self.map, ids.data_type()) {
            (Map::Int(table), DataType::Int64) => {
                let values = ids.as_primitive::<Int64Type>().values();
                let start = rows.len();
                rows.resize(start + values.len(), NONE);
                let rows = &mut rows[start..];
                rows.par_chunks_mut(LOOKUP_ROWS)
                    .zip(values.par_chunks(LOOKUP_ROWS))
                    .for_each(|(rows, values)| table.get_all(values, rows));
                if let Some(nulls) = ids.logical_nulls() {
                    for (row, valid) in rows.iter_mut().zip(nulls.iter()) {
                        if !valid {
                            *row = NONE;
                        }
                    }
                }
            }
            (Map::Text(map), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => {
                rows.par_extend(
                    strings(ids)?
                        .into_par_iter()
                        .map(|id| id.and_then(|id| map.get(id).copied()).unwrap_or(NONE)),
                );
            }
            (map, other) => {
                let want = match map {
                    Map::Int(_) => "int64",
                    Map::Text(_) => "string",
                };
                return Err(invalid(&format!(
                    "the log's {} are {other} but those they are looked up among are {want}",
                    self.what
                )));
            }
        }
        Ok(())
    }
}

/// The values of a string array of any offset width or view layout.
fn strings(array: &dyn Array) -> Result<Vec<Option<&str>>, ArrowError> {
    Ok(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().collect(),
        DataType::Utf8View => array.as_string_view().iter().collect(),
        other => return Err(invalid(&format!("not a string array: {other}"))),
    })
}

pub fn invalid(message: &str) -> ArrowError {
    ArrowError::InvalidArgumentError(message.to_string())
}

/// Int64 ids to their positions (each below `NONE`): linear probing in a power-of-two table at
/// most three quarters full (the size `FxHashMap` takes for as many ids, 16 bytes a slot), a
/// slot chosen by the high bits of the id times a 64-bit odd constant (Fibonacci hashing, which
/// spreads runs and strides of ids: sequential ids, ids of a few bits above a stride).
struct IdTable {
    slots: Vec<Slot>,
    /// 64 minus the table's log2 size: `hash >> shift` is a slot.
    shift: u32,
    len: usize,
}

/// An id and its position; `NONE` marks an empty slot (an id may be any `i64`).
#[derive(Clone, Copy)]
struct Slot {
    id: i64,
    position: u32,
}

/// Lookups between an id's slot being prefetched and its being read (measured: 8 to 32 gave
/// the same; 4 and 64 were slower).
const AHEAD: usize = 16;

impl IdTable {
    /// The table of `ids` (position = index); `Err(id)` for an id that occurs twice.
    fn new(ids: &[i64]) -> Result<Self, i64> {
        let bits = (ids.len() + ids.len() / 3 + 1)
            .next_power_of_two()
            .max(16)
            .trailing_zeros();
        let empty = Slot {
            id: 0,
            position: NONE,
        };
        let mut table = IdTable {
            slots: vec![empty; 1 << bits],
            shift: 64 - bits,
            len: 0,
        };
        for (position, &id) in ids.iter().enumerate() {
            let mut slot = table.slot(id);
            loop {
                let here = &mut table.slots[slot];
                if here.position == NONE {
                    *here = Slot {
                        id,
                        position: position as u32,
                    };
                    break;
                }
                if here.id == id {
                    return Err(id);
                }
                slot = (slot + 1) & (table.slots.len() - 1);
            }
        }
        table.len = ids.len();
        Ok(table)
    }

    fn slot(&self, id: i64) -> usize {
        ((id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    fn get(&self, id: i64) -> u32 {
        let mut slot = self.slot(id);
        loop {
            let here = self.slots[slot];
            if here.position == NONE || here.id == id {
                return here.position;
            }
            slot = (slot + 1) & (self.slots.len() - 1);
        }
    }

    /// Each of `ids`' position into `positions`, each id's slot prefetched `AHEAD` lookups
    /// before it is read; a run of one id (a log grouped by key) is looked up once.
    fn get_all(&self, ids: &[i64], positions: &mut [u32]) {
        let mut last: Option<(i64, u32)> = None;
        for (i, (position, &id)) in positions.iter_mut().zip(ids).enumerate() {
            if let Some(&ahead) = ids.get(i + AHEAD) {
                prefetch(&self.slots[self.slot(ahead)]);
            }
            *position = match last {
                Some((key, position)) if key == id => position,
                _ => {
                    let found = self.get(id);
                    last = Some((id, found));
                    found
                }
            };
        }
    }
}

/// Asks for `slot`'s cache line ahead of its use (a hint: no effect on what is read).
#[inline(always)]
fn prefetch(slot: &Slot) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and cannot fault; SSE is part of x86_64.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((slot as *const Slot).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = slot;
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};

    fn rows(positions: &Positions, ids: &dyn Array) -> Result<Vec<u32>, ArrowError> {
        // Appended after what is there.
        let mut rows = vec![7; 3];
        positions.rows(ids, &mut rows)?;
        assert_eq!(rows.drain(..3).collect::<Vec<_>>(), vec![7; 3]);
        Ok(rows)
    }

    #[test]
    fn repeated_and_null_keys() {
        let keys = Int64Array::from(vec![30, 10]);
        let positions = Positions::new(&keys, "shard keys").unwrap();
        // Runs of one key (a sorted log) and a null inside a run.
        let ids = Int64Array::from(vec![Some(10), Some(10), None, Some(10), Some(30), Some(99)]);
        let want = vec![1, 1, NONE, 1, 0, NONE];
        assert_eq!(rows(&positions, &ids).unwrap(), want);
        let long: Vec<i64> = (0..3 * LOOKUP_ROWS as i64)
            .map(|i| [10, 30][(i / 7 % 2) as usize])
            .collect();
        let rows = rows(&positions, &Int64Array::from(long.clone())).unwrap();
        assert!(rows
            .iter()
            .zip(&long)
            .all(|(&r, &k)| r == if k == 10 { 1 } else { 0 }));
    }

    #[test]
    fn string_keys_and_errors() {
        let keys = StringArray::from(vec!["a", "b"]);
        let positions = Positions::new(&keys, "shard keys").unwrap();
        let ids = StringArray::from(vec![Some("b"), None, Some("c"), Some("a")]);
        assert_eq!(rows(&positions, &ids).unwrap(), vec![1, NONE, NONE, 0]);
        let ints = Int64Array::from(vec![1]);
        assert!(rows(&positions, &ints)
            .unwrap_err()
            .to_string()
            .contains("Int64"));
        let twice = StringArray::from(vec!["a", "a"]);
        assert!(Positions::new(&twice, "shard keys").is_err());
    }

    #[test]
    fn the_table_finds_every_id_and_only_those() {
        // Strided, negative and extreme ids, many sharing their slot's high bits.
        let mut ids: Vec<i64> = (0..5_000)
            .map(|i| (i / 61) * 1_000_000 + i % 61 + 1)
            .collect();
        ids.extend([i64::MIN, i64::MAX, 0, -1, -1_000_000]);
        ids.extend((1..300).map(|i| i << 50));
        let table = IdTable::new(&ids).unwrap();
        let reference: FxHashMap<i64, u32> = ids
            .iter()
            .enumerate()
            .map(|(p, &id)| (id, p as u32))
            .collect();
        // Known ids in a scrambled order with runs, and unknown ones.
        let mut probe: Vec<i64> = (0..ids.len()).map(|i| ids[i * 7919 % ids.len()]).collect();
        probe.extend([5, 5, 5, 7, i64::MIN + 1, 3 << 50 | 1]);
        probe.extend(ids[..40].iter().flat_map(|&id| [id, id, id]));
        let mut got = vec![0; probe.len()];
        table.get_all(&probe, &mut got);
        for (&id, &position) in probe.iter().zip(&got) {
            assert_eq!(
                position,
                reference.get(&id).copied().unwrap_or(NONE),
                "id {id}"
            );
        }
        assert_eq!(IdTable::new(&[3, i64::MIN, 3]).err(), Some(3));
    }

    #[test]
    fn probes_wrap_around_the_table() {
        // The top slot's ids: a table of 16 slots takes slot = hash >> 60; keep those of 15.
        let table = IdTable::new(&[]).unwrap();
        let top: Vec<i64> = (0..10_000)
            .filter(|&id| table.slot(id) == 15)
            .take(5)
            .collect();
        let table = IdTable::new(&top).unwrap();
        let mut got = vec![0; top.len()];
        table.get_all(&top, &mut got);
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert_eq!(table.get(-7), NONE);
    }
}
