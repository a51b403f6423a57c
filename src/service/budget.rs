//! A dataset's privacy-budget report as the daemon issues it: built by the store (naming the
//! tenant, the dataset, the time and the dataset's next sequence number), serialised once and
//! signed with the daemon's key.

use super::error::ServiceError;
use super::jobs::owned_dataset;
use super::State;
use crate::store::{BudgetReport, TenantId};

/// A report with the exact bytes that were signed.
pub struct SignedBudgetReport {
    /// The report.
    pub report: BudgetReport,
    /// Its JSON, exactly the bytes signed.
    pub json: String,
    /// Ed25519 signature over `json`.
    pub signature: Vec<u8>,
    /// The daemon's public key.
    pub public_key: Vec<u8>,
}

/// The signed budget report of the tenant's dataset `dataset_id`, with the charts' data when
/// `with_charts` (blocking: the store and the accountant).
pub fn signed_report(state: &State, tenant: &TenantId, dataset_id: &str, with_charts: bool) -> Result<SignedBudgetReport, ServiceError> {
    let d = owned_dataset(state, tenant, dataset_id)?;
    let report = state.store.budget_report(tenant, &d.id, with_charts)?;
    let json = serde_json::to_string(&report).expect("reports serialize");
    Ok(SignedBudgetReport { signature: state.signer.sign(json.as_bytes()), public_key: state.signer.public_key(), json, report })
}
