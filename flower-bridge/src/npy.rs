//! NumPy's `.npy` format (versions 1.0 to 3.0): the bytes Flower sends each
//! tensor as (`numpy.save(allow_pickle=False)`).
//!
//! [`Npy::parse`] reads the header of untrusted bytes without allocating for
//! the payload; [`Npy::read_into`] then converts the values straight into the
//! caller's slice (the model's flat buffer), once the caller has checked the
//! shape. Accepted: float32 and float64 (converted; NumPy's default dtype),
//! either byte order, C order. Refused with a message naming what came:
//! anything else, including pickled objects and Fortran order. Written by hand
//! rather than with an npy crate because decoding into a borrowed destination
//! after a shape check, with nothing allocated by a peer's header, is the part
//! that matters here and the format is a dozen lines of header.

use thiserror::Error;

const MAGIC: &[u8] = b"\x93NUMPY";
/// Longest header accepted (NumPy writes well under 200 bytes for any tensor).
pub const MAX_HEADER: usize = 4096;
/// Most dimensions accepted.
pub const MAX_DIMS: usize = 32;

/// Why bytes are not a tensor we can take.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum NpyError {
    /// The bytes do not start with NumPy's magic string.
    #[error("not a .npy array (no \\x93NUMPY magic)")]
    NotNpy,
    /// A format version this reader does not know.
    #[error(".npy format version {0}.{1} is not supported (1.0 to 3.0 are)")]
    Version(u8, u8),
    /// The header is cut short or longer than [`MAX_HEADER`].
    #[error(".npy header of {0} bytes is truncated or longer than {MAX_HEADER}")]
    HeaderLength(usize),
    /// The header is not the dict NumPy writes.
    #[error(".npy header is not a NumPy header dict: {0}")]
    Header(&'static str),
    /// A dtype other than float32 or float64.
    #[error(".npy dtype {0:?} is not supported: send float32 (or float64) arrays")]
    Dtype(String),
    /// Column-major data.
    #[error(".npy array is in Fortran order: send C-ordered arrays")]
    FortranOrder,
    /// The payload does not hold the values the shape names.
    #[error(".npy payload is {got} bytes, its shape needs {expected}")]
    Payload {
        /// Bytes the shape needs.
        expected: usize,
        /// Bytes there are.
        got: usize,
    },
}

/// The value types accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32 { little: bool },
    F64 { little: bool },
}

impl Dtype {
    fn parse(descr: &str) -> Result<Self, NpyError> {
        let little = match descr.as_bytes().first() {
            Some(b'<') => true,
            Some(b'>') => false,
            _ => return Err(NpyError::Dtype(descr.into())),
        };
        match &descr[1..] {
            "f4" => Ok(Dtype::F32 { little }),
            "f8" => Ok(Dtype::F64 { little }),
            _ => Err(NpyError::Dtype(descr.into())),
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::F32 { .. } => 4,
            Dtype::F64 { .. } => 8,
        }
    }
}

/// A parsed `.npy` array over borrowed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Npy<'a> {
    shape: Vec<usize>,
    dtype: Dtype,
    data: &'a [u8],
}

impl<'a> Npy<'a> {
    /// Parses the header of `bytes` and checks the payload's length.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, NpyError> {
        let rest = bytes.strip_prefix(MAGIC).ok_or(NpyError::NotNpy)?;
        let (&[major, minor], rest) = rest.split_first_chunk::<2>().ok_or(NpyError::NotNpy)?;
        let (len, rest) = match (major, minor) {
            (1, 0) => {
                let (n, rest) = rest
                    .split_first_chunk::<2>()
                    .ok_or(NpyError::HeaderLength(0))?;
                (usize::from(u16::from_le_bytes(*n)), rest)
            }
            (2 | 3, 0) => {
                let (n, rest) = rest
                    .split_first_chunk::<4>()
                    .ok_or(NpyError::HeaderLength(0))?;
                (u32::from_le_bytes(*n) as usize, rest)
            }
            _ => return Err(NpyError::Version(major, minor)),
        };
        if len > MAX_HEADER || len > rest.len() {
            return Err(NpyError::HeaderLength(len));
        }
        let (header, data) = rest.split_at(len);
        let header = core::str::from_utf8(header).map_err(|_| NpyError::Header("not text"))?;
        let fields = parse_header(header)?;
        let dtype = Dtype::parse(fields.descr)?;
        if fields.fortran_order {
            return Err(NpyError::FortranOrder);
        }
        let expected = fields
            .shape
            .iter()
            .try_fold(dtype.size(), |n, &d| n.checked_mul(d))
            .ok_or(NpyError::Header("shape overflows"))?;
        if data.len() != expected {
            return Err(NpyError::Payload {
                expected,
                got: data.len(),
            });
        }
        Ok(Npy {
            shape: fields.shape,
            dtype,
            data,
        })
    }

    /// The array's dimensions (empty for a scalar).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// True when the array holds no values.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Converts the values into `out`, which must be exactly [`Npy::len`] long
    /// (the caller checks the shape first); returns false, writing nothing,
    /// when it is not.
    pub fn read_into(&self, out: &mut [f32]) -> bool {
        if out.len() != self.len() {
            return false;
        }
        match self.dtype {
            Dtype::F32 { little } => {
                for (o, b) in out.iter_mut().zip(self.data.chunks_exact(4)) {
                    let b = [b[0], b[1], b[2], b[3]];
                    *o = if little {
                        f32::from_le_bytes(b)
                    } else {
                        f32::from_be_bytes(b)
                    };
                }
            }
            Dtype::F64 { little } => {
                for (o, b) in out.iter_mut().zip(self.data.chunks_exact(8)) {
                    let b = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
                    let v = if little {
                        f64::from_le_bytes(b)
                    } else {
                        f64::from_be_bytes(b)
                    };
                    *o = v as f32;
                }
            }
        }
        true
    }
}

