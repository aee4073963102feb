//! The OpenAPI 3 document, generated from the handlers and their types.

use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::{error, model, routes};

/// The REST API's OpenAPI document (served on `/openapi.json`).
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "kubefaas REST API",
        description = "Functions and invocations of kubefaas. Errors are `{\"error\": {\"code\", \"message\"}}`. \
            Every route but /health, /healthz, /readyz, /metrics and /openapi.json needs `Authorization: Bearer <token>` \
            unless the gateway runs with --auth none. The namespace is the `namespace` query parameter, \
            else the `X-Kubefaas-Namespace` header, else the gateway's default."
    ),
    paths(
        routes::functions::create,
        routes::functions::list,
        routes::functions::get,
        routes::functions::update,
        routes::functions::delete,
        routes::invocations::invoke_sync,
        routes::invocations::invoke_async,
        routes::invocations::get,
        routes::invocations::logs,
        routes::invocations::list,
        routes::lambda::invoke,
        routes::tokens::create,
        routes::tokens::list,
        routes::tokens::revoke,
        routes::health::health,
        routes::health::healthz,
        routes::health::ready,
        routes::health::metrics,
        routes::health::openapi,
    ),
    components(schemas(
        error::ErrorBody, error::ErrorInfo, error::FieldProblem,
        model::CreateFunction, model::UpdateFunction, model::FunctionResponse, model::CodeInfo,
        model::FunctionConfig, model::FunctionList, model::InvokeRequest, model::InvokeAccepted,
        model::InvocationResponse, model::ErrorDetail, model::MetricsDetail, model::InvocationList,
        model::LogsResponse, model::HealthResponse, model::ReadyResponse, model::CreateToken,
        model::TokenCreated,
        model::TokenInfo,
        model::TokenList,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "functions", description = "Create, read, update and delete functions"),
        (name = "invocations", description = "Run functions and read their results"),
        (name = "lambda", description = "AWS Lambda's Invoke API, for AWS SDKs and the AWS CLI (the token as the session token)"),
        (name = "tokens", description = "API tokens"),
        (name = "health", description = "Health, readiness, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// Declares the bearer-token scheme and requires it everywhere but the open routes.
#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            if ["/health", "/healthz", "/readyz", "/metrics", "/openapi.json"]
                .contains(&path.as_str())
            {
                continue;
            }
            for operation in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete]
                .into_iter()
                .flatten()
            {
                operation.security =
                    Some(vec![utoipa::openapi::security::SecurityRequirement::new(
                        "bearer",
                        Vec::<String>::new(),
                    )]);
            }
        }
    }
}
