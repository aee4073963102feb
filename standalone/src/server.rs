//! HTTP: parses Kubernetes API paths and queries, dispatches to discovery, OpenAPI and the
//! verbs, and streams watches.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::api::{Cluster, DeleteOptions, ListOptions, WriteOptions, list_object, present};
use crate::custom::FieldValidation;
use crate::error::{ApiError, ApiResult};
use crate::patch::PatchType;
use crate::registry::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Event, EventType};
use crate::table::IncludeObject;
use crate::{discovery, openapi};

/// Largest request body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// What every request handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    /// The objects and types, under one lock.
    pub(crate) cluster: Mutex<Cluster>,
    /// `host:port` clients reach the server at.
    pub(crate) address: String,
    /// How often watches that asked for bookmarks get one.
    pub(crate) bookmark_interval: Duration,
    /// The longest any watch runs ([`crate::Config::max_watch`]).
    pub(crate) max_watch: Option<Duration>,
    /// Set to `true` on shutdown, which ends open watches.
    pub(crate) stopping: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    fn lock(&self) -> MutexGuard<'_, Cluster> {
        // A panic while holding the lock cannot leave a half-applied change: every change is
        // one `Store::put`/`remove`, so a poisoned lock is still consistent.
        self.cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn json_response(code: u16, value: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    let mut response = (status, value.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 3 <= bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters, decoded.
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: Option<&str>) -> Self {
        Self(
            raw.unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

/// A request to a resource path.
#[derive(Debug)]
struct Target {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_target(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let mut t = Target {
        group: group.to_owned(),
        version: version.to_owned(),
        namespace: None,
        plural: String::new(),
        name: None,
        subresource: None,
    };
    let rest = if rest.first() == Some(&"namespaces")
        && rest.len() >= 3
        && !matches!(rest[2], "status" | "finalize")
    {
        t.namespace = Some(rest[1].to_owned());
        &rest[2..]
    } else {
        rest
    };
    match rest {
        [plural] => t.plural = (*plural).to_owned(),
        [plural, name] => {
            t.plural = (*plural).to_owned();
            t.name = Some((*name).to_owned());
        }
        [plural, name, sub] => {
            t.plural = (*plural).to_owned();
            t.name = Some((*name).to_owned());
            t.subresource = Some((*sub).to_owned());
        }
        _ => return None,
    }
    Some(t)
}

/// The single handler behind every path.
pub(crate) async fn handle(State(app): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            let mut err = ApiError::bad_request("request body too large or unreadable");
            err.code = 413;
            err.reason = "RequestEntityTooLarge";
            return err.into_response();
        }
    };
    let path = parts.uri.path().to_owned();
    let query = Query::parse(parts.uri.query());
    let method = parts.method.clone();
    let response = match route(&app, &method, &path, &query, &parts.headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(), "request");
    response
}

async fn route(
    app: &Arc<AppState>,
    method: &Method,
    path: &str,
    query: &Query,
    headers: &HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let get_only = |value: Option<Value>| -> ApiResult<Response> {
        if method != Method::GET {
            return Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on {path}"
            )));
        }
        value.map(|v| json_response(200, &v)).ok_or_else(|| ApiError::no_route(path))
    };
    match segments.as_slice() {
        ["healthz" | "readyz" | "livez"] => Ok((StatusCode::OK, "ok").into_response()),
        ["version"] => get_only(Some(discovery::version())),
        ["api"] => get_only(Some(discovery::core_versions(&app.address))),
        ["api", version] => get_only(discovery::resources(&app.lock().registry, "", version)),
        ["apis"] => get_only(Some(discovery::groups(&app.lock().registry))),
        ["apis", group] => get_only(discovery::group(&app.lock().registry, group)),
        ["apis", group, version] => {
            get_only(discovery::resources(&app.lock().registry, group, version))
        }
        ["openapi", "v3"] => get_only(Some(openapi::index(&app.lock().registry))),
        ["openapi", "v3", "api", version] => {
            let cluster = app.lock();
            let served =
                cluster.registry.all().iter().any(|t| t.group.is_empty() && t.version == *version);
            get_only(served.then(|| openapi::document(&cluster.registry, "", version)))
        }
        ["openapi", "v3", "apis", group, version] => {
            let cluster = app.lock();
            let served =
                cluster.registry.all().iter().any(|t| t.group == *group && t.version == *version);
            get_only(served.then(|| openapi::document(&cluster.registry, group, version)))
        }
        ["api", version, rest @ ..] => {
            let target = parse_target("", version, rest).ok_or_else(|| ApiError::no_route(path))?;
            resource(app, method, target, query, headers, body).await
        }
        ["apis", group, version, rest @ ..] => {
            let target =
                parse_target(group, version, rest).ok_or_else(|| ApiError::no_route(path))?;
            resource(app, method, target, query, headers, body).await
        }
        _ => Err(ApiError::no_route(path)),
    }
}

