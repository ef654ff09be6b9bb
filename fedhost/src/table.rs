//! Data sets from files people have, beside IDX folders: a `.npz` in the
//! layout of Keras' `mnist.npz`, or a `.csv` of features.
//!
//! - `.npz`: arrays `x_train`, `y_train`, `x_test`, `y_test`; `x` of `uint8`
//!   (pixels, scaled to `[0, 1]` when trained on, as IDX pixels are) or
//!   `float32`/`float64` (taken as they are), shaped `N x H x W`,
//!   `N x H x W x C` or `N x F`; `y` of integers 0 to 255. Read with `npyz`
//!   from the zip entries.
//! - `.csv`: a header row, then one row a sample of numbers; the label column
//!   is named by `--label-column` (default: the last), every other column is a
//!   float feature. A fifth of the rows, drawn with a fixed seed, is the test
//!   split (every participant draws the same fifth).
//!
//! Every problem is one line naming the file and what is wrong (a missing
//! array, a text cell with its row and column, a label that is no class).
//! What is read is bounded by the file: nothing is sized by a header alone.

use std::io::Read;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;

/// Why a data file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {what}", path.display())]
pub struct TableError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub what: String,
}

/// A sample store: bytes or floats, `width` values a sample.
#[derive(Debug, Clone, PartialEq)]
pub enum Store {
    /// Pixels, 0 to 255.
    Bytes(Vec<u8>),
    /// Features.
    Floats(Vec<f32>),
}

/// A data set read whole: training samples first, then test samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Values a sample.
    pub width: usize,
    /// Every sample's values, training samples first.
    pub values: Store,
    /// Every sample's label, in the same order.
    pub labels: Vec<u8>,
    /// How many of them are training samples.
    pub train: usize,
}

/// Whether `path` names a data file this module reads (rather than an IDX folder).
pub fn is_table(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("npz" | "csv")
    )
}

/// Reads a `.npz` or `.csv` data file; `label_column` names a CSV's label column.
pub fn load(path: &Path, label_column: Option<&str>) -> Result<Table, TableError> {
    let fail = |what: String| TableError {
        path: path.to_path_buf(),
        what,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("npz") => npz(&bytes).map_err(fail),
        Some("csv") => csv(&bytes, label_column).map_err(fail),
        _ => Err(fail(
            "not a data file: name a folder of IDX files, a .npz or a .csv".into(),
        )),
    }
}

/// An array read from an `.npz` entry: its shape and values.
enum Array {
    Bytes(Vec<u8>),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
}

fn read_array(
    archive: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    name: &str,
) -> Result<(Vec<usize>, Array), String> {
    let mut entry = archive
        .by_name(&format!("{name}.npy"))
        .map_err(|_| format!("no array '{name}' (a .npz as keras.datasets' mnist.npz holds x_train, y_train, x_test, y_test)"))?;
    // The entry's size bounds what is read, whatever its header says.
    let mut raw = Vec::new();
    (&mut entry)
        .take(u64::from(u32::MAX))
        .read_to_end(&mut raw)
        .map_err(|e| format!("{name}: {e}"))?;
    let npy = npyz::NpyFile::new(raw.as_slice()).map_err(|e| format!("{name}: {e}"))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let npyz::DType::Plain(ty) = npy.dtype() else {
        return Err(format!("{name}: a structured array, not numbers"));
    };
    let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let fits = count
        .and_then(|n| n.checked_mul(ty.size_field() as usize))
        .is_some_and(|bytes| bytes <= raw.len());
    if !fits {
        return Err(format!(
            "{name}: shape {shape:?} needs more bytes than the file holds"
        ));
    }
    let bad = |e: std::io::Error| format!("{name}: {e}");
    use npyz::TypeChar::{Float, Int, Uint};
    let values = match (ty.type_char(), ty.size_field()) {
        (Uint, 1) => Array::Bytes(npy.into_vec::<u8>().map_err(bad)?),
        (Float, 4) => Array::Floats(npy.into_vec::<f32>().map_err(bad)?),
        (Float, 8) => Array::Floats(widened(npy, |v: f64| v as f32).map_err(bad)?),
        (Int, 1) => Array::Ints(widened(npy, <i64 as From<i8>>::from).map_err(bad)?),
        (Int, 2) => Array::Ints(widened(npy, <i64 as From<i16>>::from).map_err(bad)?),
        (Int, 4) => Array::Ints(widened(npy, <i64 as From<i32>>::from).map_err(bad)?),
        (Int, 8) => Array::Ints(npy.into_vec::<i64>().map_err(bad)?),
        (Uint, 2) => Array::Ints(widened(npy, <i64 as From<u16>>::from).map_err(bad)?),
        (Uint, 4) => Array::Ints(widened(npy, <i64 as From<u32>>::from).map_err(bad)?),
        _ => {
            return Err(format!(
                "{name}: dtype {ty} is not uint8, an integer or a float"
            ));
        }
    };
    Ok((shape, values))
}

