//! The OpenAPI 3 document of the REST API at `/openapi.json`, and Swagger UI at `/docs` (its
//! assets are compiled into the binary: the page works offline).
//!
//! The document is generated from the handlers' `#[utoipa::path]` attributes and the types they
//! take and return, then completed with what only the running configuration knows (the batch
//! limit), so that a schema-driven fuzzer can trust it: every value the schema allows is accepted,
//! every status a route can answer is listed.

use std::sync::Arc;

use axum::Router;
use common::Config;
use supervisors::Node;
use utoipa::OpenApi;
use utoipa::openapi::schema::{Array, Schema};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, ResponseBuilder};
use utoipa_swagger_ui::SwaggerUi;

use crate::rest;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "streamrec",
        description = "Real-time recommendations: events in, fresh recommendations out. GraphQL \
            is at /graphql, gRPC (streamrec.v1.Recommender) on the same port, live pushes at \
            /v1/ws.",
        license(name = "Apache-2.0")
    ),
    paths(
        rest::post_events,
        rest::put_item,
        rest::get_item,
        rest::delete_item,
        rest::get_user,
        rest::delete_user,
        rest::export_user,
        rest::put_profile,
        rest::get_recommendations,
        rest::trending,
        rest::train,
        rest::training,
        rest::models,
        rest::snapshot,
        rest::snapshots,
        rest::rollback,
        rest::activate,
        rest::actors,
        rest::actor,
        rest::act_on_actor,
        rest::cluster,
        rest::healthz,
        rest::readyz,
        rest::metrics,
        crate::bulk::import,
        crate::bulk::export,
    ),
    tags(
        (name = "events", description = "What users do"),
        (name = "recommendations", description = "What to show them"),
        (name = "catalog", description = "The items"),
        (name = "users", description = "Live sessions, erasure"),
        (name = "admin", description = "Models, the actor system and the cluster"),
        (name = "health", description = "Probes and metrics"),
    )
)]
struct ApiDoc;

/// The document for a node with this configuration.
pub fn document(config: &Config) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let events = doc
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("EventsBody"));
    if let Some(RefOr::T(Schema::Object(body))) = events
        && let Some(RefOr::T(Schema::Array(Array { max_items, .. }))) =
            body.properties.get_mut("events")
    {
        *max_items = Some(config.server.max_batch_events);
    }
    // A profile is an object of at most 64 attributes, with the text rules of item attributes.
    let profile = doc
        .paths
        .paths
        .get_mut("/v1/users/{user_id}/profile")
        .and_then(|item| item.put.as_mut())
        .and_then(|op| op.request_body.as_mut())
        .and_then(|body| body.content.get_mut("application/json"));
    if let Some(content) = profile {
        content.schema = Some(
            common::item::JsonObject::builder()
                .max_properties(Some(64))
                .into(),
        );
    }
    if let Some(components) = doc.components.as_mut() {
        // What the profile's schema refers to, whether or not an item schema brought it in.
        components.schemas.insert(
            "JsonValue".to_owned(),
            <common::item::JsonValue as utoipa::PartialSchema>::schema(),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("An OAuth 2.0 access token (JWT) with a `roles` claim"))
                    .build(),
            ),
        );
    }
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let public = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics");
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            // A path parameter is always required; say so even where a derive left it open.
            for p in op.parameters.iter_mut().flatten() {
                if p.parameter_in == utoipa::openapi::path::ParameterIn::Path {
                    p.required = Required::True;
                }
            }
            if public {
                continue;
            }
            op.security = Some(vec![SecurityRequirement::new(
                "bearer",
                Vec::<String>::new(),
            )]);
            let responses = &mut op.responses.responses;
            for (status, description) in [
                ("401", "No valid bearer token"),
                ("403", "The token's roles do not allow this"),
                ("429", "Too many requests; see Retry-After"),
            ] {
                responses.insert(status.to_owned(), RefOr::T(error(description)));
            }
        }
    }
    doc
}

/// `/openapi.json` and `/docs`.
pub fn routes(node: &Arc<Node>) -> Router<Arc<Node>> {
    SwaggerUi::new("/docs")
        .url("/openapi.json", document(&node.config))
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_with_its_errors() {
        let doc = document(&Config::default());
        let json = serde_json::to_value(&doc).expect("serialises");
        let paths = json["paths"].as_object().expect("paths");
        for path in [
            "/v1/events",
            "/v1/items/{item_id}",
            "/v1/users/{user_id}",
            "/v1/users/{user_id}/recommendations",
            "/v1/trending",
            "/v1/admin/actors/{id}/{action}",
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
        let post = &paths["/v1/events"]["post"];
        assert!(post["responses"]["400"].is_object());
        assert_eq!(
            json["components"]["schemas"]["EventsBody"]["properties"]["events"]["maxItems"],
            Config::default().server.max_batch_events
        );
        assert_eq!(
            json["components"]["schemas"]["EventsBody"]["additionalProperties"],
            false
        );
        let id = &json["components"]["schemas"]["Id"];
        assert_eq!(id["pattern"], common::ID_PATTERN);
        // Attributes and profiles say what validation accepts: no control characters in keys,
        // none but tab and line breaks in strings, at any depth.
        let attributes = &json["components"]["schemas"]["ItemInput"]["properties"]["attributes"];
        assert_eq!(
            json["components"]["schemas"]["JsonObject"]["propertyNames"]["pattern"],
            common::item::LABEL_PATTERN,
            "{attributes}"
        );
        let strings = json["components"]["schemas"]["JsonValue"]["anyOf"]
            .as_array()
            .expect("anyOf")
            .iter()
            .filter_map(|s| s["pattern"].as_str())
            .collect::<Vec<_>>();
        assert_eq!(strings, [common::item::TEXT_PATTERN]);
    }
}
