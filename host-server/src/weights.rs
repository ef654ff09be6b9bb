//! Weights out and in: a model's parameters as NumPy's `.npz` or as
//! `.safetensors`, for `host-server export` and `--initial-model`.
//!
//! Both hold the tensors of Keras' `get_weights()`, in its order and shapes
//! (a kernel then its bias, layer by layer; convolution kernels HWIO): an
//! `.npz` as `arr_0, arr_1, ...` as `numpy.savez` names them, so that
//! `model.set_weights([f[k] for k in f.files])` loads it into the Keras model
//! the spec describes; a `.safetensors` file (through the `safetensors` crate)
//! as `layer<i>.kernel` and `layer<i>.bias`, `i` the layer's index in the spec.
//! Reading checks every tensor's count, name and shape against the model
//! before a value is taken, and bounds what it reads by what the model holds.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, bail};
use fedcore::model::ModelSpec;
use flower_bridge::tensors::{TensorSlot, decode, encode, slots};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// A weights file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// NumPy's `.npz` (`numpy.savez`): `arr_0, arr_1, ...` in `get_weights()` order.
    Npz,
    /// Hugging Face's `.safetensors`: `layer<i>.kernel`, `layer<i>.bias`.
    Safetensors,
}

impl Format {
    /// The format a file's extension names.
    pub fn of(path: &Path) -> anyhow::Result<Format> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("npz") => Ok(Format::Npz),
            Some("safetensors") => Ok(Format::Safetensors),
            _ => bail!(
                "{}: name a weights file .npz or .safetensors",
                path.display()
            ),
        }
    }
}

/// The safetensors name of a tensor: `layer<i>.kernel` or `layer<i>.bias`.
fn name(slot: &TensorSlot) -> String {
    format!("layer{}.{}", slot.layer, slot.part)
}

