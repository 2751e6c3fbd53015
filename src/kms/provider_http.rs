//! The HTTP client the AWS SDK's credential providers (IMDS, ECS, STS, SSO) send their
//! requests through: our reqwest, so the tree carries no second HTTP and TLS stack (the
//! SDK's default client brings aws-lc). Timeouts are the SDK's, per connector.

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;

/// Hands the SDK's requests to a reqwest client built with the settings it asks for.
#[derive(Debug, Clone)]
pub struct ReqwestForSdk {
    /// `AWS_CA_BUNDLE`'s roots, when set, as for KMS calls.
    tls: Option<rustls::ClientConfig>,
}

impl ReqwestForSdk {
    pub fn new(tls: Option<rustls::ClientConfig>) -> Self {
        ReqwestForSdk { tls }
    }
}

impl HttpClient for ReqwestForSdk {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if let Some(t) = settings.connect_timeout() {
            builder = builder.connect_timeout(t);
        }
        if let Some(t) = settings.read_timeout() {
            builder = builder.read_timeout(t);
        }
        if let Some(tls) = &self.tls {
            builder = builder.use_preconfigured_tls(tls.clone());
        }
        SharedHttpConnector::new(Connector(builder.build()))
    }
}

/// One reqwest client (or the reason it could not be built, reported per request).
#[derive(Debug)]
struct Connector(reqwest::Result<reqwest::Client>);

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = match &self.0 {
            Ok(c) => c.clone(),
            Err(e) => {
                let e = ConnectorError::user(format!("cannot build the HTTP client: {e}").into());
                return HttpConnectorFuture::ready(Err(e));
            }
        };
        HttpConnectorFuture::new(async move { send(&client, request).await })
    }
}

async fn send(
    client: &reqwest::Client,
    request: HttpRequest,
) -> Result<HttpResponse, ConnectorError> {
    let request = request
        .try_into_http1x()
        .map_err(|e| ConnectorError::user(e.into()))?;
    let (parts, body) = request.into_parts();
    let body = body.bytes().map(|b| b.to_vec()).unwrap_or_default();
    let request = http::Request::from_parts(parts, body);
    let request =
        reqwest::Request::try_from(request).map_err(|e| ConnectorError::user(e.into()))?;
    let response = client.execute(request).await.map_err(connector_error)?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.map_err(connector_error)?;
    let mut answer = http::Response::new(SdkBody::from(bytes));
    *answer.status_mut() = status;
    *answer.headers_mut() = headers;
    HttpResponse::try_from(answer).map_err(|e| ConnectorError::other(e.into(), None))
}

/// Timeouts as timeouts and the rest as IO errors, so the SDK retries what it should.
fn connector_error(e: reqwest::Error) -> ConnectorError {
    if e.is_timeout() {
        ConnectorError::timeout(e.into())
    } else {
        ConnectorError::io(e.into())
    }
}
