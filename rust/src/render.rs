//! Prompt rendering: a template of literal text and list slots, written straight into one buffer.
//!
//! A template is a sequence of literals and slots; each slot renders a list of entries (history
//! items, candidates, reviews, ...) with its own entry format, either joined by a separator or
//! as a Python list literal (`['a', "it's"]`, with Python's `repr` quoting), as ITDR's NIR and
//! TUI inputs are written. Entry formats mix literals with fields: the entry's 1-based index,
//! one of the item's text fields (title, genres, ...), its rating, or its text (a review).

use std::io::Write;

use arrow_array::{Array, Float64Array, StringArray};

/// A value an entry format can show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// 1-based position in the list (plus the list's offset).
    Index,
    /// The entry item's text field (an index into the item fields).
    Item(usize),
    /// The entry's rating: integral ratings without decimals (`7`), others shortest (`4.5`).
    Rating,
    /// The entry's text (a review, a comment).
    Text,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Literal(String),
    Field(Field),
}

/// Entry positions whose leading text (separator, index, literals) is rendered in advance.
const PRERENDERED: usize = 64;

/// How a list slot is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFormat {
    entry: Vec<Piece>,
    /// `Some(sep)`: entries joined by `sep`; `None`: a Python list literal of the entries.
    separator: Option<String>,
    /// Joined lists: how many leading pieces are literals or the index, and their text
    /// (after the separator) for the first positions, so an entry costs one copy plus its fields.
    lead_pieces: usize,
    leads: Vec<Vec<u8>>,
}

