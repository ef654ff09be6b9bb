//! Fuzz targets for everything a peer or a file can feed us.
//!
//! Each target takes arbitrary bytes and checks more than "no panic": what
//! decodes must encode back to itself, a receiver's bookkeeping must stay
//! consistent, a dataset that parses must be readable at every index. The
//! targets are plain functions, so three drivers share them:
//! - libFuzzer (`fuzz_targets/`, feature `libfuzzer`), built with coverage
//!   instrumentation on the stable toolchain by `bench/fuzz.sh`;
//! - `tests/corpus.rs`, which replays the seeds and the corpus kept in
//!   `fuzz/corpus/<target>/` on every `cargo test`, so whatever a campaign
//!   found stays tested;
//! - [`seeds`], the valid inputs a campaign starts from.

// A fuzz target's job is to panic when an invariant breaks: here an `expect`
// is an assertion, not an error path.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use fedcore::protocol::frame::{self, FrameReader};
use fedcore::protocol::transfer::{Chunking, Receiver, Span};
use fedcore::protocol::{
    Encoding, ErrorCode, ErrorMsg, EvaluateIns, EvaluateRes, FitIns, FitRes, Hello, Message, Nack,
    ParamChunk, ParticipantKind, Resend, Values, Welcome,
};
use fedcore::train::TrainConfig;

/// A fuzz target: takes any bytes, panics if an invariant breaks.
pub type Target = fn(&[u8]);

/// The targets, by name (the corpus folder and the binary `fuzz-<name>`).
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("message", message),
    ("receiver", receiver),
    ("idx", idx),
];

/// The frame size the devices use, and so the decoder size the frame target runs.
const FRAME: usize = 256;

/// Bytes off the line: the first byte says how the rest is cut into reads
/// (1 to 64 bytes each), the rest is the stream. Every frame the reader
/// returns must decode to a message that encodes and decodes to itself.
pub fn frame(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(cut % 64) + 1;
    let mut reader: FrameReader<[u8; 64], { FRAME - 1 }> = FrameReader::new([0; 64]);
    for read in stream.chunks(piece) {
        reader.spare()[..read.len()].copy_from_slice(read);
        reader.filled(read.len());
        while let Some(frame) = reader.next_frame() {
            if frame.is_ok()
                && let Ok(message) = reader.message()
            {
                round_trip(&message);
            }
        }
    }
}

/// A message body as postcard bytes (no framing, no CRC, so the fuzzer reaches
/// every field): what decodes must encode and decode to itself, and a
/// parameter chunk's values must decode (or be refused) without panicking.
pub fn message(data: &[u8]) {
    let Ok(message) = postcard::from_bytes::<Message<'_>>(data) else {
        return;
    };
    round_trip(&message);
    if let Message::ParamChunk(chunk) = &message {
        let mut out = vec![0.0f32; chunk.values.len()];
        if chunk.values.decode(&mut out).is_ok() {
            let bytes = match chunk.values {
                Values::F32(b) | Values::Q16(b) => b.len(),
                Values::Int8 { values, .. } => values.len(),
            };
            assert_eq!(
                bytes,
                chunk.values.len() * value_bytes(&chunk.values),
                "values decoded from a payload that is not a whole number of values"
            );
        }
    }
}

fn value_bytes(values: &Values<'_>) -> usize {
    match values {
        Values::F32(_) | Values::Q16(_) => 4,
        Values::Int8 { .. } => 1,
    }
}

/// Encodes `message` as a frame and decodes it again: it must come back the
/// same (compared as bytes: a NaN field is not equal to itself).
fn round_trip(message: &Message<'_>) {
    let body = postcard::to_allocvec(message).expect("a decoded message serialises");
    // The body and its CRC.
    let mut out = vec![0u8; frame::max_frame_len(body.len() + 4)];
    let bytes = frame::encode(message, &mut out).expect("a decoded message encodes");
    let mut reader: FrameReader<Vec<u8>, { 1 << 16 }> = FrameReader::new(bytes.to_vec());
    reader.filled(bytes.len());
    assert!(matches!(reader.next_frame(), Some(Ok(()))));
    let again = reader.message().expect("it decodes again");
    assert_eq!(postcard::to_allocvec(&again).expect("serialises"), body);
}