fn write_options(query: &Query, headers: &HeaderMap) -> WriteOptions {
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("unknown");
    let field_manager = match query.get("fieldManager") {
        Some(m) if !m.is_empty() => m.to_owned(),
        _ => agent.split('/').next().unwrap_or("unknown").to_owned(),
    };
    WriteOptions {
        dry_run: query.get("dryRun").is_some_and(|v| v == "All"),
        field_manager,
        field_validation: match query.get("fieldValidation") {
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            _ => FieldValidation::Warn,
        },
        force: query.flag("force"),
    }
}

fn list_options(query: &Query) -> ApiResult<ListOptions> {
    Ok(ListOptions {
        labels: LabelSelector::parse(query.get("labelSelector").unwrap_or_default())?,
        fields: FieldSelector::parse(query.get("fieldSelector").unwrap_or_default())?,
        limit: match query.get("limit") {
            Some(l) if !l.is_empty() => {
                l.parse().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?
            }
            _ => 0,
        },
        continue_token: query.get("continue").filter(|c| !c.is_empty()).map(str::to_owned),
    })
}

fn delete_options(query: &Query, body: &[u8]) -> ApiResult<DeleteOptions> {
    let parsed: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let mut propagation = text(&parsed["propagationPolicy"])
        .or_else(|| query.get("propagationPolicy").map(str::to_owned));
    if propagation.is_none() && parsed["orphanDependents"].as_bool() == Some(true) {
        propagation = Some("Orphan".into());
    }
    let dry_run = parsed["dryRun"].as_array().is_some_and(|d| d.iter().any(|x| x == "All"))
        || query.get("dryRun") == Some("All");
    Ok(DeleteOptions {
        propagation,
        uid: text(&parsed["preconditions"]["uid"]),
        resource_version: text(&parsed["preconditions"]["resourceVersion"]),
        dry_run,
    })
}

/// What the client asked the response to be.
fn wants_table(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| {
        // The first acceptable type wins; a Table request always comes first.
        accept.split(',').next().is_some_and(|first| first.contains("as=Table"))
    })
}

fn include_object(query: &Query) -> IncludeObject {
    match query.get("includeObject") {
        Some("Object") => IncludeObject::Object,
        Some("None") => IncludeObject::None,
        _ => IncludeObject::Metadata,
    }
}