/// Writes `params` of `spec` to `path` in `format`.
pub fn export(spec: &ModelSpec, params: &[f32], format: Format, path: &Path) -> anyhow::Result<()> {
    let bytes = match format {
        Format::Npz => npz(spec, params)?,
        Format::Safetensors => {
            let slots = slots(spec);
            let data: Vec<Vec<u8>> = slots
                .iter()
                .map(|s| {
                    params[s.offset..s.offset + s.len()]
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect()
                })
                .collect();
            let views = slots
                .iter()
                .zip(&data)
                .map(|(s, d)| Ok((name(s), TensorView::new(Dtype::F32, s.shape.clone(), d)?)))
                .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
            safetensors::serialize(views, None)?
        }
    };
    fedhost::output::write_atomic(path, &bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The `.npz` bytes: one stored `.npy` entry a tensor.
fn npz(spec: &ModelSpec, params: &[f32]) -> anyhow::Result<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (i, tensor) in encode(spec, params).iter().enumerate() {
        zip.start_file(format!("arr_{i}.npy"), stored)?;
        zip.write_all(tensor)?;
    }
    Ok(zip.finish()?.into_inner())
}

/// Reads the parameters of `spec` from the weights file at `path` (its
/// format by its extension), every tensor checked against the model.
pub fn import(spec: &ModelSpec, path: &Path) -> anyhow::Result<Vec<f32>> {
    let what = || format!("{} (for model {spec})", path.display());
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut params = vec![0.0f32; spec.param_count()];
    match Format::of(path)? {
        Format::Npz => {
            let tensors = npz_entries(&bytes, spec).with_context(what)?;
            let views: Vec<&[u8]> = tensors.iter().map(Vec::as_slice).collect();
            decode(spec, &views, &mut params).with_context(what)?;
        }
        Format::Safetensors => {
            let file = SafeTensors::deserialize(&bytes).with_context(what)?;
            let slots = slots(spec);
            if file.len() != slots.len() {
                bail!(
                    "{}: {} tensors, but model {spec} has {}",
                    what(),
                    file.len(),
                    slots.len()
                );
            }
            for slot in &slots {
                let view = file.tensor(&name(slot)).with_context(|| {
                    format!("{}: no tensor {} ({})", what(), name(slot), slot.what)
                })?;
                if view.dtype() != Dtype::F32 || view.shape() != slot.shape.as_slice() {
                    bail!(
                        "{}: {} is {:?} {:?}, but the model's {} is F32 {:?}",
                        what(),
                        name(slot),
                        view.dtype(),
                        view.shape(),
                        slot.what,
                        slot.shape
                    );
                }
                let out = &mut params[slot.offset..slot.offset + slot.len()];
                for (v, b) in out.iter_mut().zip(view.data().chunks_exact(4)) {
                    *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
    }
    if let Some(i) = params.iter().position(|v| !v.is_finite()) {
        bail!("{}: parameter {i} is not a finite number", what());
    }
    Ok(params)
}

/// The `.npy` entries of an `.npz`, in the archive's order, each read only
/// once its declared size is within what the model's tensors can take.
fn npz_entries(bytes: &[u8], spec: &ModelSpec) -> anyhow::Result<Vec<Vec<u8>>> {
    // The largest tensor, as float64 (NumPy's default) with a generous header.
    let most = slots(spec).iter().map(TensorSlot::len).max().unwrap_or(0) as u64 * 8 + 4096;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .context("not an .npz (a zip archive of .npy files)")?;
    let mut tensors = Vec::new();
    for i in 0..archive.len() {
        let entry = archive.by_index(i)?;
        let name = entry.name().to_string();
        if !name.ends_with(".npy") {
            bail!("{name} is not an .npy array");
        }
        if entry.size() > most {
            bail!(
                "{name} holds {} bytes, more than any tensor of the model",
                entry.size()
            );
        }
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry.take(most).read_to_end(&mut data)?;
        tensors.push(data);
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> (ModelSpec, Vec<f32>) {
        let spec: ModelSpec = "8x8x1 conv:3x3 relu maxpool:2 flatten dense:4"
            .parse()
            .unwrap();
        let params = (0..spec.param_count())
            .map(|i| i as f32 * 0.01 - 1.0)
            .collect();
        (spec, params)
    }

    #[test]
    fn weights_go_out_and_come_back_in_both_formats() {
        let dir = std::env::temp_dir().join(format!("weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (spec, params) = model();
        for (file, format) in [
            ("w.npz", Format::Npz),
            ("w.safetensors", Format::Safetensors),
        ] {
            let path = dir.join(file);
            export(&spec, &params, format, &path).unwrap();
            assert_eq!(import(&spec, &path).unwrap(), params, "{file}");
            // Another model's weights are refused, naming the tensor.
            let other: ModelSpec = "8x8x1 conv:2x3 relu maxpool:2 flatten dense:4"
                .parse()
                .unwrap();
            let err = format!("{:#}", import(&other, &path).unwrap_err());
            assert!(err.contains("kernel"), "{file}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_npz_holds_keras_get_weights_in_order() {
        let (spec, params) = model();
        let bytes = npz(&spec, &params).unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let names: Vec<String> = (0..archive.len())
            .map(|i| archive.by_index(i).unwrap().name().to_string())
            .collect();
        assert_eq!(names, ["arr_0.npy", "arr_1.npy", "arr_2.npy", "arr_3.npy"]);
        let mut first = Vec::new();
        archive
            .by_index(0)
            .unwrap()
            .read_to_end(&mut first)
            .unwrap();
        let npy = flower_bridge::npy::Npy::parse(&first).unwrap();
        assert_eq!(npy.shape(), [3, 3, 1, 3]);
    }

    #[test]
    fn a_keras_written_npz_loads() {
        // numpy.savez of a Keras MLP's get_weights() (fedhost's fixtures).
        let spec = fedhost::keras::load(&fixture("mlp.keras3.json")).unwrap();
        let params = import(&spec, &fixture("mlp.keras3.weights.npz")).unwrap();
        assert_eq!(params.len(), spec.param_count());
        assert!(params.iter().any(|&v| v != 0.0));
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fedhost/tests/data/keras")
            .join(name)
    }

    #[test]
    fn damaged_or_foreign_files_are_one_clear_error() {
        let dir = std::env::temp_dir().join(format!("weights-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (spec, _) = model();
        for (file, bytes, says) in [
            ("junk.npz", &b"not a zip"[..], "not an .npz"),
            (
                "junk.safetensors",
                &b"\x08\x00\x00\x00\x00\x00\x00\x00{}"[..],
                "",
            ),
            ("w.bin", &b""[..], "name a weights file"),
        ] {
            let path = dir.join(file);
            std::fs::write(&path, bytes).unwrap();
            let err = format!("{:#}", import(&spec, &path).unwrap_err());
            assert!(err.contains(says), "{file}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
