use rapport_domain::ingest::Recorded;
use rapport_domain::validate::{validate_batch, validate_interaction};
use rapport_proto::v1 as pb;
use rapport_proto::v1::interaction_service_server::InteractionService;
use tonic::{Request, Response, Status};

use rapport_store::wall_clock as now;

use super::AppState;
use crate::auth::Guard;
use crate::convert::interaction_input;
use crate::error::ApiError;

/// `rapport.v1.InteractionService`.
pub struct Interactions {
    pub state: AppState,
}

#[tonic::async_trait]
impl InteractionService for Interactions {
    async fn record_interaction(
        &self,
        request: Request<pb::RecordInteractionRequest>,
    ) -> Result<Response<pb::RecordInteractionResponse>, Status> {
        let guard = Guard::of(&request);
        let Some(input) = request.into_inner().interaction else {
            return Err(ApiError::field("interaction", "is required").into());
        };
        guard.community(&input.community_id)?;
        let interaction = validate_interaction(&interaction_input(input), "interaction.", now())
            .map_err(ApiError::InvalidArgument)?;
        let outcome = self
            .state
            .ready()?
            .writer
            .append(vec![interaction])
            .await
            .map_err(ApiError::from)?;
        let recorded = outcome
            .map_err(|conflict| ApiError::InteractionConflict {
                field: "interaction.interaction_id".into(),
                community_id: conflict.community_id,
                interaction_id: conflict.interaction_id,
            })?
            .remove(0);
        Ok(Response::new(pb::RecordInteractionResponse {
            member_id: recorded.member_id,
            position: recorded.position,
            duplicate: recorded.duplicate,
        }))
    }

    async fn record_interactions(
        &self,
        request: Request<pb::RecordInteractionsRequest>,
    ) -> Result<Response<pb::RecordInteractionsResponse>, Status> {
        let guard = Guard::of(&request);
        let inputs: Vec<_> = request
            .into_inner()
            .interactions
            .into_iter()
            .map(interaction_input)
            .collect();
        for input in &inputs {
            guard.community(&input.community_id)?;
        }
        let interactions = validate_batch(&inputs, now()).map_err(ApiError::InvalidArgument)?;
        let outcome = self
            .state
            .ready()?
            .writer
            .append(interactions)
            .await
            .map_err(ApiError::from)?;
        let recorded = outcome.map_err(|conflict| ApiError::InteractionConflict {
            field: format!("interactions[{}].interaction_id", conflict.index),
            community_id: conflict.community_id,
            interaction_id: conflict.interaction_id,
        })?;
        Ok(Response::new(pb::RecordInteractionsResponse {
            results: recorded.into_iter().map(result).collect(),
        }))
    }
}

fn result(r: Recorded) -> pb::RecordInteractionResult {
    pb::RecordInteractionResult {
        member_id: r.member_id,
        position: r.position,
        duplicate: r.duplicate,
    }
}
