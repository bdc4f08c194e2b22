//! pgop's gRPC contracts (`proto/pgop/v1`).
pub mod v1 {
    tonic::include_proto!("pgop.v1");
}

/// The encoded file descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/pgop_descriptor.bin"));

/// gRPC server reflection in both versions (grpcurl 1.8 asks for v1alpha).
pub fn reflection_services() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok((v1, v1alpha))
}

/// An inspection stream of `EventRecord`s from a broadcast channel, only those of `cluster`
/// when it is not empty. A reader too slow to keep up gets a `lagged` record saying how many
/// it missed instead of a failed stream.
pub fn event_records(
    events: tokio::sync::broadcast::Receiver<v1::EventRecord>,
    cluster: String,
) -> impl futures::Stream<Item = Result<v1::EventRecord, tonic::Status>> + Send + 'static {
    use futures::StreamExt;
    use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};
    BroadcastStream::new(events).filter_map(move |r| {
        let keep = match r {
            Ok(e) if cluster.is_empty() || e.cluster == cluster => Some(Ok(e)),
            Ok(_) => None,
            Err(BroadcastStreamRecvError::Lagged(n)) => Some(Ok(v1::EventRecord {
                kind: "lagged".into(),
                detail: format!("{n} events skipped"),
                ..Default::default()
            })),
        };
        futures::future::ready(keep)
    })
}

/// Keeps `service`'s gRPC health status on SERVING while `leading` is true and NOT_SERVING
/// while this replica is a standby (alive, but not the one to talk to).
pub fn follow_leadership(
    health: tonic_health::server::HealthReporter,
    service: &'static str,
    mut leading: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        loop {
            let status = match *leading.borrow_and_update() {
                true => tonic_health::ServingStatus::Serving,
                false => tonic_health::ServingStatus::NotServing,
            };
            health.set_service_status(service, status).await;
            if leading.changed().await.is_err() {
                return;
            }
        }
    });
}
