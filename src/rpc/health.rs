//! gRPC health checking (`grpc.health.v1.Health`) and server reflection
//! (`grpc.reflection.v1` and `v1alpha`) on every CM node's gRPC port.
//!
//! Two services are reported: `""` (the process serves gRPC: liveness) and
//! [`MANAGER_SERVICE`] (the node is part of a working cluster: readiness). The
//! CM node decides the second; this module only carries statuses in domain
//! terms ([`Health`]) and asks them of a remote node ([`check`]). Reflection
//! lists the services the node serves (with the descriptors of
//! `proto/ivy.proto`), so `grpcurl -plaintext HOST:PORT list` and `describe`
//! work without the .proto file.

use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus as PbStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

use super::net::channel;
use super::security::Security;
use crate::error::Error;

/// The health service name of the client-facing manager: SERVING while the node
/// is part of a working cluster.
pub const MANAGER_SERVICE: &str = "ivy.Manager";

/// The health service's own name.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// The reflection service's name (v1; v1alpha is served too, unlisted).
pub const REFLECTION_SERVICE: &str = "grpc.reflection.v1.ServerReflection";

/// The encoded descriptors of `proto/ivy.proto`, for reflection.
const IVY_DESCRIPTORS: &[u8] = tonic::include_file_descriptor_set!("ivy_descriptor");

/// A remote service's health, as one check saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// SERVING.
    Serving,
    /// NOT_SERVING.
    NotServing,
    /// The server answered UNKNOWN (or a status this client does not know).
    Unknown,
    /// The server does not know the service name.
    UnknownService,
}

impl HealthState {
    /// The state's name, as `ivy health` prints it.
    pub fn name(self) -> &'static str {
        match self {
            HealthState::Serving => "SERVING",
            HealthState::NotServing => "NOT_SERVING",
            HealthState::Unknown => "UNKNOWN",
            HealthState::UnknownService => "SERVICE_UNKNOWN",
        }
    }
}

/// The statuses a CM node reports; cloning shares them.
#[derive(Clone)]
pub struct Health(HealthReporter);

impl Health {
    /// `""` SERVING and [`MANAGER_SERVICE`] NOT_SERVING, until told otherwise.
    pub async fn new() -> Health {
        let reporter = HealthReporter::new();
        reporter.set_service_status(MANAGER_SERVICE, ServingStatus::NotServing).await;
        Health(reporter)
    }

    /// Sets whether `service` serves (watchers hear only changes).
    pub async fn set(&self, service: &str, serving: bool) {
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.0.set_service_status(service, status).await;
    }

    /// Reports every service NOT_SERVING: the node is shutting down.
    pub async fn shutting_down(&self) {
        self.set("", false).await;
        self.set(MANAGER_SERVICE, false).await;
    }

    pub(super) fn reporter(&self) -> HealthReporter {
        self.0.clone()
    }
}

/// The reflection services (v1 and v1alpha), listing exactly `services`.
pub(super) fn reflection(
    services: &[&str],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    Error,
> {
    let bad = |e: tonic_reflection::server::Error| Error::Internal(format!("reflection: {e}"));
    let builder = || {
        let b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(IVY_DESCRIPTORS)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET);
        services.iter().fold(b, |b, s| b.with_service_name(*s))
    };
    Ok((builder().build_v1().map_err(bad)?, builder().build_v1alpha().map_err(bad)?))
}

/// One `Health/Check` of `service` at `addr`, within `timeout`. An error means
/// the node did not answer (unreachable, timed out, or not a gRPC server).
pub async fn check(addr: &str, service: &str, timeout: Duration, security: &Security) -> Result<HealthState, Error> {
    let mut client = HealthClient::new(channel(addr, timeout, security)?);
    let request = HealthCheckRequest { service: service.to_string() };
    let answer = tokio::time::timeout(timeout, client.check(request)).await;
    let answer = answer.map_err(|_| Error::Unavailable(format!("{addr} did not answer within {timeout:?}")))?;
    match answer {
        Ok(reply) => Ok(match PbStatus::try_from(reply.into_inner().status) {
            Ok(PbStatus::Serving) => HealthState::Serving,
            Ok(PbStatus::NotServing) => HealthState::NotServing,
            _ => HealthState::Unknown,
        }),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(HealthState::UnknownService),
        Err(status) => Err(Error::Unavailable(format!("{addr}: {}", status.message()))),
    }
}

/// The services `addr` lists through server reflection (v1), within `timeout`.
pub async fn list_services(addr: &str, timeout: Duration, security: &Security) -> Result<Vec<String>, Error> {
    let mut client = ServerReflectionClient::new(channel(addr, timeout, security)?);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let listed = async {
        let mut replies = client.server_reflection_info(tokio_stream::iter([ask])).await?.into_inner();
        replies.message().await
    };
    let reply = tokio::time::timeout(timeout, listed).await;
    let reply = reply.map_err(|_| Error::Unavailable(format!("{addr} did not answer within {timeout:?}")))?;
    let reply = reply.map_err(|s| Error::Unavailable(format!("{addr}: reflection: {}", s.message())))?;
    match reply.and_then(|r| r.message_response) {
        Some(MessageResponse::ListServicesResponse(list)) => Ok(list.service.into_iter().map(|s| s.name).collect()),
        other => Err(Error::Malformed(format!("{addr}: unexpected reflection answer {other:?}"))),
    }
}
