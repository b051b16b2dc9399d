//! NumPy's `.npy` format (versions 1-3), as `np.save` writes it: a magic
//! string, a Python-dict header with `descr`, `fortran_order` and `shape`, then
//! the raw values. Read into float32 (what kiln trains on); written as 2-D
//! little-endian float32, which is how kiln stores array datasets.
//! Spec: numpy.lib.format (https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html).

use crate::error::{FieldError, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

/// An array read from a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// The array's dimensions, from its header.
    pub shape: Vec<usize>,
    /// All values in C order.
    pub values: Vec<f32>,
}

/// Parses `bytes` as one `.npy` file; errors are reported against `field`.
pub fn read(field: &str, bytes: &[u8]) -> Result<NpyArray> {
    let err = |message: String| FieldError::new(field, message);
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(err(
            "not a .npy file (no \\x93NUMPY magic; save it with numpy.save)".into(),
        ));
    }
    let (header_len, header_start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(err(format!("unsupported .npy format version {v}"))),
    };
    let data_start = header_start + header_len;
    let header = bytes
        .get(header_start..data_start)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| err("truncated or unreadable .npy header".into()))?;
    let descr = dict_value(header, "descr")
        .and_then(|v| v.strip_prefix('\'').and_then(|v| v.split('\'').next()))
        .ok_or_else(|| err(format!("no descr in the .npy header {header:?}")))?;
    if dict_value(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(err(
            "the array is in Fortran order; save numpy.ascontiguousarray(a) instead".into(),
        ));
    }
    let shape = dict_value(header, "shape")
        .and_then(parse_shape)
        .ok_or_else(|| err(format!("no readable shape in the .npy header {header:?}")))?;
    let dtype = Dtype::parse(descr).ok_or_else(|| {
        err(format!(
            "dtype '{descr}' is not supported (float32/64, int8-64, uint8-64 or bool, little-endian)"
        ))
    })?;
    let data = &bytes[data_start..];
    // Checked: a header may claim any shape, however large.
    let needed = shape
        .iter()
        .try_fold(dtype.size(), |n, &d| n.checked_mul(d))
        .ok_or_else(|| err(format!("shape {shape:?} is too large")))?;
    if data.len() != needed {
        return Err(err(format!(
            "shape {shape:?} of '{descr}' needs {needed} data bytes, the file has {}",
            data.len()
        )));
    }
    let values = data
        .chunks_exact(dtype.size())
        .map(|b| dtype.read(b))
        .collect();
    Ok(NpyArray { shape, values })
}

/// Writes a 2-D little-endian float32 `.npy` file (version 1).
pub fn write_f32_2d(values: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    assert_eq!(values.len(), rows * cols, "values must be rows x cols");
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Pad with spaces so the data starts on a 64-byte boundary, ending in '\n'.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + values.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// The text after `'key':` in the header dict.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))?;
    let rest = header[at + key.len() + 2..].trim_start();
    Some(rest.strip_prefix(':')?.trim_start())
}

/// `(3, 4), ...` -> [3, 4]; `(), ...` -> [] (a scalar).
fn parse_shape(text: &str) -> Option<Vec<usize>> {
    let inner = text.strip_prefix('(')?.split(')').next()?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.trim_end_matches('L').parse().ok())
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Dtype {
    F4,
    F8,
    I(usize),
    U(usize),
    Bool,
}

impl Dtype {
    fn parse(descr: &str) -> Option<Dtype> {
        let (order, kind) = descr.split_at_checked(1)?;
        let single_byte = matches!(kind, "i1" | "u1" | "b1");
        if !(order == "<"
            || (order == "|" && single_byte)
            || (order == "=" && cfg!(target_endian = "little")))
        {
            return None;
        }
        Some(match kind {
            "f4" => Dtype::F4,
            "f8" => Dtype::F8,
            "b1" => Dtype::Bool,
            _ => {
                let size: usize = kind.get(1..)?.parse().ok()?;
                if ![1, 2, 4, 8].contains(&size) {
                    return None;
                }
                match &kind[..1] {
                    "i" => Dtype::I(size),
                    "u" => Dtype::U(size),
                    _ => return None,
                }
            }
        })
    }

    fn size(self) -> usize {
        match self {
            Dtype::F4 => 4,
            Dtype::F8 => 8,
            Dtype::I(n) | Dtype::U(n) => n,
            Dtype::Bool => 1,
        }
    }

