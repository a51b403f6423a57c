//! The gRPC connection every client subcommand uses: `--addr` / `EWTUNE_ADDR`, `--token` /
//! `EWTUNE_TOKEN` (sent as `authorization: Bearer <token>`) and, for `https://`, `--ca-cert` /
//! `EWTUNE_CA_CERT` (the certificate to trust).

use ewtune::api::pb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Connection flags shared by client subcommands (under their own heading in every --help).
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Daemon connection (datasets, jobs, budget, audits, bench load)")]
pub struct Connect {
    /// Daemon address.
    #[arg(long, env = "EWTUNE_ADDR", default_value = "http://127.0.0.1:50051", global = true)]
    pub addr: String,
    /// Bearer token of your tenant (from `ewtuned token create`).
    #[arg(long, env = "EWTUNE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// PEM certificate (or CA) to trust for an `https://` address (a daemon with `tls_cert`).
    #[arg(long, env = "EWTUNE_CA_CERT", global = true)]
    pub ca_cert: Option<std::path::PathBuf>,
}

#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// The clients over one channel.
pub struct Clients {
    pub datasets: pb::datasets_client::DatasetsClient<Authed>,
    pub jobs: pb::jobs_client::JobsClient<Authed>,
    pub budget: pb::budget_client::BudgetClient<Authed>,
    pub audits: pb::audits_client::AuditsClient<Authed>,
}

impl Connect {
    pub async fn clients(&self) -> Result<Clients, Box<dyn std::error::Error>> {
        let token = self.token.as_deref().ok_or("no token: pass --token or set EWTUNE_TOKEN (ewtuned token create --tenant NAME)")?;
        let value = format!("Bearer {token}").parse().map_err(|_| "the token holds characters a header cannot carry")?;
        let channel = self.channel().await?;
        let b = Bearer(value);
        Ok(Clients {
            datasets: pb::datasets_client::DatasetsClient::with_interceptor(channel.clone(), b.clone()).max_encoding_message_size(256 << 20),
            jobs: pb::jobs_client::JobsClient::with_interceptor(channel.clone(), b.clone()),
            budget: pb::budget_client::BudgetClient::with_interceptor(channel.clone(), b.clone()),
            audits: pb::audits_client::AuditsClient::with_interceptor(channel, b).max_encoding_message_size(256 << 20),
        })
    }

    /// A connection to the daemon (no credentials: health needs none).
    pub async fn channel(&self) -> Result<Channel, Box<dyn std::error::Error>> {
        let mut endpoint = Channel::from_shared(self.addr.clone())?;
        if self.addr.starts_with("https://") {
            let ca = self.ca_cert.as_ref().ok_or("an https:// address needs --ca-cert (or EWTUNE_CA_CERT): the certificate to trust")?;
            let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
            endpoint = endpoint.tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem)))?;
        }
        Ok(endpoint.connect().await.map_err(|e| format!("cannot reach the daemon at {}: {e}", self.addr))?)
    }
}

/// A status as a person reads it: what kind of refusal, in words, then the daemon's message.
pub fn explain(s: tonic::Status) -> Box<dyn std::error::Error> {
    use tonic::Code;
    let kind = match s.code() {
        Code::InvalidArgument | Code::OutOfRange => "invalid request",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::FailedPrecondition => "refused",
        Code::ResourceExhausted => "the daemon is busy (retry shortly)",
        Code::Unauthenticated => "not authenticated (is EWTUNE_TOKEN a valid token?)",
        Code::PermissionDenied => "not allowed",
        Code::DeadlineExceeded => "timed out",
        Code::Unavailable => "the daemon is unavailable (stopping, or not reachable)",
        Code::DataLoss => "data loss on the daemon",
        Code::Cancelled | Code::Aborted => "interrupted",
        Code::Unimplemented => "not supported by this daemon",
        Code::Ok | Code::Unknown | Code::Internal => "the daemon failed",
    };
    format!("{kind}: {}", crate::terminal::printable(s.message())).into()
}
