//! Operator actions, not open to organisation members: run by the `admin` command or the local
//! server's operator-token route.

use crate::catalog::Catalog;
use crate::error::{GatewayError, RequestError};
use crate::ids::{OrgId, PlanId};
use crate::store::{OrgStore, StoreError};

/// Moves an organisation to another plan; the plan must exist in the catalog.
pub async fn set_plan(
    catalog: &Catalog,
    orgs: &dyn OrgStore,
    org: &OrgId,
    plan: &PlanId,
) -> Result<(), GatewayError> {
    if catalog.plan(plan).is_none() {
        let known: Vec<&str> = catalog.plans.keys().map(PlanId::as_str).collect();
        return Err(RequestError::InvalidField(format!(
            "plan: unknown plan {plan}. Valid plans: {}",
            known.join(", ")
        ))
        .into());
    }
    orgs.set_plan(org, plan).await.map_err(|e| match e {
        StoreError::NotFound(_) => {
            GatewayError::Auth(crate::error::AuthError::OrgNotFound(org.to_string()))
        }
        other => other.into(),
    })
}
