//! Export encodings shared by the API and the command line: CSV with spreadsheet formulas
//! neutralised (SPEC 8). NDJSON is written by the store (`EventLines`).

use std::borrow::Cow;

use bytes::Bytes;
use leadrelay_domain::time::format_millis;
use leadrelay_store::{FieldValue, StoredEvent};

/// A cell that a spreadsheet would run as a formula gets a leading `'` (SPEC 8).
pub fn neutralise(cell: &str) -> Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

fn write_csv_row(
    writer: &mut csv::Writer<&mut Vec<u8>>,
    event: &StoredEvent,
    fields: &[&str],
) -> Result<(), csv::Error> {
    let timestamp = format_millis(event.timestamp);
    let cells = fields.iter().map(|field| match event.field(field, &timestamp) {
        FieldValue::Text(Some(text)) | FieldValue::Json(text) => neutralise(text),
        FieldValue::Integer(Some(number)) => Cow::Owned(number.to_string()),
        FieldValue::Number(Some(number)) => Cow::Owned(number.to_string()),
        _ => Cow::Borrowed(""),
    });
    for cell in cells {
        writer.write_field(cell.as_bytes())?;
    }
    writer.write_record(None::<&[u8]>)
}

/// The header line of a CSV export with these columns.
pub fn csv_header(fields: &[&str]) -> Bytes {
    let mut line = fields.join(",");
    line.push('\n');
    Bytes::from(line)
}

/// Events as CSV rows with the given columns.
pub fn encode_csv(events: &[StoredEvent], fields: &[&str]) -> Result<Bytes, std::io::Error> {
    let mut buffer = Vec::with_capacity(events.len() * 512);
    let mut writer = csv::Writer::from_writer(&mut buffer);
    for event in events {
        write_csv_row(&mut writer, event, fields)?;
    }
    writer.flush()?;
    drop(writer);
    Ok(Bytes::from(buffer))
}

#[cfg(test)]
mod tests {
    use super::neutralise;

    #[test]
    fn formula_cells_are_neutralised() {
        assert_eq!(neutralise("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(neutralise("+1"), "'+1");
        assert_eq!(neutralise("-1"), "'-1");
        assert_eq!(neutralise("@cmd"), "'@cmd");
        assert_eq!(neutralise("\tx"), "'\tx");
        assert_eq!(neutralise("\rx"), "'\rx");
        assert_eq!(neutralise("plain"), "plain");
    }
}
