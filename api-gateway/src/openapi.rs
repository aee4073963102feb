//! The OpenAPI 3 document, generated from the handlers and their types.

use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use kubefaas_core::{
    runtime::{self, Language},
    validation::RESERVED_ENV_PREFIX,
};
use utoipa::openapi::{
    RefOr,
    path::ParameterIn,
    schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type},
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
    modifiers(&BearerAuth, &Constraints),
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

/// The constraints a derived schema cannot carry: which handlers each runtime of the catalogue
/// takes, what base64 the code may be, and that `POST /invoke` names its function one way or
/// the other.
#[derive(Debug)]
struct Constraints;

/// Letters, digits and `_`, not starting with a digit (ASCII).
const IDENTIFIER: &str = "[A-Za-z_][A-Za-z0-9_]*";

/// The handler syntax of each language (`validation::check_handler`, as patterns).
fn handler_pattern(language: Language) -> String {
    match language {
        Language::Python => format!("^{IDENTIFIER}(\\.{IDENTIFIER})+$"),
        Language::Nodejs => {
            // A path segment: the file-name characters, but not `.` or `..`.
            let segment = r"([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+)";
            format!("^{segment}(/{segment})*\\.{IDENTIFIER}$")
        }
        Language::Go => "^[A-Z][A-Za-z0-9_]*$".to_owned(),
    }
}

/// Base64 as `validation::decode_base64_code` takes it: standard alphabet, padded or not,
/// canonical final bits, ASCII whitespace anywhere, at least one byte.
fn base64_pattern() -> String {
    let space = r"[\t\n\f\r ]*";
    let char = format!("[A-Za-z0-9+/]{space}");
    let quad = format!("({char}){{4}}");
    let two = format!("{char}[AQgw]{space}(={space}={space})?");
    let three = format!("({char}){{2}}[AEIMQUYcgkosw048]{space}(={space})?");
    format!("^{space}({quad})*({quad}|{two}|{three})$")
}

fn string_property(pattern: Option<String>, values: Option<Vec<&str>>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(pattern)
        .enum_values(values.map(|v| v.into_iter().map(serde_json::Value::from).collect::<Vec<_>>()))
}

impl Modify for Constraints {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let by_language = || {
            [Language::Python, Language::Nodejs, Language::Go].into_iter().map(|language| {
                let names: Vec<&str> = runtime::names()
                    .filter(|n| runtime::lookup(n).is_some_and(|r| r.language == language))
                    .collect();
                (names, handler_pattern(language))
            })
        };
        // Create: the runtime fixes the handler's syntax.
        if let Some(original) = components.schemas.remove("CreateFunction") {
            let mut languages = OneOfBuilder::new();
            for (names, handler) in by_language() {
                languages = languages.item(
                    ObjectBuilder::new()
                        .property("runtime", string_property(None, Some(names)))
                        .property("handler", string_property(Some(handler), None)),
                );
            }
            let code = ObjectBuilder::new()
                .property("code", string_property(Some(base64_pattern()), None))
                .property("environment", environment());
            let schema = AllOfBuilder::new().item(original).item(languages).item(code);
            components.schemas.insert("CreateFunction".to_owned(), schema.into());
        }
        if let Some(original) = components.schemas.remove("UpdateFunction") {
            let runtimes: Vec<&str> = runtime::names().collect();
            let fields = ObjectBuilder::new()
                .property("runtime", string_property(None, Some(runtimes)))
                .property("code", string_property(Some(base64_pattern()), None))
                .property("environment", environment());
            let schema = AllOfBuilder::new().item(original).item(fields);
            components.schemas.insert("UpdateFunction".to_owned(), schema.into());
        }
        // Header parameters are absent or text, never JSON's null.
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete];
            for operation in operations.into_iter().flatten() {
                for parameter in operation.parameters.iter_mut().flatten() {
                    if parameter.parameter_in == ParameterIn::Header
                        && let Some(RefOr::T(Schema::Object(schema))) = &mut parameter.schema
                        && let SchemaType::Array(types) = &schema.schema_type
                        && let [only] =
                            types.iter().filter(|t| **t != Type::Null).collect::<Vec<_>>()[..]
                    {
                        schema.schema_type = SchemaType::Type(only.clone());
                    }
                }
            }
        }
        let components = openapi.components.get_or_insert_with(Default::default);
        // Invoke: `function` or `function_id` (both: the id wins).
        if let Some(original) = components.schemas.remove("InvokeRequest") {
            let named = |field: &str| {
                ObjectBuilder::new().property(field, string_property(None, None)).required(field)
            };
            let either = AnyOfBuilder::new().item(named("function")).item(named("function_id"));
            let schema = AllOfBuilder::new().item(original).item(either);
            components.schemas.insert("InvokeRequest".to_owned(), schema.into());
        }
    }
}

/// Environment variables: identifiers outside the platform's `KUBEFAAS_` prefix, values
/// without NUL.
fn environment() -> ObjectBuilder {
    ObjectBuilder::new()
        .property_names(Some(string_property(
            Some(format!("^(?!{RESERVED_ENV_PREFIX}){IDENTIFIER}$")),
            None,
        )))
        .additional_properties(Some(string_property(Some("^[^\\x00]*$".to_owned()), None)))
}
