//! The training lease (`models/lease.json`): one node of a cluster trains at a time. The object
//! store has no conditional write, so the lease is taken by writing it and reading it back (see
//! the registry's module docs for what two nodes taking it in the same instant do).

use common::ApiError;
use serde::{Deserialize, Serialize};

use super::{ModelRegistry, io};

const LEASE: &str = "models/lease.json";

/// Who trains now, and until when (epoch ms) unless it renews.
#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    holder: String,
    until_ms: i64,
}

impl ModelRegistry {
    /// Takes the training lease for `holder` for `ttl`, unless another holder's is current.
    pub async fn try_lease(
        &self,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, ApiError> {
        let now = common::now_millis();
        if let Some(lease) = self.lease().await?
            && lease.holder != holder
            && lease.until_ms > now
        {
            return Ok(false);
        }
        let lease = Lease {
            holder: holder.to_owned(),
            until_ms: now + ttl.as_millis() as i64,
        };
        self.objects
            .put(LEASE, serde_json::to_vec(&lease).map_err(io)?)
            .await
            .map_err(io)?;
        // Read back: of two nodes that wrote at once, the one whose write landed last holds it.
        Ok(self.lease().await?.is_some_and(|l| l.holder == holder))
    }

    /// Gives the lease up, if `holder` holds it.
    pub async fn end_lease(&self, holder: &str) -> Result<(), ApiError> {
        if self.lease().await?.is_some_and(|l| l.holder == holder) {
            let ended = Lease {
                holder: holder.to_owned(),
                until_ms: 0,
            };
            self.objects
                .put(LEASE, serde_json::to_vec(&ended).map_err(io)?)
                .await
                .map_err(io)?;
        }
        Ok(())
    }

    async fn lease(&self) -> Result<Option<Lease>, ApiError> {
        match self.objects.get(LEASE).await.map_err(io)? {
            // A lease that does not parse holds nothing: the next taker overwrites it.
            Some(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            None => Ok(None),
        }
    }
}
