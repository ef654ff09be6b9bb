//! Flower's content-addressed objects: how the Fleet API moves a message's content.
//!
//! A Fleet message travels without its content; the content (a RecordDict)
//! is a tree of objects the other side pulls or is asked to push one by one.
//! Each object is `<Type> <child ids, comma-separated> <body length>\0<body>`
//! and is named by the SHA-256 (hex) of exactly those bytes, so identical
//! objects (two zero biases of one shape) are one object. The types:
//!
//! - `Message`: the message's metadata (its id left empty) as protobuf; its
//!   child is the content;
//! - `RecordDict`: JSON `{"name": record id}`;
//! - `ArrayRecord`: JSON `{"name": array id}`, in the model's tensor order;
//! - `Array`: JSON `{dtype, shape, stype, arraychunk_ids}`, the ids indices
//!   into its children; its data, the chunks' bodies joined, is `numpy.save`
//!   bytes (stype `numpy.ndarray`);
//! - `ArrayChunk`: up to [`MAX_CHUNK`] bytes of an array's data;
//! - `ConfigRecord`, `MetricRecord`: protobuf.
//!
//! This module builds the objects of our instructions (the model as an
//! `arrays` record, the round as `config` `server-round`, as current Flower
//! apps expect) and reads a reply's objects back into our buffer and numbers,
//! checking every id, header, length and tensor shape first.

use std::collections::HashMap;

use fedcore::model::ModelSpec;
use prost::Message as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::proto::{
    self, ConfigRecord, ConfigRecordValue, Metadata, MetricRecord, ObjectTree, config_record,
    config_record_value, metric_record_value,
};
use crate::tensors::{self, TensorError};

/// Largest array chunk, as Flower cuts them (5 MiB).
pub const MAX_CHUNK: usize = 5 * 1024 * 1024;

/// What Flower names an array of `numpy.save` bytes.
pub const NUMPY_STYPE: &str = "numpy.ndarray";

/// Why objects cannot be read.
#[derive(Debug, Error, PartialEq)]
pub enum ObjectError {
    /// An object that was never sent.
    #[error("object {0} is missing")]
    Missing(String),
    /// An object whose bytes are not what its id names.
    #[error("object {id}: its content hashes to {actual}")]
    Hash {
        /// The id it came under.
        id: String,
        /// The SHA-256 of what came.
        actual: String,
    },
    /// An object whose header does not parse or does not match its body.
    #[error("object {id}: {problem}")]
    Malformed {
        /// Its id.
        id: String,
        /// What is wrong.
        problem: String,
    },
    /// An object of another type than its place needs.
    #[error("object {id} is a {got}, where a {expected} belongs")]
    Type {
        /// Its id.
        id: String,
        /// The type needed.
        expected: &'static str,
        /// The type it says it is.
        got: String,
    },
    /// A record the reply must have is not there.
    #[error("the reply has no {0:?} record")]
    NoRecord(&'static str),
    /// A metric the reply must have is not there or not a number.
    #[error("the reply's metrics have no {0:?} (a number)")]
    NoMetric(&'static str),
    /// An array that is not `numpy.save` bytes.
    #[error("array {name:?} is of stype {stype:?}; only {NUMPY_STYPE:?} is read")]
    Stype {
        /// Its name in the record.
        name: String,
        /// Its stype.
        stype: String,
    },
    /// Tensors that are not this model's.
    #[error("its arrays are not this model's: {0}")]
    Tensors(#[from] TensorError),
    /// The reply carries an error instead of content.
    #[error("it replied with error {code}: {reason}")]
    Reported {
        /// Flower's error code.
        code: i64,
        /// Its reason.
        reason: String,
    },
}

/// The SHA-256 of `content`, in hex: its object id.
pub fn object_id(content: &[u8]) -> String {
    let digest = Sha256::digest(content);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// An object's bytes: header, divider, body.
pub fn encode(kind: &str, children: &[String], body: &[u8]) -> Vec<u8> {
    let header = format!("{kind} {} {}", children.join(","), body.len());
    let mut content = Vec::with_capacity(header.len() + 1 + body.len());
    content.extend_from_slice(header.as_bytes());
    content.push(0);
    content.extend_from_slice(body);
    content
}

/// An object read back: its type, its children's ids, its body.
#[derive(Debug, PartialEq)]
pub struct Parsed<'a> {
    /// Its type, e.g. `Array`.
    pub kind: &'a str,
    /// Its children's ids, in order.
    pub children: Vec<&'a str>,
    /// Its body.
    pub body: &'a [u8],
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses `content`, the object named `id`, checking the id is its hash and
/// the header its body's.
pub fn parse<'a>(id: &str, content: &'a [u8]) -> Result<Parsed<'a>, ObjectError> {
    let actual = object_id(content);
    if actual != id {
        return Err(ObjectError::Hash {
            id: id.into(),
            actual,
        });
    }
    let malformed = |problem: &str| ObjectError::Malformed {
        id: id.into(),
        problem: problem.into(),
    };
    let split = content
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| malformed("no header"))?;
    let header = std::str::from_utf8(&content[..split])
        .map_err(|_| malformed("a header that is not UTF-8"))?;
    let body = &content[split + 1..];
    let mut parts = header.split(' ');
    let (Some(kind), Some(children), Some(len), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            "a header that is not `<type> <children> <length>`",
        ));
    };
    if len.parse::<usize>().ok() != Some(body.len()) {
        return Err(malformed(&format!(
            "its header says {len} bytes of body, {} came",
            body.len()
        )));
    }
    let children: Vec<&str> = children.split(',').filter(|c| !c.is_empty()).collect();
    if !children.iter().all(|c| is_id(c)) {
        return Err(malformed("a child id that is not a SHA-256"));
    }
    Ok(Parsed {
        kind,
        children,
        body,
    })
}

