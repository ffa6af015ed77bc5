//! The AWS configuration a Lambda function's SDK clients share, made from what Lambda puts in the
//! function's environment, and the HTTPS client they call AWS with.
//!
//! `aws_config::defaults(…).load()` resolves every source the SDK knows (profile files, SSO, STS
//! web identity, the ECS and EC2 metadata services, credential processes) and so links them all.
//! A Lambda function has its region in `AWS_REGION` and its role's credentials in
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, nothing else: reading only
//! those keeps the rest out of the binary and out of the cold start. Endpoint overrides work as in
//! the SDK (`AWS_ENDPOINT_URL`, and per service `AWS_ENDPOINT_URL_DYNAMODB`, `_SQS`,
//! `_SECRETS_MANAGER`), which is how the tests point a function at local servers. The local server,
//! which developers run with profiles and SSO, keeps the SDK's full default chain
//! (`DynamoStore::from_env`).

use aws_config::environment::EnvironmentVariableCredentialsProvider;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_runtime::env_config::EnvConfigValue;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_types::os_shim_internal::Env;
use aws_types::region::Region;
use aws_types::service_config::{LoadServiceConfig, ServiceConfigKey};
use aws_types::SdkConfig;

use crate::providers::tls::{read_roots, TlsError};

/// The configuration of a function's AWS clients, from its environment. Fails only on roots
/// `SSL_CERT_FILE` names that cannot be read or parsed.
pub fn lambda_config() -> Result<SdkConfig, TlsError> {
    lambda_config_from(Env::real())
}

fn lambda_config_from(env: Env) -> Result<SdkConfig, TlsError> {
    let region = env
        .get("AWS_REGION")
        .or_else(|_| env.get("AWS_DEFAULT_REGION"))
        .ok()
        .filter(|region| !region.is_empty())
        .map(Region::new);
    let mut builder = SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(region)
        .credentials_provider(SharedCredentialsProvider::new(
            EnvironmentVariableCredentialsProvider::new(),
        ))
        .service_config(EnvOnly(env.clone()));
    if let Ok(url) = env.get("AWS_ENDPOINT_URL") {
        builder = builder.endpoint_url(url);
    }
    if let Some(client) = https_client(
        env.get("SSL_CERT_FILE").ok(),
        env.get("SSL_CERT_DIR").is_ok(),
    )? {
        builder = builder.http_client(client);
    }
    Ok(builder.build())
}

/// Service settings (`AWS_ENDPOINT_URL_<SERVICE>`) read from the environment the way the SDK's
/// loader reads them, without its profile files.
#[derive(Debug)]
struct EnvOnly(Env);

impl LoadServiceConfig for EnvOnly {
    fn load_config(&self, key: ServiceConfigKey<'_>) -> Option<String> {
        EnvConfigValue::new()
            .env(key.env())
            .service_id(key.service_id())
            .load(&self.0, None)
            .map(|(value, _source)| value.into_owned())
    }
}

/// The roots of Amazon Trust Services (Amazon Root CA 1 to 4 and Starfield Services Root G2),
/// which every AWS service endpoint's certificate chains to.
const AWS_ROOTS: &str = include_str!("../certs/amazon-trust-services.pem");

/// The AWS SDK's HTTPS client (rustls with aws-lc) trusting only the roots AWS endpoints use,
/// compiled in. The SDK's default parses every root of the system's bundle and certificate
/// directory (~290 certificates here) as it builds its first client: 17.5 M of a store-only
/// function's 20 M instructions before its first request. `SSL_CERT_FILE` replaces these roots
/// (an endpoint behind a TLS-inspecting proxy); with `SSL_CERT_DIR` set, the SDK's default
/// client is kept (`None`). A file that cannot be read or parsed is an error here: the SDK would
/// panic on it at its first connection.
fn https_client(
    cert_file: Option<String>,
    cert_dir_set: bool,
) -> Result<Option<SharedHttpClient>, TlsError> {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
    if cert_dir_set {
        return Ok(None);
    }
    let roots = match cert_file {
        Some(path) => read_roots(std::ffi::OsStr::new(&path))?.pem,
        None => AWS_ROOTS.as_bytes().to_vec(),
    };
    let context = TlsContext::builder()
        .with_trust_store(TrustStore::empty().with_pem_certificate(roots))
        .build()
        .map_err(|err| TlsError::Aws(err.to_string()))?;
    Ok(Some(
        aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(context)
            .build_https(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aws_roots_are_the_five_of_amazon_trust_services() {
        let pem = AWS_ROOTS.as_bytes();
        let certificates = pem
            .split(|b| *b == b'\n')
            .filter(|line| line.starts_with(b"-----BEGIN CERTIFICATE-----"))
            .count();
        assert_eq!(certificates, 5);
        assert!(https_client(None, false).expect("roots").is_some());
        assert!(
            https_client(None, true).expect("default").is_none(),
            "SSL_CERT_DIR keeps the SDK's default"
        );
        let file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/certs/amazon-trust-services.pem"
        );
        assert!(https_client(Some(file.into()), false)
            .expect("file")
            .is_some());
        let missing = https_client(Some("/nonexistent/roots.pem".into()), false).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/roots.pem"),
            "{missing}"
        );
    }

    fn config(vars: &[(&str, &str)]) -> SdkConfig {
        lambda_config_from(Env::from_slice(vars)).expect("config")
    }

    #[test]
    fn the_region_is_lambdas_and_endpoints_follow_the_sdks_variables() {
        let lambda = config(&[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ]);
        assert_eq!(lambda.region().map(Region::as_ref), Some("eu-west-1"));
        assert!(lambda.endpoint_url().is_none());
        // The role's credentials, as Lambda puts them in the environment; no other source.
        let credentials = format!("{:?}", lambda.credentials_provider().expect("credentials"));
        assert!(
            credentials.contains("EnvironmentVariableCredentialsProvider"),
            "{credentials}"
        );
        assert!(lambda.http_client().is_some());

        let local = config(&[
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
            ("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:2"),
        ]);
        assert_eq!(local.region().map(Region::as_ref), Some("us-east-1"));
        assert_eq!(local.endpoint_url(), Some("http://127.0.0.1:1"));
        let service = local.service_config().expect("service config");
        let endpoint = |service_id| {
            let key = ServiceConfigKey::builder()
                .service_id(service_id)
                .env("AWS_ENDPOINT_URL")
                .profile("endpoint_url")
                .build()
                .expect("key");
            service.load_config(key)
        };
        assert_eq!(endpoint("DynamoDB").as_deref(), Some("http://127.0.0.1:2"));
        assert_eq!(endpoint("SQS").as_deref(), Some("http://127.0.0.1:1"));

        assert!(config(&[]).region().is_none());
    }
}