    fn read(self, b: &[u8]) -> f32 {
        let mut wide = [0u8; 8];
        wide[..b.len()].copy_from_slice(b);
        match self {
            Dtype::F4 => f32::from_le_bytes(b.try_into().expect("4 bytes")),
            Dtype::F8 => f64::from_le_bytes(wide) as f32,
            Dtype::Bool => f32::from(b[0] != 0),
            Dtype::U(_) => u64::from_le_bytes(wide) as f32,
            Dtype::I(n) => {
                // Sign-extend from n bytes.
                let shift = 64 - 8 * n as u32;
                ((i64::from_le_bytes(wide) << shift) >> shift) as f32
            }
        }
    }
}

/// `.npy` files of any dtype and shape for tests, header padded as numpy pads it.
#[cfg(test)]
pub(crate) mod testing {
    pub fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        npy_with_header(dict, data)
    }

    pub fn npy_with_header(mut header: String, data: &[u8]) -> Vec<u8> {
        let unpadded = 10 + header.len() + 1;
        header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    pub fn f32_le(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{npy, npy_with_header};
    use super::*;

    #[test]
    fn reads_each_dtype() {
        let a = read("x", &npy("|u1", "(2, 3)", &[0, 1, 2, 3, 4, 255])).unwrap();
        assert_eq!(a.shape, [2, 3]);
        assert_eq!(a.values, [0.0, 1.0, 2.0, 3.0, 4.0, 255.0]);
        let a = read("x", &npy("<i2", "(2,)", &[0xff, 0xff, 0x02, 0x01])).unwrap();
        assert_eq!(a.values, [-1.0, 258.0]);
        let bytes: Vec<u8> = [-3i64, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            read("x", &npy("<i8", "(2,)", &bytes)).unwrap().values,
            [-3.0, 7.0]
        );
        let bytes: Vec<u8> = [0.5f64, -2.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            read("x", &npy("<f8", "(1, 2)", &bytes)).unwrap().values,
            [0.5, -2.25]
        );
        assert_eq!(
            read("x", &npy("|b1", "(3,)", &[1, 0, 1])).unwrap().values,
            [1.0, 0.0, 1.0]
        );
    }

    #[test]
    fn round_trips_what_it_writes() {
        let values = [1.5f32, -2.0, 3.25, 0.0, 7.0, 8.5];
        let bytes = write_f32_2d(&values, 3, 2);
        assert_eq!(
            (bytes.len() - values.len() * 4) % 64,
            0,
            "data is 64-byte aligned"
        );
        let a = read("x", &bytes).unwrap();
        assert_eq!(a.shape, [3, 2]);
        assert_eq!(a.values, values);
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        let e = |bytes: &[u8]| read("arrays[\"x\"]", bytes).unwrap_err().to_string();
        assert!(e(b"a,b\n1,2\n").contains("not a .npy file"));
        assert!(e(&npy(">f4", "(1,)", &[0; 4])).contains("dtype '>f4' is not supported"));
        assert!(e(&npy("<c8", "(1,)", &[0; 8])).contains("dtype '<c8'"));
        assert!(e(&npy("<f4", "(2, 2)", &[0; 12])).contains("needs 16 data bytes, the file has 12"));
        let fortran = "{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }";
        assert!(e(&npy_with_header(fortran.into(), &[0; 4])).contains("Fortran order"));
        assert!(e(&npy("<f4", "(1,)", &[0; 4])[..20]).starts_with("arrays[\"x\"]: truncated"));
    }

    /// Found by `cargo fuzz run npy`: an empty or non-ASCII descr panicked.
    #[test]
    fn odd_descrs_are_errors() {
        for descr in ["", "é4", "<"] {
            let e = read("x", &npy(descr, "(1,)", &[0; 4])).unwrap_err();
            assert!(e.message.contains("is not supported"), "{descr:?}: {e}");
        }
    }

    /// A header may claim any shape: a product that overflows is an error, not
    /// a panic, and nothing is allocated for it.
    #[test]
    fn huge_shapes_are_errors() {
        let shape = format!("({}, {})", u64::MAX, u64::MAX);
        let e = read("x", &npy("<f4", &shape, &[0; 4])).unwrap_err();
        assert!(e.message.contains("is too large"), "{e}");
        let shape = format!("({}, 4)", usize::MAX / 8);
        let e = read("x", &npy("<f8", &shape, &[0; 8])).unwrap_err();
        assert!(e.message.contains("is too large"), "{e}");
    }
}
