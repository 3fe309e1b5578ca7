//! Text result sets (the answer to COM_QUERY), assembled packet by packet.
//! The client does not announce CLIENT_DEPRECATE_EOF, so column definitions
//! and rows each end with an EOF packet.

use super::packet::{parse_err, protocol, ProtocolError, Reader, ServerError};

/// Rows and column names of one finished query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextResult {
    /// Column names in order.
    pub columns: Vec<String>,
    /// Rows; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

impl TextResult {
    /// The value of `column` in the first row.
    pub fn first(&self, column: &str) -> Option<&str> {
        let i = self
            .columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(column))?;
        self.rows.first()?.get(i)?.as_deref()
    }

    /// For two-column `SHOW VARIABLES` / `SHOW STATUS` results: the value of
    /// the row whose first column is `name`.
    pub fn variable(&self, name: &str) -> Option<&str> {
        self.rows
            .iter()
            .find(|r| {
                r.first()
                    .and_then(Option::as_deref)
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .and_then(|r| r.get(1)?.as_deref())
    }
}

/// How a query ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryOutcome {
    /// A result set.
    Rows(TextResult),
    /// An OK packet: a statement without rows.
    Done,
    /// An ERR packet.
    Failed(ServerError),
}

#[derive(Debug)]
enum Stage {
    Start,
    Columns { remaining: u64 },
    ColumnsEnd,
    Rows,
}

/// Feeds packets of one query's answer until it is complete.
#[derive(Debug)]
pub struct ResultReader {
    stage: Stage,
    result: TextResult,
    /// Payload bytes taken so far.
    bytes: usize,
}

/// Limits that keep a hostile server from growing a probe's memory.
const MAX_COLUMNS: u64 = 512;
const MAX_ROWS: usize = 1024;
/// Bytes of one answer in all: a check's answers are a few hundred bytes,
/// and without this 1,024 rows of 64 KiB would hold 64 MiB per probe.
pub const MAX_RESULT_BYTES: usize = 256 * 1024;

impl Default for ResultReader {
    fn default() -> Self {
        ResultReader {
            stage: Stage::Start,
            result: TextResult::default(),
            bytes: 0,
        }
    }
}

impl ResultReader {
    /// Takes the next packet's payload; `Some` once the answer is complete.
    pub fn feed(&mut self, payload: &[u8]) -> Result<Option<QueryOutcome>, ProtocolError> {
        self.bytes = self.bytes.saturating_add(payload.len());
        if self.bytes > MAX_RESULT_BYTES {
            return Err(protocol(format!(
                "an answer to a check query larger than {MAX_RESULT_BYTES} bytes"
            )));
        }
        let first = payload.first().copied();
        let is_eof = first == Some(0xfe) && payload.len() < 9;
        match self.stage {
            Stage::Start => match first {
                Some(0x00) => Ok(Some(QueryOutcome::Done)),
                Some(0xff) => Ok(Some(QueryOutcome::Failed(parse_err(payload)?))),
                _ => {
                    let count = Reader(payload)
                        .lenenc_int()?
                        .ok_or_else(|| protocol("NULL column count"))?;
                    if count == 0 || count > MAX_COLUMNS {
                        return Err(protocol(format!("unexpected column count {count}")));
                    }
                    self.stage = Stage::Columns { remaining: count };
                    Ok(None)
                }
            },
            Stage::Columns { remaining } => {
                self.result.columns.push(column_name(payload)?);
                self.stage = if remaining <= 1 {
                    Stage::ColumnsEnd
                } else {
                    Stage::Columns {
                        remaining: remaining.saturating_sub(1),
                    }
                };
                Ok(None)
            }
            Stage::ColumnsEnd if is_eof => {
                self.stage = Stage::Rows;
                Ok(None)
            }
            Stage::ColumnsEnd => Err(protocol("expected EOF after column definitions")),
            Stage::Rows if is_eof => Ok(Some(QueryOutcome::Rows(std::mem::take(&mut self.result)))),
            Stage::Rows if first == Some(0xff) => {
                Ok(Some(QueryOutcome::Failed(parse_err(payload)?)))
            }
            Stage::Rows => {
                if self.result.rows.len() >= MAX_ROWS {
                    return Err(protocol("too many rows for a check query"));
                }
                let row = self.row(payload)?;
                self.result.rows.push(row);
                Ok(None)
            }
        }
    }

    fn row(&self, payload: &[u8]) -> Result<Vec<Option<String>>, ProtocolError> {
        let mut r = Reader(payload);
        (0..self.result.columns.len())
            .map(|_| Ok(r.lenenc_bytes()?.map(super::packet::printable)))
            .collect()
    }
}

