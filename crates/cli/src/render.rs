//! Output: every answer is first the proto3 JSON of the service's message, then shown as a
//! table (default), JSON (`--json`), JSON Lines or CSV (`export`). Columns pick fields by JSON
//! pointer, so what a table shows is exactly what the JSON holds.

use std::io::{self, Write};

use serde_json::Value;

/// How a list or an object is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON document (a list is an array; a stream is JSON Lines).
    Json,
    /// One JSON object per line, every field.
    Jsonl,
    /// RFC 4180 CSV with the table's columns.
    Csv,
}

/// How a cell shows its value.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Text,
    /// A bool shown as yes/no; absent (proto3's default) is no.
    Flag,
    /// An enum value with its prefix cut and lower-cased: `REQUEST_STATE_PAUSED` → `paused`.
    Enum(&'static str),
}

/// One column: a header and where its value is in the row's JSON.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub header: &'static str,
    /// A JSON pointer (`/envelope/eventType`).
    pub path: &'static str,
    pub kind: Kind,
}

pub const fn text(header: &'static str, path: &'static str) -> Column {
    Column {
        header,
        path,
        kind: Kind::Text,
    }
}

pub const fn flag(header: &'static str, path: &'static str) -> Column {
    Column {
        header,
        path,
        kind: Kind::Flag,
    }
}

pub const fn enumeration(header: &'static str, path: &'static str, prefix: &'static str) -> Column {
    Column {
        header,
        path,
        kind: Kind::Enum(prefix),
    }
}

/// The text of one cell.
pub fn cell(row: &Value, column: &Column) -> String {
    let value = row.pointer(column.path).unwrap_or(&Value::Null);
    let shown = show(value, column.kind);
    shown.replace(['\n', '\r', '\t'], " ")
}

fn show(value: &Value, kind: Kind) -> String {
    match (value, kind) {
        (Value::Null, Kind::Flag) => "no".into(),
        (Value::Null, _) => "-".into(),
        (Value::Bool(b), Kind::Flag) => if *b { "yes" } else { "no" }.into(),
        (Value::Bool(b), _) => b.to_string(),
        (Value::String(s), Kind::Enum(prefix)) => s
            .strip_prefix(prefix)
            .unwrap_or(s)
            .to_ascii_lowercase()
            .replace('_', " "),
        (Value::String(s), _) if s.is_empty() => "-".into(),
        (Value::String(s), _) => s.clone(),
        (Value::Number(n), _) => n.to_string(),
        (Value::Array(items), _) if items.is_empty() => "-".into(),
        (Value::Array(items), _) => items
            .iter()
            .map(|i| show(i, kind))
            .collect::<Vec<_>>()
            .join(", "),
        (Value::Object(_), _) => value.to_string(),
    }
}

/// Writes a list row by row.
pub struct Listing<'a, W: Write> {
    format: Format,
    columns: &'a [Column],
    out: W,
    /// Table rows kept until the end (to align them), unless streaming.
    table: Vec<Vec<String>>,
    json: Vec<Value>,
    streaming: bool,
    widths: Vec<usize>,
    rows: usize,
}

impl<'a, W: Write> Listing<'a, W> {
    /// `streaming` writes each row as it comes (a followed event stream): tables then align
    /// on the headers only and `--json` writes JSON Lines.
    pub fn new(format: Format, columns: &'a [Column], out: W, streaming: bool) -> Listing<'a, W> {
        Listing {
            format,
            columns,
            out,
            table: Vec::new(),
            json: Vec::new(),
            streaming,
            // A stream cannot be aligned on its rows: room for typical values.
            widths: columns.iter().map(|c| c.header.len().max(12)).collect(),
            rows: 0,
        }
    }

    pub fn row(&mut self, row: Value) -> io::Result<()> {
        if self.rows == 0 {
            self.start()?;
        }
        self.rows += 1;
        match self.format {
            Format::Table => {
                let cells: Vec<String> = self.columns.iter().map(|c| cell(&row, c)).collect();
                if self.streaming {
                    write_cells(&mut self.out, &cells, &self.widths)?;
                    self.out.flush()?;
                } else {
                    self.table.push(cells);
                }
            }
            Format::Json if !self.streaming => self.json.push(row),
            Format::Json | Format::Jsonl => {
                writeln!(self.out, "{row}")?;
                self.out.flush()?;
            }
            Format::Csv => {
                let cells: Vec<String> = self.columns.iter().map(|c| cell(&row, c)).collect();
                write_csv(&mut self.out, &cells)?;
            }
        }
        Ok(())
    }

    fn start(&mut self) -> io::Result<()> {
        let headers: Vec<String> = self.columns.iter().map(|c| c.header.to_owned()).collect();
        match self.format {
            Format::Table if self.streaming => write_cells(&mut self.out, &headers, &self.widths),
            Format::Csv => write_csv(&mut self.out, &headers),
            _ => Ok(()),
        }
    }

    /// Writes what was kept; returns how many rows there were.
    pub fn finish(mut self) -> io::Result<usize> {
        if self.rows == 0 {
            self.start()?;
        }
        match self.format {
            Format::Table if !self.streaming => {
                let headers: Vec<String> =
                    self.columns.iter().map(|c| c.header.to_owned()).collect();
                let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
                for row in &self.table {
                    for (w, c) in widths.iter_mut().zip(row) {
                        *w = (*w).max(c.chars().count());
                    }
                }
                write_cells(&mut self.out, &headers, &widths)?;
                for row in &self.table {
                    write_cells(&mut self.out, row, &widths)?;
                }
                if self.table.is_empty() {
                    writeln!(self.out, "(none)")?;
                }
            }
            Format::Json if !self.streaming => {
                let array = Value::Array(std::mem::take(&mut self.json));
                writeln!(self.out, "{}", pretty(&array))?;
            }
            _ => {}
        }
        self.out.flush()?;
        Ok(self.rows)
    }
}

fn write_cells(out: &mut impl Write, cells: &[String], widths: &[usize]) -> io::Result<()> {
    let mut line = String::new();
    for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
        if i + 1 == cells.len() {
            line.push_str(c);
        } else {
            line.push_str(c);
            let pad = w.saturating_sub(c.chars().count()) + 2;
            line.extend(std::iter::repeat_n(' ', pad));
        }
    }
    writeln!(out, "{}", line.trim_end())
}