/// The values of `npy`, read as `T` (its dtype) and converted by `widen`.
fn widened<T: npyz::Deserialize, U>(
    npy: npyz::NpyFile<&[u8]>,
    widen: impl Fn(T) -> U,
) -> std::io::Result<Vec<U>> {
    Ok(npy.into_vec::<T>()?.into_iter().map(widen).collect())
}

/// Labels from an integer (or byte) array, each a class 0 to 255.
fn labels(name: &str, array: Array) -> Result<Vec<u8>, String> {
    let ints: Vec<i64> = match array {
        Array::Bytes(b) => return Ok(b),
        Array::Ints(i) => i,
        Array::Floats(_) => return Err(format!("{name}: labels must be integers, not floats")),
    };
    ints.iter()
        .enumerate()
        .map(|(i, &l)| {
            u8::try_from(l)
                .map_err(|_| format!("{name}[{i}] = {l}: labels must be classes 0 to 255"))
        })
        .collect()
}

fn npz(bytes: &[u8]) -> Result<Table, String> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not an .npz (a zip archive of .npy arrays): {e}"))?;
    let mut split = |x: &str, y: &str| -> Result<(usize, usize, Array, Vec<u8>), String> {
        let (shape, values) = read_array(&mut archive, x)?;
        let (y_shape, y_values) = read_array(&mut archive, y)?;
        let n = shape.first().copied().unwrap_or(0);
        if shape.len() < 2 {
            return Err(format!(
                "{x} has shape {shape:?}: samples are rows (N x features, or N x H x W[ x C])"
            ));
        }
        if y_shape.iter().product::<usize>() != n {
            return Err(format!(
                "{y} holds {} labels but {x} holds {n} samples",
                y_shape.iter().product::<usize>()
            ));
        }
        let width = shape[1..].iter().product();
        Ok((n, width, values, labels(y, y_values)?))
    };
    let (train, width, x_train, mut all_labels) = split("x_train", "y_train")?;
    let (_, test_width, x_test, test_labels) = split("x_test", "y_test")?;
    if test_width != width {
        return Err(format!(
            "x_test's samples have {test_width} values but x_train's {width}"
        ));
    }
    all_labels.extend(test_labels);
    let values = match (x_train, x_test) {
        (Array::Bytes(mut a), Array::Bytes(b)) => {
            a.extend(b);
            Store::Bytes(a)
        }
        (Array::Floats(mut a), Array::Floats(b)) => {
            a.extend(b);
            Store::Floats(a)
        }
        _ => return Err("x_train and x_test must both be uint8 or both floats".into()),
    };
    Ok(Table {
        width,
        values,
        labels: all_labels,
        train,
    })
}