/// A transfer driven by a peer: the first three bytes choose the model size
/// (1 to 4096 values), the encoding and the frame size; then records, each a
/// two-byte length and that many bytes of a postcard `ParamChunk` (a length of
/// 0 opens the transfer of the round in the next byte instead). The receiver's
/// bookkeeping must stay consistent whatever arrives.
pub fn receiver(data: &[u8]) {
    let [a, b, choice, rest @ ..] = data else {
        return;
    };
    let total = usize::from(u16::from_le_bytes([*a, *b]) % 4096) + 1;
    let encoding = [Encoding::F32, Encoding::Int8, Encoding::Q16][usize::from(choice % 3)];
    let max_frame = [64, 256, 1024][usize::from(choice / 3 % 3)];
    let Ok(chunking) = Chunking::new(total, max_frame, encoding) else {
        return;
    };
    let chunks = chunking.total().div_ceil(chunking.per_chunk()) as usize;
    let words = Receiver::<Vec<u32>>::words(chunking.total(), chunking.per_chunk());
    let mut receiver = Receiver::new(vec![0u32; words]);
    let mut dest = vec![0.0f32; total];
    let mut round = 1;
    receiver
        .start(round, &chunking)
        .expect("a bitmap of words() fits");
    let mut arrived = vec![false; chunks];
    let mut rest = rest;
    while let [l0, l1, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*l0, *l1]));
        if len == 0 {
            let Some((&next, tail)) = tail.split_first() else {
                return;
            };
            round = u32::from(next);
            receiver.start(round, &chunking).expect("same chunking");
            arrived.fill(false);
            rest = tail;
            continue;
        }
        let Some((record, tail)) = tail.split_at_checked(len) else {
            return;
        };
        rest = tail;
        let Ok(chunk) = postcard::from_bytes::<ParamChunk<'_>>(record) else {
            continue;
        };
        // Compared as bits: a NaN value is not equal to itself.
        let bits = |dest: &[f32]| -> Vec<u32> { dest.iter().map(|v| v.to_bits()).collect() };
        let before = bits(&dest);
        match receiver.accept(&chunk, &mut dest) {
            Ok(fedcore::protocol::transfer::Arrival::New { .. }) => {
                let index = (chunk.offset / chunking.per_chunk()) as usize;
                assert!(!arrived[index], "a chunk arrived twice as new");
                arrived[index] = true;
                // Only that chunk's values changed.
                let start = chunk.offset as usize;
                let end = start + chunk.values.len();
                assert!(end <= total);
                let after = bits(&dest);
                assert_eq!(before[..start], after[..start]);
                assert_eq!(before[end..], after[end..]);
            }
            Ok(fedcore::protocol::transfer::Arrival::Duplicate) => {
                assert_eq!(before, bits(&dest), "a duplicate changed the destination");
            }
            Err(_) => assert_eq!(
                before,
                bits(&dest),
                "a refused chunk changed the destination"
            ),
        }
        assert_eq!(
            receiver.is_complete(),
            arrived.iter().all(|&a| a),
            "complete exactly when every chunk arrived"
        );
        match receiver.missing() {
            None => assert!(receiver.is_complete()),
            Some(Span { offset, count }) => {
                let first = (offset / chunking.per_chunk()) as usize;
                assert!(!arrived[first], "a chunk that arrived is reported missing");
                assert!(count > 0 && offset + count <= chunking.total());
            }
        }
    }
}

/// An IDX pair from a file: two bytes say where the images end and the
/// labels begin. A pair that parses must be readable at every index.
pub fn idx(data: &[u8]) {
    use fedcore::data::Dataset;
    let [a, b, rest @ ..] = data else {
        return;
    };
    let split = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
    let (images, labels) = rest.split_at(split);
    let Ok(pair) = fedhost::dataset::ImageData::new(images.to_vec(), labels.to_vec()) else {
        return;
    };
    for i in 0..pair.len() {
        assert_eq!(pair.sample(i).values.len(), pair.pixels());
    }
}

/// Valid inputs of each target, for a campaign to start from.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "frame" => {
            let mut stream = vec![7];
            for m in messages() {
                let mut out = [0u8; FRAME];
                if let Ok(bytes) = frame::encode(&m, &mut out) {
                    stream.extend_from_slice(bytes);
                }
            }
            vec![stream]
        }
        "message" => messages()
            .iter()
            .map(|m| postcard::to_allocvec(m).expect("serialises"))
            .collect(),
        "receiver" => [Encoding::F32, Encoding::Int8, Encoding::Q16]
            .iter()
            .enumerate()
            .map(|(choice, &encoding)| transfer_script(70, choice as u8, encoding))
            .collect(),
        "idx" => {
            let images = idx_file(0x08, 3, &[3, 2, 2], &[9; 12]);
            let labels = idx_file(0x08, 1, &[3], &[1, 2, 3]);
            let mut input = (images.len() as u16).to_le_bytes().to_vec();
            input.extend(images);
            input.extend(labels);
            vec![input]
        }
        _ => Vec::new(),
    }
}

