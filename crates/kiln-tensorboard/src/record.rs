//! TFRecord framing: each record is
//!
//! ```text
//! u64 LE  length of data
//! u32 LE  masked CRC-32C of the 8 length bytes
//! [u8]    data
//! u32 LE  masked CRC-32C of data
//! ```

use std::io::{self, Write};

use crate::crc32c::masked_crc32c;

/// Writes `data` as one framed record.
pub fn write_record<W: Write>(out: &mut W, data: &[u8]) -> io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    out.write_all(&len)?;
    out.write_all(&masked_crc32c(&len).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc32c(data).to_le_bytes())
}

/// Splits a whole event file back into its records, checking both CRCs of
/// each. Errors with `InvalidData` on a bad CRC or a truncated record.
pub fn read_records(mut bytes: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    fn bad(msg: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
    }
    fn u32_at(b: &[u8]) -> u32 {
        u32::from_le_bytes(b[..4].try_into().unwrap())
    }
    let mut records = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 12 {
            return Err(bad("truncated record header"));
        }
        let (len_bytes, rest) = bytes.split_at(8);
        if u32_at(rest) != masked_crc32c(len_bytes) {
            return Err(bad("length CRC mismatch"));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap());
        let rest = &rest[4..];
        let len = usize::try_from(len).map_err(|_| bad("record too long"))?;
        if rest.len() < len.saturating_add(4) {
            return Err(bad("truncated record"));
        }
        let (data, rest) = rest.split_at(len);
        if u32_at(rest) != masked_crc32c(data) {
            return Err(bad("data CRC mismatch"));
        }
        records.push(data.to_vec());
        bytes = &rest[4..];
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_bytes() {
        let mut out = Vec::new();
        write_record(&mut out, b"abc").unwrap();
        assert_eq!(out.len(), 8 + 4 + 3 + 4);
        assert_eq!(&out[..8], &[3, 0, 0, 0, 0, 0, 0, 0]);
        let len_crc = masked_crc32c(&3u64.to_le_bytes());
        assert_eq!(&out[8..12], &len_crc.to_le_bytes());
        assert_eq!(&out[12..15], b"abc");
        assert_eq!(&out[15..19], &masked_crc32c(b"abc").to_le_bytes());
    }

    #[test]
    fn framing_matches_tensorboards_record_writer() {
        // Golden bytes from tensorboard 2.21's pure-Python
        // `tensorboard.summary.writer.record_writer.RecordWriter`.
        let mut out = Vec::new();
        write_record(&mut out, b"").unwrap();
        assert_eq!(hex(&out), "000000000000000029039807d8ea82a2");
        let mut out = Vec::new();
        write_record(&mut out, b"abc").unwrap();
        assert_eq!(hex(&out), "0300000000000000b099490e6162636e57f121");
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn round_trip_and_corruption() {
        let mut out = Vec::new();
        write_record(&mut out, b"first").unwrap();
        write_record(&mut out, &[7u8; 300]).unwrap();
        let records = read_records(&out).unwrap();
        assert_eq!(records, vec![b"first".to_vec(), vec![7u8; 300]]);

        let mut corrupt = out.clone();
        corrupt[14] ^= 1; // a data byte of the first record
        assert!(read_records(&corrupt).is_err());
        let mut corrupt = out.clone();
        corrupt[0] ^= 1; // its length
        assert!(read_records(&corrupt).is_err());
        assert!(read_records(&out[..out.len() - 1]).is_err());
    }
}