/// Writes `values` with `shape` as a float32, C-order `.npy` (version 1.0,
/// header padded to 64 bytes with a final newline, as NumPy writes it).
pub fn write_f32(shape: &[usize], values: &[f32], out: &mut Vec<u8>) {
    let dims = match shape {
        [] => String::new(),
        [n] => format!("{n},"),
        _ => shape
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    // Magic (6), version (2), length (2), header, newline: a multiple of 64.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.extend(std::iter::repeat_n(
        ' ',
        unpadded.next_multiple_of(64) - unpadded,
    ));
    header.push('\n');
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    // At most MAX_DIMS dimensions of 20 digits: always within a u16.
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.reserve(4 * values.len());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// The three keys of a NumPy header.
struct Fields<'h> {
    descr: &'h str,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses NumPy's header, a Python dict literal such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 3, 1, 32), }`.
fn parse_header(header: &str) -> Result<Fields<'_>, NpyError> {
    let body = header
        .trim()
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or(NpyError::Header("not a dict"))?;
    let (mut descr, mut fortran_order, mut shape) = (None, None, None);
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let (key, after) = quoted(rest).ok_or(NpyError::Header("a key is not a string"))?;
        let after = after
            .trim_start()
            .strip_prefix(':')
            .ok_or(NpyError::Header("a key has no value"))?
            .trim_start();
        rest = match key {
            "descr" => {
                let (value, after) =
                    quoted(after).ok_or(NpyError::Header("descr is not a string"))?;
                descr = Some(value);
                after
            }
            "fortran_order" => {
                let (value, after) = if let Some(a) = after.strip_prefix("True") {
                    (true, a)
                } else if let Some(a) = after.strip_prefix("False") {
                    (false, a)
                } else {
                    return Err(NpyError::Header("fortran_order is not True or False"));
                };
                fortran_order = Some(value);
                after
            }
            "shape" => {
                let (value, after) = tuple(after)?;
                shape = Some(value);
                after
            }
            _ => return Err(NpyError::Header("an unknown key")),
        };
        rest = rest.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(Fields {
        descr: descr.ok_or(NpyError::Header("no descr"))?,
        fortran_order: fortran_order.ok_or(NpyError::Header("no fortran_order"))?,
        shape: shape.ok_or(NpyError::Header("no shape"))?,
    })
}

/// A string in single or double quotes at the start of `s`, and what follows.
fn quoted(s: &str) -> Option<(&str, &str)> {
    let quote = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let end = s[1..].find(quote)? + 1;
    Some((&s[1..end], &s[end + 1..]))
}

/// A tuple of non-negative integers such as `(3, 3, 1, 32)`, `(32,)` or `()`.
fn tuple(s: &str) -> Result<(Vec<usize>, &str), NpyError> {
    let bad = NpyError::Header("shape is not a tuple of integers");
    let s = s.strip_prefix('(').ok_or(bad.clone())?;
    let end = s.find(')').ok_or(bad.clone())?;
    let mut dims = Vec::new();
    for part in s[..end].split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if dims.len() == MAX_DIMS {
            return Err(NpyError::Header("more than 32 dimensions"));
        }
        dims.push(part.parse().map_err(|_| bad.clone())?);
    }
    Ok((dims, &s[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `numpy.save(f, numpy.arange(6, dtype='<f4').reshape(2, 3))` writes
    /// (NumPy 1.26/2.x), byte for byte.
    fn numpy_2x3() -> Vec<u8> {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let mut bytes = b"\x93NUMPY\x01\x00\x76\x00".to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(b' ', 118 - header.len() - 1));
        bytes.push(b'\n');
        for v in 0..6 {
            bytes.extend_from_slice(&(v as f32).to_le_bytes());
        }
        bytes
    }

    #[test]
    fn numpys_bytes_parse_and_ours_are_the_same_bytes() {
        let bytes = numpy_2x3();
        let npy = Npy::parse(&bytes).unwrap();
        assert_eq!(npy.shape(), &[2, 3]);
        let mut out = [0.0f32; 6];
        assert!(npy.read_into(&mut out));
        assert_eq!(out, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let mut ours = Vec::new();
        write_f32(&[2, 3], &out, &mut ours);
        assert_eq!(ours, bytes);
        assert_eq!((ours.len() - 24) % 64, 0, "header aligned to 64 bytes");
    }

    #[test]
    fn one_dimensional_and_scalar_shapes_round_trip() {
        for shape in [&[5usize][..], &[], &[3, 3, 1, 32]] {
            let n = shape.iter().product::<usize>();
            let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 1.0).collect();
            let mut bytes = Vec::new();
            write_f32(shape, &values, &mut bytes);
            let npy = Npy::parse(&bytes).unwrap();
            assert_eq!(npy.shape(), shape);
            let mut out = vec![0.0; n];
            assert!(npy.read_into(&mut out));
            assert_eq!(out, values);
        }
    }

    #[test]
    fn float64_and_big_endian_arrays_are_converted() {
        let header = "{'descr': '>f8', 'fortran_order': False, 'shape': (2,), }\n";
        let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&1.5f64.to_be_bytes());
        bytes.extend_from_slice(&(-2.25f64).to_be_bytes());
        let mut out = [0.0f32; 2];
        assert!(Npy::parse(&bytes).unwrap().read_into(&mut out));
        assert_eq!(out, [1.5, -2.25]);
    }

    #[test]
    fn what_is_not_a_float_array_is_refused_by_name() {
        let with = |header: &str, payload: usize| {
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend_from_slice(&(header.len() as u16).to_le_bytes());
            b.extend_from_slice(header.as_bytes());
            b.extend(std::iter::repeat_n(0u8, payload));
            Npy::parse(&b).map(|_| ())
        };
        let f = |descr: &str, order: &str, shape: &str| {
            format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}")
        };
        assert_eq!(
            with(&f("|O", "False", "(2,)"), 16),
            Err(NpyError::Dtype("|O".into()))
        );
        assert_eq!(
            with(&f("<i8", "False", "(2,)"), 16),
            Err(NpyError::Dtype("<i8".into()))
        );
        assert_eq!(
            with(&f("<f4", "True", "(2, 2)"), 16),
            Err(NpyError::FortranOrder)
        );
        assert_eq!(
            with(&f("<f4", "False", "(2, 2)"), 15),
            Err(NpyError::Payload {
                expected: 16,
                got: 15
            })
        );
        assert!(matches!(
            with(&f("<f4", "False", "(2, x)"), 8),
            Err(NpyError::Header(_))
        ));
        assert!(matches!(with("[1, 2]", 0), Err(NpyError::Header(_))));
        assert!(matches!(
            with(
                &f("<f4", "False", "(99999999999, 99999999999, 99999999999)"),
                0
            ),
            Err(NpyError::Header("shape overflows"))
        ));
        assert_eq!(Npy::parse(b"PK\x03\x04 not numpy"), Err(NpyError::NotNpy));
        assert_eq!(
            Npy::parse(b"\x93NUMPY\x07\x00"),
            Err(NpyError::Version(7, 0))
        );
        assert_eq!(
            Npy::parse(b"\x93NUMPY\x01\x00\xff\xff{"),
            Err(NpyError::HeaderLength(65535))
        );
    }

    #[test]
    fn a_destination_of_another_length_is_left_alone() {
        let bytes = numpy_2x3();
        let mut out = [7.0f32; 5];
        assert!(!Npy::parse(&bytes).unwrap().read_into(&mut out));
        assert_eq!(out, [7.0; 5]);
    }

    proptest::proptest! {
        /// Arbitrary bytes after the magic never panic the parser, and what
        /// parses has a payload exactly as long as its shape says.
        #[test]
        fn any_bytes_parse_or_are_refused(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            bytes.extend_from_slice(&tail);
            if let Ok(npy) = Npy::parse(&bytes) {
                let mut out = vec![0.0; npy.len()];
                proptest::prop_assert!(npy.read_into(&mut out));
            }
        }
    }
}