async fn resource(
    app: &Arc<AppState>,
    method: &Method,
    target: Target,
    query: &Query,
    headers: &HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let rt = app.lock().registry.find(&target.group, &target.version, &target.plural).ok_or_else(
        || ApiError::no_route(&format!("{}/{} {}", target.group, target.version, target.plural)),
    )?;
    if target.namespace.is_some() && !rt.namespaced {
        return Err(ApiError::no_route(&format!(
            "namespaced path for cluster-scoped {}",
            rt.plural
        )));
    }
    let ns = target.namespace.as_deref();
    let status = match target.subresource.as_deref() {
        None => false,
        Some("status") if rt.status_subresource => true,
        Some(other) => {
            return Err(ApiError::no_route(&format!("{}/{other}", rt.plural)));
        }
    };
    let content_type =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if content_type.contains("cbor") {
        // Clients fall back to JSON when the server refuses CBOR.
        return Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {content_type:?})"
        )));
    }
    let protobuf = content_type.contains("protobuf");
    let table = wants_table(headers);
    let parse_body = || -> ApiResult<Value> {
        if protobuf {
            return crate::protobuf::decode(&body);
        }
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("error decoding body: {e}")))
    };
    let opts = write_options(query, headers);
    match (method.as_str(), target.name.as_deref()) {
        ("GET", None) if query.flag("watch") => watch(app, rt, ns, query, table).await,
        ("GET", None) => {
            let list = list_options(query)?;
            let (items, rv, next) = app.lock().list(&rt, ns, &list)?;
            if table {
                return Ok(json_response(
                    200,
                    &crate::table::table(&rt, &items, &rv, next.as_deref(), include_object(query)),
                ));
            }
            Ok(json_response(200, &list_object(&rt, items, rv, next)))
        }
        ("GET", Some(name)) => {
            let obj = app.lock().get(&rt, ns, name)?;
            if table {
                let rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_owned();
                return Ok(json_response(
                    200,
                    &crate::table::table(&rt, &[obj], &rv, None, include_object(query)),
                ));
            }
            Ok(json_response(200, &obj))
        }
        ("POST", None) => {
            let obj = app.lock().create(&rt, ns, parse_body()?, &opts)?;
            Ok(json_response(201, &obj))
        }
        ("PUT", Some(name)) => {
            let obj = app.lock().update(&rt, ns, name, parse_body()?, status, &opts)?;
            Ok(json_response(200, &obj))
        }
        ("PATCH", Some(name)) => {
            let kind = PatchType::from_content_type(content_type).ok_or_else(|| {
                ApiError::unsupported_media_type(format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type:?})"))
            })?;
            let (code, obj) = app.lock().patch(&rt, ns, name, kind, &body, status, &opts)?;
            Ok(json_response(code, &obj))
        }
        ("DELETE", Some(name)) => {
            let delete = delete_options(query, &body)?;
            let (obj, pending) = app.lock().delete(&rt, ns, name, &delete)?;
            if pending {
                return Ok(json_response(202, &obj));
            }
            Ok(json_response(
                200,
                &json!({
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {
                        "name": name,
                        "group": rt.group,
                        "kind": rt.plural,
                        "uid": obj["metadata"]["uid"],
                    },
                }),
            ))
        }
        ("DELETE", None) => {
            let list = list_options(query)?;
            let delete = delete_options(query, &body)?;
            let mut cluster = app.lock();
            let items = cluster.delete_collection(&rt, ns, &list, &delete)?;
            let rv = cluster.store.rv().to_string();
            Ok(json_response(200, &list_object(&rt, items, rv, None)))
        }
        (verb, _) => Err(ApiError::method_not_allowed(format!(
            "{verb} is not supported on {} {}",
            rt.group_resource(),
            if target.name.is_some() { "objects" } else { "collections" }
        ))),
    }
}

fn bookmark(rt: &ResourceType, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta}})
}

