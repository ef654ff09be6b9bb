//! The messages of Flower's two protocols, and the gRPC service of the
//! original one, generated at build time from `proto/flower_legacy.proto` and
//! `proto/flower_fleet.proto` (both package `flwr.proto`, as Flower names it).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("flwr.proto");
