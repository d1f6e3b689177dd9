//! The gRPC contract of Rapport, generated from `proto/rapport/v1` at build time.
//!
//! The `.proto` files are the source of truth; this crate only compiles them
//! (with protox, so no system `protoc` is needed) and embeds the descriptor set
//! that server reflection hands to grpcurl.

/// `package rapport.v1`: messages, clients (`*_client`) and servers (`*_server`).
// Generated code: its shape is prost's, not ours to lint.
#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("rapport.v1");
}

/// The encoded `FileDescriptorSet` of every Rapport proto and its imports, for
/// `tonic_reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/rapport_descriptor.bin"));
