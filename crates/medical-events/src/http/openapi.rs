//! The roots of both services' OpenAPI 3.1 documents: their titles and the
//! bearer security scheme. Paths and schemas come from the routes themselves:
//! each service registers every route with utoipa-axum's `OpenApiRouter`
//! and `routes!`, so a route and its documentation are one registration,
//! and the response bodies are the handlers' own types. The documents are
//! served at `GET /openapi.json`, printed by `<binary> openapi`, and
//! committed under `docs/openapi/` (a test keeps the committed copies in sync).

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Medical events: ingest", description = "Accepts clinical events durably, in order per patient."),
    modifiers(&BearerAuth)
)]
pub struct IngestApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Medical events: processor", description = "Processes each patient's events in order, exactly once."),
    modifiers(&BearerAuth)
)]
pub struct ProcessorApi;

/// The document as served and committed: pretty JSON with a final newline.
pub fn render(api: &utoipa::openapi::OpenApi) -> String {
    let mut text = api
        .to_pretty_json()
        .expect("an OpenAPI document serializes");
    text.push('\n');
    text
}
