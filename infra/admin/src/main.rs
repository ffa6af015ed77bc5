//! `gateway-admin`: operator actions on the DynamoDB store, outside any endpoint an org member can
//! reach. Uses the usual AWS environment (`AWS_PROFILE`, `AWS_REGION`, `AWS_ENDPOINT_URL_DYNAMODB`).

use clap::{Parser, Subcommand};
use gateway::config::{env, load_catalog};
use gateway::ids::{OrgId, PlanId};
use gateway::store::dynamo::DynamoStore;

#[derive(Debug, Parser)]
#[command(about = "Operator commands for the AI gateway")]
struct Args {
    /// The gateway's DynamoDB table (the stack's `GatewayTableName` output).
    #[arg(long, env = "GATEWAY_TABLE")]
    table: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Move an organisation to another plan.
    SetPlan {
        /// The organisation's id.
        org: String,
        /// A plan id from the catalog (`free`, `pro`, `team`, or one of `GATEWAY_CONFIG`'s).
        plan: String,
    },
    /// Create the table (on-demand, TTL enabled) if it does not exist: for local DynamoDB.
    CreateTable,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    gateway::telemetry::init_text();
    let args = Args::parse();
    let store = DynamoStore::from_env(args.table).await;
    match args.command {
        Command::SetPlan { org, plan } => {
            let catalog = match env("GATEWAY_CONFIG") {
                Some(path) => load_catalog(std::path::Path::new(&path))?,
                None => gateway::catalog::Catalog::builtin(),
            };
            let (org, plan) = (OrgId::from(org), PlanId::from(plan));
            gateway::admin::set_plan(&catalog, &store, &org, &plan)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.detail()))?;
            println!("organization {org} is now on plan {plan}");
        }
        Command::CreateTable => {
            store.create_table_if_missing().await?;
            println!("table {} is ready", store.table());
        }
    }
    Ok(())
}