fn event_line(kind: &str, object: Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

async fn watch(
    app: &Arc<AppState>,
    rt: Arc<ResourceType>,
    ns: Option<&str>,
    query: &Query,
    table: bool,
) -> ApiResult<Response> {
    let list = list_options(query)?;
    let include = include_object(query);
    let bookmarks = query.flag("allowWatchBookmarks");
    let send_initial = query.flag("sendInitialEvents");
    let asked =
        query.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs);
    let timeout = match (asked, app.max_watch) {
        (Some(asked), Some(max)) => Some(asked.min(max)),
        (asked, max) => asked.or(max),
    };
    let ns = if rt.namespaced { ns.map(str::to_owned) } else { None };
    let rv = query.get("resourceVersion").filter(|r| !r.is_empty() && *r != "0");
    let render = {
        let rt = rt.clone();
        move |object: Value| -> Value {
            if table {
                let rv =
                    object["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_owned();
                crate::table::table(&rt, &[object], &rv, None, include)
            } else {
                object
            }
        }
    };

    let (mut lines, mut receiver, mut last_rv) = {
        let cluster = app.lock();
        let mut lines = Vec::new();
        let current = cluster.store.rv();
        match rv {
            Some(rv) if !send_initial => {
                let rv: u64 = rv.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                })?;
                match cluster.store.subscribe(rv) {
                    Some((backlog, receiver)) => {
                        for event in backlog {
                            if let Some((kind, obj)) = relevant(&rt, ns.as_deref(), &list, &event) {
                                lines.push(event_line(kind, render(obj)));
                            }
                        }
                        (lines, receiver, current)
                    }
                    None => {
                        let expired = ApiError::expired(format!(
                            "too old resource version: {rv} ({})",
                            cluster.store.oldest_resumable() + 1
                        ));
                        let line = event_line("ERROR", expired.status());
                        return Ok(stream_response(futures::stream::iter([Ok::<_, Infallible>(
                            line,
                        )])));
                    }
                }
            }
            _ => {
                let (items, _, _) = cluster.list(
                    &rt,
                    ns.as_deref(),
                    &ListOptions { limit: 0, continue_token: None, ..list.clone() },
                )?;
                for item in items {
                    lines.push(event_line("ADDED", render(item)));
                }
                if send_initial {
                    lines.push(event_line(
                        "BOOKMARK",
                        bookmark(&rt, current, true)["object"].clone(),
                    ));
                }
                (lines, cluster.store.subscribe_now(), current)
            }
        }
    };

    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let interval = app.bookmark_interval;
    let mut stopping = app.stopping.subscribe();
    tokio::spawn(async move {
        for line in lines.drain(..) {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut ticker = tokio::time::interval(interval);
        ticker.reset();
        loop {
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => futures::future::pending().await,
                }
            };
            let line = tokio::select! {
                received = receiver.recv() => match received {
                    Ok(event) => {
                        last_rv = last_rv.max(event.rv);
                        match relevant(&rt, ns.as_deref(), &list, &event) {
                            Some((kind, obj)) => event_line(kind, render(obj)),
                            None => continue,
                        }
                    }
                    // A watcher too slow for the event rate is closed; it resumes from the last
                    // version it saw, like after any dropped connection.
                    Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick(), if bookmarks => {
                    let mut line = bookmark(&rt, last_rv, false).to_string();
                    line.push('\n');
                    Bytes::from(line)
                }
                () = until_deadline => return,
                _ = stopping.wait_for(|stop| *stop) => return,
                () = tx.closed() => return,
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    Ok(stream_response(stream))
}

fn stream_response<S>(stream: S) -> Response
where
    S: futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    let mut response = Response::new(Body::from_stream(stream));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The event as the watcher should see it, if it concerns the watcher: a modification that
/// moves an object into a selection is `ADDED`, one that moves it out is `DELETED`.
fn relevant(
    rt: &ResourceType,
    ns: Option<&str>,
    list: &ListOptions,
    event: &Event,
) -> Option<(&'static str, Value)> {
    let key = &event.key;
    if key.group != rt.storage_group || key.resource != rt.plural {
        return None;
    }
    if ns.is_some_and(|ns| key.namespace != ns) {
        return None;
    }
    let selected = |o: &Value| {
        let o = present(rt, o.clone());
        list.labels.matches_object(&o) && list.fields.matches(&o)
    };
    let now = selected(&event.object);
    let before = event.previous.as_deref().is_some_and(selected);
    let kind = match (event.kind, before, now) {
        (EventType::Modified, false, true) => EventType::Added,
        (EventType::Modified, true, false) => EventType::Deleted,
        (kind, _, true) => kind,
        _ => return None,
    };
    Some((kind.as_str(), present(rt, (*event.object).clone())))
}