/// The objects of one message, by id, and their tree.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// Every object's content, by id.
    pub contents: HashMap<String, Vec<u8>>,
}

impl Objects {
    /// Adds an object; its id and its tree node (children given).
    fn add(&mut self, kind: &str, children: Vec<ObjectTree>, body: &[u8]) -> ObjectTree {
        let ids: Vec<String> = children.iter().map(|c| c.object_id.clone()).collect();
        let content = encode(kind, &ids, body);
        let id = object_id(&content);
        self.contents.entry(id.clone()).or_insert(content);
        ObjectTree {
            object_id: id,
            children,
        }
    }

    /// The body of `id`, a `kind` whose body is protobuf, decoded.
    fn protobuf<R: prost::Message + Default>(
        &self,
        id: &str,
        kind: &'static str,
    ) -> Result<R, ObjectError> {
        R::decode(self.get(id, kind)?.body).map_err(|e| ObjectError::Malformed {
            id: id.into(),
            problem: format!("its body is not a {kind}: {e}"),
        })
    }

    /// The content of `id`, parsed and checked, which must be a `kind`.
    fn get(&self, id: &str, kind: &'static str) -> Result<Parsed<'_>, ObjectError> {
        let content = self
            .contents
            .get(id)
            .ok_or_else(|| ObjectError::Missing(id.into()))?;
        let parsed = parse(id, content)?;
        if parsed.kind != kind {
            return Err(ObjectError::Type {
                id: id.into(),
                expected: kind,
                got: parsed.kind.into(),
            });
        }
        Ok(parsed)
    }
}

/// Keeps the first of each id: a record's children are its distinct objects.
fn distinct(trees: Vec<ObjectTree>) -> Vec<ObjectTree> {
    let mut seen = std::collections::HashSet::new();
    trees
        .into_iter()
        .filter(|t| seen.insert(t.object_id.clone()))
        .collect()
}

/// A record's body: `{"name": "id", ...}` in the order given, spaced as
/// Python's `json.dumps` spaces it, so our records are Flower's byte for byte
/// (names are ours: digits and letters, nothing to escape).
fn json_refs(names: &[(String, &ObjectTree)]) -> Vec<u8> {
    let entries: Vec<String> = names
        .iter()
        .map(|(n, t)| format!("\"{n}\": \"{}\"", t.object_id))
        .collect();
    format!("{{{}}}", entries.join(", ")).into_bytes()
}

/// A list as Python's `json.dumps` writes it.
fn json_list(values: impl IntoIterator<Item = usize>) -> String {
    let items: Vec<String> = values.into_iter().map(|v| v.to_string()).collect();
    format!("[{}]", items.join(", "))
}

/// The `arrays` record of `params`: one Array per tensor of `spec`, named
/// `0`, `1`, ... in Keras' order, as Flower names a list of arrays.
fn array_record(objects: &mut Objects, spec: &ModelSpec, params: &[f32]) -> ObjectTree {
    let slots = tensors::slots(spec);
    let mut arrays = Vec::new();
    for (i, (slot, npy)) in slots.iter().zip(tensors::encode(spec, params)).enumerate() {
        let chunks: Vec<ObjectTree> = npy
            .chunks(MAX_CHUNK)
            .map(|chunk| objects.add("ArrayChunk", Vec::new(), chunk))
            .collect();
        let unique = distinct(chunks.clone());
        let indices: Vec<usize> = chunks
            .iter()
            .map(|c| {
                unique
                    .iter()
                    .position(|u| u.object_id == c.object_id)
                    .unwrap_or(0)
            })
            .collect();
        let body = format!(
            "{{\"dtype\": \"float32\", \"shape\": {}, \"stype\": \"{NUMPY_STYPE}\", \"arraychunk_ids\": {}}}",
            json_list(slot.shape.iter().copied()),
            json_list(indices)
        );
        let tree = objects.add("Array", unique, body.as_bytes());
        arrays.push((i.to_string(), tree));
    }
    let names: Vec<(String, &ObjectTree)> = arrays.iter().map(|(n, t)| (n.clone(), t)).collect();
    let body = json_refs(&names);
    let children = distinct(arrays.iter().map(|(_, t)| t.clone()).collect());
    objects.add("ArrayRecord", children, &body)
}

/// An integer as a ConfigRecord value.
fn config_int(v: i64) -> ConfigRecordValue {
    ConfigRecordValue {
        value: Some(config_record_value::Value::Sint64(v)),
    }
}

/// A whole message for the Fleet API: its proto (id set, content left out),
/// its objects and its tree.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The message as `pull-messages` returns it (its content an empty record).
    pub message: proto::Message,
    /// Its object tree, rooted at the message.
    pub tree: ObjectTree,
    /// Its objects.
    pub objects: Objects,
}