fn write_csv(out: &mut impl Write, cells: &[String]) -> io::Result<()> {
    let line: Vec<String> = cells
        .iter()
        .map(|c| {
            if c.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.clone()
            }
        })
        .collect();
    // RFC 4180 ends records with CRLF.
    write!(out, "{}\r\n", line.join(","))
}

/// Indented JSON.
pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// An object as `label  value` lines, labels aligned.
pub fn details(out: &mut impl Write, value: &Value, fields: &[Column]) -> io::Result<()> {
    let width = fields.iter().map(|f| f.header.len()).max().unwrap_or(0);
    for f in fields {
        writeln!(out, "{:width$}  {}", f.header, cell(value, f))?;
    }
    Ok(())
}

/// A titled table of the array at `path` inside `value` (nothing when it is empty).
pub fn section(
    out: &mut impl Write,
    title: &str,
    value: &Value,
    path: &str,
    columns: &[Column],
) -> io::Result<()> {
    let Some(Value::Array(items)) = value.pointer(path) else {
        return Ok(());
    };
    if items.is_empty() {
        return Ok(());
    }
    writeln!(out, "\n{title}:")?;
    let mut listing = Listing::new(Format::Table, columns, &mut *out, false);
    for item in items {
        listing.row(item.clone())?;
    }
    listing.finish()?;
    Ok(())
}

/// Bytes as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const COLUMNS: &[Column] = &[
        text("ID", "/id"),
        enumeration("STATE", "/state", "REQUEST_STATE_"),
        flag("OVERDUE", "/overdue"),
        text("PURPOSES", "/purposes"),
    ];

    fn render(format: Format, rows: &[Value]) -> String {
        let mut out = Vec::new();
        let mut l = Listing::new(format, COLUMNS, &mut out, false);
        for r in rows {
            l.row(r.clone()).unwrap();
        }
        l.finish().unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn tables_align_and_show_proto3_defaults_as_people_expect() {
        let rows = [
            json!({"id": "r-1", "state": "REQUEST_STATE_IN_PROGRESS", "purposes": ["a", "b"]}),
            json!({"id": "request-22", "overdue": true}),
        ];
        assert_eq!(
            render(Format::Table, &rows),
            "ID          STATE        OVERDUE  PURPOSES\n\
             r-1         in progress  no       a, b\n\
             request-22  -            yes      -\n"
        );
        assert_eq!(
            render(Format::Table, &[]),
            "ID  STATE  OVERDUE  PURPOSES\n(none)\n"
        );
    }

    #[test]
    fn csv_quotes_what_needs_quoting_and_jsonl_keeps_every_field() {
        let rows = [json!({"id": "a,\"b\"", "extra": 1})];
        assert_eq!(
            render(Format::Csv, &rows),
            "ID,STATE,OVERDUE,PURPOSES\r\n\"a,\"\"b\"\"\",-,no,-\r\n"
        );
        assert_eq!(
            render(Format::Jsonl, &rows),
            "{\"extra\":1,\"id\":\"a,\\\"b\\\"\"}\n"
        );
        assert_eq!(render(Format::Csv, &[]), "ID,STATE,OVERDUE,PURPOSES\r\n");
        let json: Value = serde_json::from_str(&render(Format::Json, &rows)).unwrap();
        assert_eq!(json, Value::Array(rows.to_vec()));
    }
}
