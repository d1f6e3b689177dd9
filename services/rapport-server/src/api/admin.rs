use rapport_proto::v1 as pb;
use rapport_proto::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::AppState;
use crate::auth::Guard;
use crate::error::ApiError;

/// `rapport.v1.AdminService`: operating the read models.
pub struct Admin {
    pub state: AppState,
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn list_projections(
        &self,
        request: Request<pb::ListProjectionsRequest>,
    ) -> Result<Response<pb::ListProjectionsResponse>, Status> {
        // The read models span every community.
        Guard::of(&request).all_communities()?;
        let ready = self.state.ready()?;
        let status = ready.projections.status().await.map_err(ApiError::from)?;
        Ok(Response::new(pb::ListProjectionsResponse {
            projections: status
                .into_iter()
                .map(|s| pb::ProjectionStatus {
                    name: s.name.to_owned(),
                    code_version: s.code_version,
                    head_position: s.head,
                    checkpoint_position: s.active.as_ref().map_or(0, |a| a.position),
                    lag: s.lag(),
                    active_generation: s.active.as_ref().map_or(0, |a| a.generation),
                    active_version: s.active.as_ref().map_or(0, |a| a.version),
                    rebuilding_generation: s.building.as_ref().map_or(0, |b| b.generation),
                    rebuilding_position: s.building.as_ref().map_or(0, |b| b.position),
                    leading_here: s.leading_here,
                })
                .collect(),
        }))
    }

    async fn rebuild_projection(
        &self,
        request: Request<pb::RebuildProjectionRequest>,
    ) -> Result<Response<pb::RebuildProjectionResponse>, Status> {
        Guard::of(&request).all_communities()?;
        let name = request.into_inner().name;
        if name.is_empty() {
            return Err(ApiError::field("name", "is required").into());
        }
        let ready = self.state.ready()?;
        let (generation, started) = ready
            .projections
            .rebuild(&name)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(projection = %name, generation, started, "rebuild requested");
        Ok(Response::new(pb::RebuildProjectionResponse {
            generation,
            already_running: !started,
        }))
    }
}