/// One of every message.
fn messages() -> Vec<Message<'static>> {
    const VALUES: &[u8] = &[0, 0, 128, 63, 0, 0, 0, 64];
    vec![
        Message::Hello(Hello {
            version: fedcore::protocol::PROTOCOL_VERSION,
            name: "seed",
            kind: ParticipantKind::Device,
            train_examples: 100,
            test_examples: 10,
            max_frame: 256,
            encoding: Encoding::Q16,
            data: fedcore::protocol::DataShape {
                values: 4,
                labels: 2,
            },
        }),
        Message::Welcome(Welcome {
            client_id: 3,
            model: fedcore::model::ModelSpec::mlp(&[4, 3, 2]).expect("a valid spec"),
        }),
        Message::FitIns(FitIns {
            round: 2,
            config: TrainConfig::default(),
            seed: 9,
            evaluate_first: true,
        }),
        Message::EvaluateIns(EvaluateIns { round: 2 }),
        Message::ParamChunk(ParamChunk {
            round: 2,
            offset: 0,
            total: 2,
            values: Values::F32(VALUES),
        }),
        Message::ParamChunk(ParamChunk {
            round: 2,
            offset: 0,
            total: 2,
            values: Values::Int8 {
                scale: 0.5,
                values: &[1, 255],
            },
        }),
        Message::FitRes(FitRes {
            round: 2,
            examples: 100,
            loss: 0.5,
            accuracy: 0.9,
            seconds: 1.0,
        }),
        Message::EvaluateRes(EvaluateRes {
            round: 2,
            examples: 10,
            loss: 0.5,
            accuracy: 0.9,
            seconds: 1.0,
        }),
        Message::Nack(Nack {
            round: 2,
            resend: Resend::Values {
                offset: 0,
                count: 2,
            },
        }),
        Message::Error(ErrorMsg {
            code: ErrorCode::Training,
            text: "seed",
        }),
        Message::Bye("seed"),
        Message::Ping(1),
        Message::Pong(1),
        Message::Challenge(fedcore::protocol::auth::Challenge { nonce: [7; 32] }),
        Message::Proof(fedcore::protocol::auth::Proof { mac: [9; 32] }),
    ]
}

/// A receiver input that delivers a `total`-value model once, then one chunk twice.
fn transfer_script(total: u16, choice: u8, encoding: Encoding) -> Vec<u8> {
    let mut script = total.to_le_bytes().to_vec();
    script.push(choice);
    let max_frame = [64, 256, 1024][usize::from(choice / 3 % 3)];
    let chunking = Chunking::new(usize::from(total), max_frame, encoding).expect("fits");
    let params: Vec<f32> = (0..total).map(|i| f32::from(i) * 0.01).collect();
    let mut values = vec![0u8; chunking.value_buffer_len()];
    let offsets: Vec<u32> = chunking.offsets(Span::all(chunking.total())).collect();
    for &offset in offsets.iter().chain(offsets.first()) {
        let start = offset as usize;
        let len = (chunking.per_chunk() as usize).min(params.len() - start);
        let Ok(encoded) = Values::encode(&params[start..start + len], encoding, &mut values) else {
            continue;
        };
        let chunk = ParamChunk {
            round: 1,
            offset,
            total: u32::from(total),
            values: encoded,
        };
        let record = postcard::to_allocvec(&chunk).expect("serialises");
        if let Ok(len) = u16::try_from(record.len()) {
            script.extend(len.to_le_bytes());
            script.extend(record);
        }
    }
    script
}

/// An IDX file: the magic (type byte, dimension count), dimensions, data.
fn idx_file(kind: u8, dims: u8, sizes: &[u32], data: &[u8]) -> Vec<u8> {
    let mut file = vec![0, 0, kind, dims];
    for s in sizes {
        file.extend(s.to_be_bytes());
    }
    file.extend_from_slice(data);
    file
}
