//! PostgreSQL: rows appended by `COPY … FROM STDIN (FORMAT binary)`.
//!
//! A timeline bulk build appends about 13,000 staging rows per batch. As
//! one `INSERT … SELECT * FROM UNNEST(arrays)` they cost PostgreSQL about
//! 2.2 µs a row (29 ms a batch at 10 M, 32 of the bulk phase's 35 s),
//! three times what inserting the same rows from a table costs it: the
//! arrays are built, sent, parsed and unnested first. `COPY` in the binary
//! format hands it each value as it is stored (docs/performance.md, "The
//! timeline's rebuild on PostgreSQL by COPY").
//!
//! The format (PostgreSQL's documentation, "COPY", "Binary Format"): a
//! signature and two 32-bit zeros (flags, header extension), then per row
//! a 16-bit field count and per field a 32-bit length (-1: NULL) and the
//! value in the type's binary form (text: its UTF-8 bytes; `int2`, `int8`:
//! big-endian), then a 16-bit -1. All integers are big-endian.

use sqlx::PgConnection;

/// What begins every binary `COPY` stream.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// A value of a binary `COPY` row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value<'a> {
    Text(Option<&'a str>),
    Int2(Option<i16>),
    Int8(Option<i64>),
}

/// A binary `COPY` stream being written: the header, then rows.
pub(crate) struct BinaryRows {
    bytes: Vec<u8>,
    rows: u64,
}

impl BinaryRows {
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        let mut out = Vec::with_capacity(bytes + SIGNATURE.len() + 8 + 2);
        out.extend_from_slice(SIGNATURE);
        out.extend_from_slice(&0_i32.to_be_bytes()); // flags: no OIDs
        out.extend_from_slice(&0_i32.to_be_bytes()); // no header extension
        BinaryRows {
            bytes: out,
            rows: 0,
        }
    }

    /// Appends one row, its values in the order of the `COPY`'s columns.
    pub(crate) fn push(&mut self, values: &[Value<'_>]) -> Result<(), sqlx::Error> {
        let fields = i16::try_from(values.len())
            .map_err(|_| sqlx::Error::Protocol(format!("{} columns in a row", values.len())))?;
        self.bytes.extend_from_slice(&fields.to_be_bytes());
        for value in values {
            match *value {
                Value::Text(Some(s)) => {
                    let len = i32::try_from(s.len()).map_err(|_| {
                        sqlx::Error::Protocol(format!("a text of {} bytes", s.len()))
                    })?;
                    self.bytes.extend_from_slice(&len.to_be_bytes());
                    self.bytes.extend_from_slice(s.as_bytes());
                }
                Value::Int2(Some(v)) => {
                    self.bytes.extend_from_slice(&2_i32.to_be_bytes());
                    self.bytes.extend_from_slice(&v.to_be_bytes());
                }
                Value::Int8(Some(v)) => {
                    self.bytes.extend_from_slice(&8_i32.to_be_bytes());
                    self.bytes.extend_from_slice(&v.to_be_bytes());
                }
                Value::Text(None) | Value::Int2(None) | Value::Int8(None) => {
                    self.bytes.extend_from_slice(&(-1_i32).to_be_bytes());
                }
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// The stream with its trailer, and its row count.
    fn finish(mut self) -> (Vec<u8>, u64) {
        self.bytes.extend_from_slice(&(-1_i16).to_be_bytes());
        (self.bytes, self.rows)
    }

    /// Sends the rows with `COPY {into} FROM STDIN (FORMAT binary)` (`into`:
    /// `table (columns)`) on `c`, in its current transaction, and checks
    /// PostgreSQL took every one.
    pub(crate) async fn copy(self, c: &mut PgConnection, into: &str) -> Result<(), sqlx::Error> {
        let (bytes, rows) = self.finish();
        let mut copy = c
            .copy_in_raw(&format!("COPY {into} FROM STDIN (FORMAT binary)"))
            .await?;
        // A failed send drops `copy`, which tells PostgreSQL to abandon it.
        copy.send(bytes).await?;
        let copied = copy.finish().await?;
        if copied != rows {
            return Err(sqlx::Error::Protocol(format!(
                "COPY {into}: {copied} rows of {rows}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_framed_as_postgresql_reads_them() {
        let mut rows = BinaryRows::with_capacity(0);
        rows.push(&[
            Value::Text(Some("é")),
            Value::Int2(Some(-2)),
            Value::Int8(Some(258)),
            Value::Text(None),
            Value::Int2(None),
        ])
        .unwrap();
        let (bytes, count) = rows.finish();
        assert_eq!(count, 1);
        let mut expected = b"PGCOPY\n\xff\r\n\0".to_vec();
        expected.extend([0, 0, 0, 0, 0, 0, 0, 0]); // flags, extension
        expected.extend([0, 5]); // fields
        expected.extend([0, 0, 0, 2, 0xc3, 0xa9]); // "é", UTF-8
        expected.extend([0, 0, 0, 2, 0xff, 0xfe]); // -2
        expected.extend([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 1, 2]); // 258
        expected.extend([0xff, 0xff, 0xff, 0xff]); // NULL
        expected.extend([0xff, 0xff, 0xff, 0xff]); // NULL
        expected.extend([0xff, 0xff]); // trailer
        assert_eq!(bytes, expected);
    }
}