impl ListFormat {
    pub fn new(entry: Vec<Piece>, separator: Option<String>) -> Self {
        let lead_pieces = entry
            .iter()
            .take_while(|p| matches!(p, Piece::Literal(_) | Piece::Field(Field::Index)))
            .count();
        let leads = match &separator {
            None => Vec::new(),
            Some(sep) => (0..PRERENDERED)
                .map(|i| {
                    let mut lead = if i > 0 {
                        sep.as_bytes().to_vec()
                    } else {
                        Vec::new()
                    };
                    write_pieces(&entry[..lead_pieces], &[], &Slot::default(), i, &mut lead);
                    lead
                })
                .collect(),
        };
        ListFormat {
            entry,
            separator,
            lead_pieces,
            leads,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    /// Index into `Template::lists` and into the slots passed to `render`.
    Slot(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<Part>,
    pub lists: Vec<ListFormat>,
}

/// One row's entries for one slot; every present column holds `len` values from `start`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Slot<'a> {
    pub len: usize,
    pub items: Option<&'a [u32]>,
    pub ratings: Option<(&'a Float64Array, usize)>,
    pub texts: Option<(&'a StringArray, usize)>,
}

impl Slot<'_> {
    /// The last `n` entries (histories keep the most recent ones).
    pub fn tail(self, n: usize) -> Self {
        let skip = self.len.saturating_sub(n);
        self.skip(skip, self.len - skip)
    }

    /// `len` entries from entry `skip` on.
    pub fn skip(self, skip: usize, len: usize) -> Self {
        Slot {
            len,
            items: self.items.map(|items| &items[skip..skip + len]),
            ratings: self.ratings.map(|(r, start)| (r, start + skip)),
            texts: self.texts.map(|(t, start)| (t, start + skip)),
        }
    }
}

/// Renders a template for one row, appending to `out`; `scratch` is reused between calls.
pub fn render(
    template: &Template,
    item_fields: &[StringArray],
    slots: &[Slot<'_>],
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) {
    for part in &template.parts {
        match part {
            Part::Literal(text) => out.extend_from_slice(text.as_bytes()),
            Part::Slot(k) => {
                let format = &template.lists[*k];
                let slot = &slots[*k];
                match &format.separator {
                    Some(separator) => {
                        let rest = &format.entry[format.lead_pieces..];
                        for i in 0..slot.len {
                            if let Some(lead) = format.leads.get(i) {
                                out.extend_from_slice(lead);
                            } else {
                                push_bytes(out, separator.as_bytes());
                                let lead = &format.entry[..format.lead_pieces];
                                write_pieces(lead, item_fields, slot, i, out);
                            }
                            write_pieces(rest, item_fields, slot, i, out);
                        }
                    }
                    None => {
                        out.push(b'[');
                        for i in 0..slot.len {
                            if i > 0 {
                                out.extend_from_slice(b", ");
                            }
                            scratch.clear();
                            write_pieces(&format.entry, item_fields, slot, i, scratch);
                            // Entries are built from UTF-8 pieces only.
                            let entry = std::str::from_utf8(scratch).unwrap_or_default();
                            push_python_repr(out, entry);
                        }
                        out.push(b']');
                    }
                }
            }
        }
    }
}

/// Appends `bytes`; short pieces (list markers, separators) skip the call into `memcpy`.
#[inline]
fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.len() <= 8 {
        for &b in bytes {
            out.push(b);
        }
    } else {
        out.extend_from_slice(bytes);
    }
}

fn write_pieces(
    pieces: &[Piece],
    item_fields: &[StringArray],
    slot: &Slot<'_>,
    i: usize,
    out: &mut Vec<u8>,
) {
    for piece in pieces {
        match piece {
            Piece::Literal(text) => push_bytes(out, text.as_bytes()),
            Piece::Field(Field::Index) => push_decimal(out, i as u64 + 1),
            Piece::Field(Field::Item(k)) => {
                if let Some(items) = slot.items {
                    let values = &item_fields[*k];
                    let item = items[i] as usize;
                    if values.is_valid(item) {
                        out.extend_from_slice(values.value(item).as_bytes());
                    }
                }
            }
            Piece::Field(Field::Rating) => {
                if let Some((ratings, start)) = slot.ratings {
                    if ratings.is_valid(start + i) {
                        push_rating(out, ratings.value(start + i));
                    }
                }
            }
            Piece::Field(Field::Text) => {
                if let Some((texts, start)) = slot.texts {
                    if texts.is_valid(start + i) {
                        out.extend_from_slice(texts.value(start + i).as_bytes());
                    }
                }
            }
        }
    }
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    // List positions are almost always one or two digits.
    if n < 10 {
        out.push(b'0' + n as u8);
        return;
    }
    if n < 100 {
        out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
        return;
    }
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Integral ratings print without decimals (`7`), others as the shortest round-trip decimal.
pub fn push_rating(out: &mut Vec<u8>, rating: f64) {
    if rating.fract() == 0.0 && rating.abs() < 1e15 {
        if rating < 0.0 {
            out.push(b'-');
        }
        push_decimal(out, rating.abs() as u64);
    } else {
        // Infallible: writing to a Vec.
        let _ = write!(out, "{rating}");
    }
}

/// Appends `text` as Python's `repr(str)` writes it: single quotes unless the text holds a single
/// quote and no double quote; backslash, the quote, and non-printable characters escaped.
pub fn push_python_repr(out: &mut Vec<u8>, text: &str) {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut buffer = [0u8; 4];
    out.push(quote as u8);
    for c in text.chars() {
        match c {
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if c == quote => {
                out.push(b'\\');
                out.push(c as u8);
            }
            c if is_unprintable(c) => {
                let code = c as u32;
                // Infallible: writing to a Vec.
                let _ = if code <= 0xff {
                    write!(out, "\\x{code:02x}")
                } else if code <= 0xffff {
                    write!(out, "\\u{code:04x}")
                } else {
                    write!(out, "\\U{code:08x}")
                };
            }
            c => out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes()),
        }
    }
    out.push(quote as u8);
}

/// Characters Python's `str.isprintable` rejects, among assigned, non-private code points:
/// controls (Cc), separators other than the space (Zs, Zl, Zp) and format characters (Cf).
fn is_unprintable(c: char) -> bool {
    matches!(
        c as u32,
        0x00..=0x1f
            | 0x7f..=0xa0
            | 0xad
            | 0x600..=0x605
            | 0x61c
            | 0x6dd
            | 0x70f
            | 0x890..=0x891
            | 0x8e2
            | 0x1680
            | 0x180e
            | 0x2000..=0x200f
            | 0x2028..=0x202f
            | 0x205f..=0x2064
            | 0x2066..=0x206f
            | 0x3000
            | 0xfeff
            | 0xfff9..=0xfffb
            | 0x110bd
            | 0x110cd
            | 0x13430..=0x1343f
            | 0x1bca0..=0x1bca3
            | 0x1d173..=0x1d17a
            | 0xe0001
            | 0xe0020..=0xe007f
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Piece {
        Piece::Literal(s.to_string())
    }

    fn titles() -> Vec<StringArray> {
        vec![
            StringArray::from(vec!["Heat (1995)", "Let's go", "Say \"hi\"", "a\\b\nc"]),
            StringArray::from(vec![Some("Crime|Drama"), None, Some("Anime"), Some("")]),
        ]
    }

    fn rendered(template: &Template, slots: &[Slot<'_>]) -> String {
        let mut out = Vec::new();
        render(template, &titles(), slots, &mut out, &mut Vec::new());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn numbered_lines_and_inline_lists() {
        let template = Template {
            parts: vec![
                Part::Literal("History:\n".into()),
                Part::Slot(0),
                Part::Literal("\nRated: ".into()),
                Part::Slot(1),
                Part::Literal(".".into()),
            ],
            lists: vec![
                ListFormat::new(
                    vec![
                        Piece::Field(Field::Index),
                        lit(". "),
                        Piece::Field(Field::Item(0)),
                    ],
                    Some("\n".into()),
                ),
                ListFormat::new(
                    vec![
                        Piece::Field(Field::Item(0)),
                        lit(" ("),
                        Piece::Field(Field::Rating),
                        lit(")"),
                    ],
                    Some(", ".into()),
                ),
            ],
        };
        let ratings = Float64Array::from(vec![9.0, 4.0, 4.5]);
        let items = [0, 1];
        let slots = [
            Slot {
                len: 2,
                items: Some(&items),
                ..Slot::default()
            },
            Slot {
                len: 2,
                items: Some(&items),
                ratings: Some((&ratings, 1)),
                texts: None,
            },
        ];
        assert_eq!(
            rendered(&template, &slots),
            "History:\n1. Heat (1995)\n2. Let's go\nRated: Heat (1995) (4), Let's go (4.5)."
        );
    }

    #[test]
    fn python_list_literal_quotes_like_repr() {
        let template = Template {
            parts: vec![Part::Slot(0)],
            lists: vec![ListFormat::new(
                vec![
                    Piece::Field(Field::Index),
                    lit("."),
                    Piece::Field(Field::Item(0)),
                    lit(":"),
                    Piece::Field(Field::Item(1)),
                ],
                None,
            )],
        };
        let items = [0, 1, 2, 3];
        let slots = [Slot {
            len: 4,
            items: Some(&items),
            ..Slot::default()
        }];
        assert_eq!(
            rendered(&template, &slots),
            r#"['1.Heat (1995):Crime|Drama', "2.Let's go:", '3.Say "hi":Anime', '4.a\\b\nc:']"#
        );
    }

    #[test]
    fn empty_list_renders_nothing_or_brackets() {
        let joined = ListFormat::new(vec![lit("x")], Some(", ".into()));
        let listed = ListFormat::new(vec![lit("x")], None);
        let template = Template {
            parts: vec![Part::Slot(0), Part::Slot(1)],
            lists: vec![joined, listed],
        };
        assert_eq!(
            rendered(&template, &[Slot::default(), Slot::default()]),
            "[]"
        );
    }

    #[test]
    fn long_lists_render_past_the_prerendered_positions() {
        let items = vec![0u32; 70];
        let slot = Slot {
            len: 70,
            items: Some(&items),
            ..Slot::default()
        };
        let entry = vec![
            Piece::Field(Field::Index),
            lit(". "),
            Piece::Field(Field::Item(0)),
        ];
        let template = Template {
            parts: vec![Part::Slot(0)],
            lists: vec![ListFormat::new(entry, Some("\n".into()))],
        };
        let expected: Vec<String> = (1..=70).map(|i| format!("{i}. Heat (1995)")).collect();
        assert_eq!(rendered(&template, &[slot]), expected.join("\n"));
    }

    #[test]
    fn texts_and_tail() {
        let texts = StringArray::from(vec!["old", "good", "great"]);
        let items = [0, 1, 2];
        let slot = Slot {
            len: 3,
            items: Some(&items),
            ratings: None,
            texts: Some((&texts, 0)),
        };
        let template = Template {
            parts: vec![Part::Slot(0)],
            lists: vec![ListFormat::new(
                vec![
                    Piece::Field(Field::Item(0)),
                    lit(": "),
                    Piece::Field(Field::Text),
                ],
                Some("\n".into()),
            )],
        };
        assert_eq!(
            rendered(&template, &[slot.tail(2)]),
            "Let's go: good\nSay \"hi\": great"
        );
    }

    #[test]
    fn ratings_print_like_the_dataset() {
        let cases = [
            (7.0, "7"),
            (4.5, "4.5"),
            (0.5, "0.5"),
            (-2.0, "-2"),
            (3.25, "3.25"),
        ];
        for (rating, text) in cases {
            let mut out = Vec::new();
            push_rating(&mut out, rating);
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }

    #[test]
    fn python_repr_escapes() {
        let cases = [
            ("plain", "'plain'"),
            ("it's", "\"it's\""),
            ("it's \"x\"", "'it\\'s \"x\"'"),
            ("tab\there", "'tab\\there'"),
            (
                "\u{7}\u{85}\u{a0}\u{2028}\u{feff}",
                "'\\x07\\x85\\xa0\\u2028\\ufeff'",
            ),
            ("é 中 🙂", "'é 中 🙂'"),
        ];
        for (text, repr) in cases {
            let mut out = Vec::new();
            push_python_repr(&mut out, text);
            assert_eq!(String::from_utf8(out).unwrap(), repr, "{text:?}");
        }
    }
}