/// The `name` field of a column definition (the fifth length-encoded string).
fn column_name(payload: &[u8]) -> Result<String, ProtocolError> {
    let mut r = Reader(payload);
    for _ in 0..4 {
        r.lenenc_bytes()?;
    }
    let name = r
        .lenenc_bytes()?
        .ok_or_else(|| protocol("NULL column name"))?;
    Ok(super::packet::printable(name))
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
pub(crate) mod tests {
    use super::*;

    /// Builds the payloads of a text result set, as a server sends them.
    pub(crate) fn result_set(columns: &[&str], rows: &[&[Option<&str>]]) -> Vec<Vec<u8>> {
        fn lenenc(out: &mut Vec<u8>, s: &[u8]) {
            out.push(u8::try_from(s.len()).unwrap());
            out.extend_from_slice(s);
        }
        let mut packets = vec![vec![u8::try_from(columns.len()).unwrap()]];
        for c in columns {
            let mut p = Vec::new();
            for field in [&b"def"[..], b"", b"", b"", c.as_bytes(), c.as_bytes()] {
                lenenc(&mut p, field);
            }
            p.extend_from_slice(&[0x0c, 0x21, 0, 0, 0, 0, 0xfd, 0, 0, 0, 0, 0]);
            packets.push(p);
        }
        packets.push(vec![0xfe, 0, 0, 2, 0]);
        for row in rows {
            let mut p = Vec::new();
            for v in *row {
                match v {
                    Some(s) => lenenc(&mut p, s.as_bytes()),
                    None => p.push(0xfb),
                }
            }
            packets.push(p);
        }
        packets.push(vec![0xfe, 0, 0, 2, 0]);
        packets
    }

    fn run(packets: &[Vec<u8>]) -> Result<QueryOutcome, ProtocolError> {
        let mut reader = ResultReader::default();
        for (i, p) in packets.iter().enumerate() {
            if let Some(outcome) = reader.feed(p)? {
                assert_eq!(i, packets.len() - 1, "finished early");
                return Ok(outcome);
            }
        }
        Err(protocol("unfinished"))
    }

    #[test]
    fn reads_rows_and_nulls() {
        let packets = result_set(
            &["Variable_name", "Value"],
            &[&[Some("read_only"), Some("ON")], &[Some("x"), None]],
        );
        let QueryOutcome::Rows(r) = run(&packets).unwrap() else {
            panic!()
        };
        assert_eq!(r.variable("READ_ONLY"), Some("ON"));
        assert_eq!(r.variable("x"), None);
        assert_eq!(r.first("value"), Some("ON"));
        assert_eq!(r.rows.len(), 2);
    }

    #[test]
    fn empty_results_ok_and_errors() {
        let QueryOutcome::Rows(r) = run(&result_set(&["a"], &[])).unwrap() else {
            panic!()
        };
        assert!(r.rows.is_empty() && r.first("a").is_none());
        assert_eq!(
            run(&[vec![0, 0, 0, 2, 0, 0, 0]]).unwrap(),
            QueryOutcome::Done
        );
        let err = run(&[vec![
            0xff, 0x27, 0x04, b'#', b'4', b'2', b'0', b'0', b'0', b'n', b'o',
        ]])
        .unwrap();
        assert_eq!(
            err,
            QueryOutcome::Failed(ServerError {
                code: 1063,
                message: "no".into()
            })
        );
    }

    #[test]
    fn malformed_answers_are_errors() {
        assert!(run(&[vec![0xfb]]).is_err(), "NULL column count");
        let mut packets = result_set(&["a"], &[&[Some("x")]]);
        packets[3] = vec![0x05, b'x'];
        assert!(run(&packets).is_err(), "truncated value");
        let mut packets = result_set(&["a"], &[]);
        packets[2] = vec![1, 2, 3];
        assert!(run(&packets).is_err(), "no EOF after columns");
    }

    #[test]
    fn a_hostile_server_cannot_make_an_answer_hold_megabytes() {
        // Rows of 200 values of 250 bytes: 50 KB each.
        let names: Vec<String> = (0..200).map(|i| format!("c{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let value = "x".repeat(250);
        let row: Vec<Option<&str>> = vec![Some(value.as_str()); 200];
        let four = result_set(&names, &[&row, &row, &row, &row]);
        assert!(run(&four).is_ok(), "200 KB is within the limit");
        let five = result_set(&names, &[&row, &row, &row, &row, &row, &row]);
        let error = run(&five).unwrap_err();
        assert!(error.0.contains("larger than"), "{error}");
    }
}