fn csv(bytes: &[u8], label_column: Option<&str>) -> Result<Table, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| format!("no header row: {e}"))?
        .iter()
        .map(str::to_string)
        .collect();
    if header.len() < 2 {
        return Err("a header of at least two columns (features, then a label) is needed".into());
    }
    let label = match label_column {
        Some(name) => header.iter().position(|h| h == name).ok_or_else(|| {
            format!(
                "no column '{name}' (--label-column); the header has {}",
                header.join(", ")
            )
        })?,
        None => header.len() - 1,
    };
    let (mut features, mut labels) = (Vec::new(), Vec::new());
    for (row, record) in reader.records().enumerate() {
        // Rows counted as a spreadsheet shows them: the header is row 1.
        let row = row + 2;
        let record = record.map_err(|e| format!("row {row}: {e}"))?;
        if record.len() != header.len() {
            return Err(format!(
                "row {row} has {} cells, the header {}",
                record.len(),
                header.len()
            ));
        }
        for (column, cell) in record.iter().enumerate() {
            if column == label {
                let class = cell.parse::<u8>().map_err(|_| {
                    format!(
                        "row {row}, column '{}': label '{cell}' is not a class 0 to 255",
                        header[column]
                    )
                })?;
                labels.push(class);
            } else {
                let value = cell
                    .parse::<f32>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| {
                        format!(
                            "row {row}, column '{}': '{cell}' is not a number",
                            header[column]
                        )
                    })?;
                features.push(value);
            }
        }
    }
    if labels.is_empty() {
        return Err("no rows after the header".into());
    }
    let width = header.len() - 1;
    // A fifth of the rows for testing, the same fifth for every participant.
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(0));
    let train = labels.len() - labels.len() / 5;
    let values = order
        .iter()
        .flat_map(|&i| features[i * width..(i + 1) * width].iter().copied())
        .collect();
    Ok(Table {
        width,
        values: Store::Floats(values),
        labels: order.iter().map(|&i| labels[i]).collect(),
        train,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_csv_reads_features_and_labels_and_keeps_a_fifth_for_testing() {
        let mut text = String::from("a,b,class\n");
        for i in 0..10 {
            text.push_str(&format!("{i}.5, -{i}, {}\n", i % 3));
        }
        let table = load(&temp("ok.csv", text.as_bytes()), None).unwrap();
        assert_eq!((table.width, table.train, table.labels.len()), (2, 8, 10));
        let Store::Floats(values) = &table.values else {
            panic!("floats expected");
        };
        // Every row is there, its features beside its label.
        for (row, &label) in values.chunks_exact(2).zip(&table.labels) {
            let i = (row[0] - 0.5) as i32;
            assert_eq!((row[1], i32::from(label)), (-(i as f32), i % 3));
        }
        let named = load(
            &temp("named.csv", b"class,x\n1,0.5\n0,0.25\n"),
            Some("class"),
        )
        .unwrap();
        assert_eq!(named.width, 1);
    }

    #[test]
    fn bad_files_are_one_line_naming_what_is_wrong() {
        for (name, bytes, label, says) in [
            (
                "text.csv",
                &b"a,label\n1,0\nx,1\n"[..],
                None,
                "row 3, column 'a': 'x' is not a number",
            ),
            (
                "class.csv",
                b"a,label\n1,300\n",
                None,
                "label '300' is not a class 0 to 255",
            ),
            ("ragged.csv", b"a,b,label\n1,2,0\n1,0\n", None, "row 3"),
            ("column.csv", b"a,label\n1,0\n", Some("y"), "no column 'y'"),
            ("empty.csv", b"a,label\n", None, "no rows"),
            ("junk.npz", b"not a zip", None, "not an .npz"),
        ] {
            let err = load(&temp(name, bytes), label).unwrap_err().to_string();
            assert!(err.contains(says), "{name}: {err}");
            assert!(err.contains(name), "{name}: names the file: {err}");
            assert!(!err.contains('\n'), "{name}: one line: {err}");
        }
    }

    /// An .npz of the given (name, .npy bytes) entries.
    fn npz_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, bytes) in entries {
            zip.start_file(
                format!("{name}.npy"),
                zip::write::SimpleFileOptions::default(),
            )
            .unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    fn npy<T: npyz::AutoSerialize + Copy>(shape: &[u64], values: &[T]) -> Vec<u8> {
        use npyz::WriterBuilder;
        let mut out = Vec::new();
        let mut w = npyz::WriteOptions::<T>::new()
            .default_dtype()
            .shape(shape)
            .writer(&mut out)
            .begin_nd()
            .unwrap();
        w.extend(values.iter().copied()).unwrap();
        w.finish().unwrap();
        out
    }

    #[test]
    fn an_npz_in_mnist_npz_layout_reads_bytes_or_floats() {
        let bytes = npz_of(&[
            ("x_train", npy(&[3, 2, 2], &[1u8; 12])),
            ("y_train", npy(&[3], &[0i64, 1, 2])),
            ("x_test", npy(&[1, 2, 2], &[9u8; 4])),
            ("y_test", npy(&[1], &[2i64])),
        ]);
        let table = load(&temp("ok.npz", &bytes), None).unwrap();
        assert_eq!(
            (table.width, table.train, table.labels),
            (4, 3, vec![0, 1, 2, 2])
        );
        assert!(matches!(table.values, Store::Bytes(ref b) if b.len() == 16 && b[12] == 9));
        let floats = npz_of(&[
            ("x_train", npy(&[2, 3], &[0.5f64; 6])),
            ("y_train", npy(&[2], &[1u8, 0])),
            ("x_test", npy(&[1, 3], &[0.25f64; 3])),
            ("y_test", npy(&[1], &[1u8])),
        ]);
        let table = load(&temp("floats.npz", &floats), None).unwrap();
        assert!(matches!(table.values, Store::Floats(ref f) if f[6] == 0.25));
        let missing = npz_of(&[
            ("x_train", npy(&[1, 2], &[1u8; 2])),
            ("y_train", npy(&[1], &[0u8])),
            ("x_test", npy(&[1, 2], &[1u8; 2])),
        ]);
        let err = load(&temp("missing.npz", &missing), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing.npz") && err.contains("no array 'y_test'"),
            "{err}"
        );
        let beyond = npz_of(&[
            ("x_train", npy(&[1, 2], &[1u8; 2])),
            ("y_train", npy(&[1], &[256i64])),
            ("x_test", npy(&[1, 2], &[1u8; 2])),
            ("y_test", npy(&[1], &[0i64])),
        ]);
        let err = load(&temp("beyond.npz", &beyond), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("y_train[0] = 256"), "{err}");
    }
}