/// A number of a metrics record: Flower keeps integers (counts) and floats apart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// An integer (`sint64`), e.g. `num-examples`.
    Int(i64),
    /// A float (`double`), e.g. `accuracy`.
    Float(f64),
}

/// One record of a message's content.
#[derive(Debug, Clone, Copy)]
pub enum Record<'a> {
    /// A model's parameters as an ArrayRecord: `params` is the flat buffer of the spec.
    Arrays(&'a ModelSpec, &'a [f32]),
    /// A ConfigRecord of integers.
    Config(&'a [(&'a str, i64)]),
    /// A MetricRecord.
    Metrics(&'a [(&'a str, Number)]),
}

/// A message of `records` (in that order) with `metadata`, whose message id
/// is set here: the message's object id.
pub fn message(metadata: Metadata, records: &[(&str, Record<'_>)]) -> Outgoing {
    let mut objects = Objects::default();
    let mut trees = Vec::new();
    for (name, record) in records {
        let tree = match *record {
            Record::Arrays(spec, params) => array_record(&mut objects, spec, params),
            Record::Config(items) => {
                let record = ConfigRecord {
                    items: items
                        .iter()
                        .map(|&(key, v)| config_record::Item {
                            key: key.into(),
                            value: Some(config_int(v)),
                        })
                        .collect(),
                };
                objects.add("ConfigRecord", Vec::new(), &record.encode_to_vec())
            }
            Record::Metrics(items) => {
                let record = MetricRecord {
                    items: items
                        .iter()
                        .map(|&(key, v)| proto::metric_record::Item {
                            key: key.into(),
                            value: Some(proto::MetricRecordValue {
                                value: Some(match v {
                                    Number::Int(i) => metric_record_value::Value::Sint64(i),
                                    Number::Float(f) => metric_record_value::Value::Double(f),
                                }),
                            }),
                        })
                        .collect(),
                };
                objects.add("MetricRecord", Vec::new(), &record.encode_to_vec())
            }
        };
        trees.push((name.to_string(), tree));
    }
    let names: Vec<(String, &ObjectTree)> = trees.iter().map(|(n, t)| (n.clone(), t)).collect();
    let body = json_refs(&names);
    let content = objects.add(
        "RecordDict",
        distinct(trees.iter().map(|(_, t)| t.clone()).collect()),
        &body,
    );
    seal(objects, metadata, Some(content), None)
}

/// A reply that carries an error instead of content.
pub fn error_message(metadata: Metadata, code: i64, reason: &str) -> Outgoing {
    let error = proto::Error {
        code,
        reason: reason.into(),
    };
    seal(Objects::default(), metadata, None, Some(error))
}

/// Adds the Message object itself and names the message by it.
fn seal(
    mut objects: Objects,
    metadata: Metadata,
    content: Option<ObjectTree>,
    error: Option<proto::Error>,
) -> Outgoing {
    let mut message = proto::Message {
        metadata: Some(Metadata {
            message_id: String::new(),
            ..metadata
        }),
        content: None,
        error,
    };
    let tree = objects.add(
        "Message",
        content.into_iter().collect(),
        &message.encode_to_vec(),
    );
    if let Some(m) = message.metadata.as_mut() {
        m.message_id = tree.object_id.clone();
    }
    // On the wire the content is present but empty (Flower's SuperNode takes a
    // message with neither content nor error for a malformed one).
    if message.error.is_none() {
        message.content = Some(proto::RecordDict::default());
    }
    Outgoing {
        message,
        tree,
        objects,
    }
}

/// An instruction carrying `params` (the flat buffer of `spec`) as `arrays`
/// and round `round` as `config` `server-round`, with `metadata`.
pub fn instruction(spec: &ModelSpec, params: &[f32], round: u32, metadata: Metadata) -> Outgoing {
    let config = [("server-round", i64::from(round))];
    message(
        metadata,
        &[
            ("arrays", Record::Arrays(spec, params)),
            ("config", Record::Config(&config)),
        ],
    )
}

/// A JSON object's entries in the order they were written (serde_json's map
/// sorts them unless the whole build turns on preserve_order).
struct Entries(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of names to object ids")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// An Array object's body.
#[derive(Deserialize)]
struct ArrayHead {
    stype: String,
    arraychunk_ids: Vec<usize>,
}

fn json<'a, T: Deserialize<'a>>(id: &str, body: &'a [u8]) -> Result<T, ObjectError> {
    serde_json::from_slice(body).map_err(|e| ObjectError::Malformed {
        id: id.into(),
        problem: format!("its body is not the JSON it should be: {e}"),
    })
}

/// The record ids a `RecordDict` or `ArrayRecord` names, in order; each must be one of its children.
fn refs(
    objects: &Objects,
    id: &str,
    kind: &'static str,
) -> Result<Vec<(String, String)>, ObjectError> {
    let parsed = objects.get(id, kind)?;
    let Entries(entries) = json(id, parsed.body)?;
    if let Some((name, _)) = entries
        .iter()
        .find(|(_, c)| !parsed.children.contains(&c.as_str()))
    {
        return Err(ObjectError::Malformed {
            id: id.into(),
            problem: format!("{name:?} names an object that is not its child"),
        });
    }
    Ok(entries)
}

/// What a reply reported, besides its arrays.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics(pub Vec<(String, f64)>);

impl Metrics {
    /// The number under `key`, if any.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// The replying message's content record, or the error it carries.
fn content(objects: &Objects, message_id: &str) -> Result<Vec<(String, String)>, ObjectError> {
    let message = objects.get(message_id, "Message")?;
    let proto = proto::Message::decode(message.body).map_err(|e| ObjectError::Malformed {
        id: message_id.into(),
        problem: format!("its body is not a Message: {e}"),
    })?;
    if let Some(error) = proto.error {
        return Err(ObjectError::Reported {
            code: error.code,
            reason: error.reason,
        });
    }
    let [record] = message.children.as_slice() else {
        return Err(ObjectError::Malformed {
            id: message_id.into(),
            problem: "a reply without content or error".into(),
        });
    };
    refs(objects, record, "RecordDict")
}

/// What a message's content held besides its arrays.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Content {
    /// Its `metrics` record's numbers, if it has one.
    pub metrics: Option<Metrics>,
    /// Its `config` record's numbers, if it has one.
    pub config: Option<Metrics>,
}

/// Reads the message `message_id` among `objects`: (when `params` is given)
/// its `arrays` into `params`, the flat buffer of `spec` (untouched unless
/// every tensor fits), and the numbers of its `metrics` and `config`.
pub fn read(
    objects: &Objects,
    message_id: &str,
    spec: &ModelSpec,
    params: Option<&mut [f32]>,
) -> Result<Content, ObjectError> {
    let records = content(objects, message_id)?;
    let record = |name: &str| {
        records
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| id.clone())
    };
    if let Some(params) = params {
        let arrays = record("arrays").ok_or(ObjectError::NoRecord("arrays"))?;
        let mut tensors = Vec::new();
        for (name, array_id) in refs(objects, &arrays, "ArrayRecord")? {
            let array = objects.get(&array_id, "Array")?;
            let head: ArrayHead = json(&array_id, array.body)?;
            if head.stype != NUMPY_STYPE {
                return Err(ObjectError::Stype {
                    name,
                    stype: head.stype,
                });
            }
            let mut data = Vec::new();
            for index in head.arraychunk_ids {
                let chunk_id = array
                    .children
                    .get(index)
                    .ok_or_else(|| ObjectError::Malformed {
                        id: array_id.clone(),
                        problem: format!(
                            "chunk index {index} beyond its {} chunks",
                            array.children.len()
                        ),
                    })?;
                data.extend_from_slice(objects.get(chunk_id, "ArrayChunk")?.body);
            }
            tensors.push(data);
        }
        let views: Vec<&[u8]> = tensors.iter().map(Vec::as_slice).collect();
        tensors::decode(spec, &views, params)?;
    }
    let metrics = match record("metrics") {
        Some(id) => {
            let record: MetricRecord = objects.protobuf(&id, "MetricRecord")?;
            let numbers = record.items.into_iter().filter_map(|item| {
                let value = match item.value?.value? {
                    metric_record_value::Value::Double(v) => v,
                    metric_record_value::Value::Sint64(v) => v as f64,
                    metric_record_value::Value::Uint64(v) => v as f64,
                    _ => return None,
                };
                Some((item.key, value))
            });
            Some(Metrics(numbers.collect()))
        }
        None => None,
    };
    let config = match record("config") {
        Some(id) => {
            let record: ConfigRecord = objects.protobuf(&id, "ConfigRecord")?;
            let numbers = record.items.into_iter().filter_map(|item| {
                let value = match item.value?.value? {
                    config_record_value::Value::Double(v) => v,
                    config_record_value::Value::Sint64(v) => v as f64,
                    config_record_value::Value::Uint64(v) => v as f64,
                    _ => return None,
                };
                Some((item.key, value))
            });
            Some(Metrics(numbers.collect()))
        }
        None => None,
    };
    Ok(Content { metrics, config })
}

/// Reads a reply: [`read`], which must find a `metrics` record.
pub fn read_reply(
    objects: &Objects,
    message_id: &str,
    spec: &ModelSpec,
    params: Option<&mut [f32]>,
) -> Result<Metrics, ObjectError> {
    read(objects, message_id, spec, params)?
        .metrics
        .ok_or(ObjectError::NoRecord("metrics"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message Flower deflated itself (flower/fixture_objects.py, flwr 1.42.0).
    struct Fixture {
        message_id: String,
        objects: Objects,
        proto: proto::Message,
    }

    fn fixture(which: &str) -> Fixture {
        let all: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/fleet_objects.json")).unwrap();
        let m = &all[which];
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let contents = m["objects"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(id, c)| (id.clone(), hex(c.as_str().unwrap())))
            .collect();
        Fixture {
            message_id: m["message_id"].as_str().unwrap().into(),
            objects: Objects { contents },
            proto: proto::Message::decode(hex(m["proto"].as_str().unwrap()).as_slice()).unwrap(),
        }
    }

    fn spec() -> ModelSpec {
        ModelSpec::mlp(&[3, 2, 2]).unwrap()
    }

    /// The fixture's global model: 0, 0.5, 1, ... in Keras' tensor order.
    fn global() -> Vec<f32> {
        (0..spec().param_count()).map(|i| 0.5 * i as f32).collect()
    }

    #[test]
    fn our_instruction_is_flowers_object_for_object() {
        let flower = fixture("ins");
        let metadata = flower.proto.metadata.clone().unwrap();
        let ours = instruction(&spec(), &global(), 3, metadata.clone());
        // Every object, the message itself included, is Flower's byte for byte.
        for (id, content) in &ours.objects.contents {
            let kind = parse(id, content).unwrap().kind;
            assert_eq!(flower.objects.contents.get(id), Some(content), "{kind}");
        }
        assert_eq!(ours.objects.contents.len(), flower.objects.contents.len());
        assert_eq!(ours.tree.object_id, flower.message_id);
        assert_eq!(ours.message.metadata.unwrap().message_id, flower.message_id);
    }

    #[test]
    fn flowers_reply_reads_into_the_model_and_its_metrics() {
        let reply = fixture("reply");
        let mut params = vec![0.0; spec().param_count()];
        let metrics = read_reply(
            &reply.objects,
            &reply.message_id,
            &spec(),
            Some(&mut params),
        )
        .unwrap();
        let expected: Vec<f32> = global().iter().map(|v| v + 1.0).collect();
        assert_eq!(params, expected);
        assert_eq!(metrics.get("num-examples"), Some(40.0));
        assert_eq!(metrics.get("accuracy"), Some(0.75));
        assert_eq!(metrics.get("loss"), Some(0.5));
    }

    #[test]
    fn a_reply_that_is_tampered_with_is_refused_and_writes_nothing() {
        let reply = fixture("reply");
        let mut params = vec![9.0; spec().param_count()];
        // A chunk whose bytes were changed no longer hashes to its id.
        let mut tampered = reply.objects.clone();
        let chunk = tampered
            .contents
            .iter()
            .find(|(id, c)| parse(id, c).unwrap().kind == "ArrayChunk")
            .map(|(id, _)| id.clone())
            .unwrap();
        tampered.contents.get_mut(&chunk).unwrap().push(0);
        let e = read_reply(&tampered, &reply.message_id, &spec(), Some(&mut params)).unwrap_err();
        assert!(matches!(e, ObjectError::Hash { .. }), "{e}");
        // Another model's reply is refused naming the tensor.
        let other = ModelSpec::mlp(&[3, 4, 2]).unwrap();
        let mut other_params = vec![9.0; other.param_count()];
        let e = read_reply(
            &reply.objects,
            &reply.message_id,
            &other,
            Some(&mut other_params),
        )
        .unwrap_err();
        assert!(e.to_string().contains("tensor 0 has shape [3, 2]"), "{e}");
        assert!(other_params.iter().all(|&v| v == 9.0));
        // A missing object is named.
        let mut missing = reply.objects.clone();
        missing.contents.remove(&chunk);
        let e = read_reply(&missing, &reply.message_id, &spec(), Some(&mut params)).unwrap_err();
        assert_eq!(e, ObjectError::Missing(chunk));
        assert!(params.iter().all(|&v| v == 9.0));
    }

    #[test]
    fn a_reply_we_build_reads_back_and_an_error_reply_says_why() {
        let metadata = Metadata {
            run_id: 5,
            reply_to_message_id: "x".into(),
            ..Metadata::default()
        };
        let trained: Vec<f32> = global().iter().map(|v| v * 2.0).collect();
        let metrics = [
            ("num-examples", Number::Int(40)),
            ("accuracy", Number::Float(0.75)),
        ];
        let reply = message(
            metadata.clone(),
            &[
                ("arrays", Record::Arrays(&spec(), &trained)),
                ("metrics", Record::Metrics(&metrics)),
            ],
        );
        let mut params = vec![0.0; spec().param_count()];
        let got = read_reply(
            &reply.objects,
            &reply.tree.object_id,
            &spec(),
            Some(&mut params),
        )
        .unwrap();
        assert_eq!(params, trained);
        assert_eq!(
            (got.get("num-examples"), got.get("accuracy")),
            (Some(40.0), Some(0.75))
        );
        // The instruction's config reads back too.
        let ins = instruction(&spec(), &global(), 4, metadata.clone());
        let content = read(
            &ins.objects,
            &ins.tree.object_id,
            &spec(),
            Some(&mut params),
        )
        .unwrap();
        assert_eq!(content.config.unwrap().get("server-round"), Some(4.0));
        assert_eq!(params, global());
        let failed = error_message(metadata, 3, "no data");
        let e = read_reply(&failed.objects, &failed.tree.object_id, &spec(), None).unwrap_err();
        assert_eq!(e.to_string(), "it replied with error 3: no data");
    }

    #[test]
    fn headers_that_lie_about_their_body_are_refused() {
        let content = encode("ArrayChunk", &[], b"abc");
        let mut longer = content.clone();
        longer.push(b'd');
        let e = parse(&object_id(&longer), &longer).unwrap_err();
        assert!(
            e.to_string().contains("says 3 bytes of body, 4 came"),
            "{e}"
        );
        let parsed = parse(&object_id(&content), &content).unwrap();
        assert_eq!((parsed.kind, parsed.body), ("ArrayChunk", &b"abc"[..]));
        let no_header = b"no divider".to_vec();
        assert!(parse(&object_id(&no_header), &no_header).is_err());
    }
}
