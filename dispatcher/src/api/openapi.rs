//! The OpenAPI document of the management API, generated from the handlers'
//! annotations (utoipa), served at `GET /v1/openapi.json` and committed as
//! `docs/openapi.json`; a test keeps the two equal. After changing the API:
//! `UPDATE_OPENAPI=1 cargo test -p dispatcher --lib openapi` rewrites the
//! file.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::endpoints as e;
use super::model::*;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "webhook dispatcher management API",
        description = "Endpoints as data: create, change, pause, resume and delete the endpoints of a running dispatcher. Every change goes through the endpoint store (a compacted Kafka topic), so it applies on every replica within a second and survives restarts. Off unless `api.tokens` is set; every request needs `Authorization: Bearer <token>`, an `X-Dispatcher-Api` header (any value) and a Host that is an IP address, `localhost` or a name in `api.allowed_hosts`. Endpoints from the config file are read-only here, but for pause and resume. Secrets are write-only: they show as `{\"hint\": ...}`.",
        license(name = "Apache-2.0"),
    ),
    paths(
        e::create, e::list, e::get_one, e::put, e::patch, e::delete,
        e::pause, e::resume, e::tenant_pause, e::tenant_resume,
        e::rotate_secret, e::replay, e::stats, e::openapi,
        e::legacy_list, e::legacy_one, e::legacy_pause, e::legacy_resume,
    ),
    components(schemas(
        EndpointView, Source, ProblemView, ErrorBody, EndpointList, WriteResult, WriteKind,
        Change, RotateRequest, RotateResult, ReplayRequest, ReplayResult, EndpointStats,
        Outcomes, Attempts, LegacyState, LegacyList, EndpointSpec, TenantResult, TenantFailure,
    )),
    modifiers(&Security),
    security(("bearer" = [], "dispatcher_api" = [])),
    tags(
        (name = "endpoints", description = "Endpoints, their state, secrets, dead letters and numbers"),
        (name = "tenants", description = "All the endpoints of a tenant at once"),
        (name = "unversioned", description = "The first routes, kept as aliases on top of the store; use /v1"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

/// The two credentials every request carries.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("One of api.tokens"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "dispatcher_api",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Dispatcher-Api",
                "Any value: what a web page cannot make a browser send (CSRF)",
            ))),
        );
    }
}

/// The document as served and committed: pretty JSON, one trailing newline.
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_openapi_document_is_the_generated_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let generated = super::document();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).expect("docs/openapi.json written");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json differs from the API's generated document: run `UPDATE_OPENAPI=1 cargo test -p dispatcher --lib openapi` and commit it"
        );
    }
}
