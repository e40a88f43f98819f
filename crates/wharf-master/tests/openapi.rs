//! The API document validates against the OpenAPI specification, checked by
//! `openapi-spec-validator` (PyPI; `.ci/run` installs it in a virtual environment and names it
//! with `WHARF_OPENAPI_VALIDATOR`), and documents what every client meets: `/healthz`, the bearer
//! authentication, the 401 and 403 of every authenticated operation, a description on every
//! response.

use std::process::Command;

use utoipa::OpenApi;
use wharf_master::api::ApiDoc;

fn validator() -> String {
    std::env::var("WHARF_OPENAPI_VALIDATOR").unwrap_or_else(|_| "openapi-spec-validator".into())
}

#[test]
fn the_api_document_validates_and_documents_authentication_and_errors() {
    let doc = ApiDoc::openapi();
    let json = doc.to_pretty_json().expect("the document serialises");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, &json).unwrap();
    let out = Command::new(validator()).arg(&path).output().unwrap_or_else(|e| {
        panic!(
            "cannot run {} ({e}): install it with `python3 -m pip install openapi-spec-validator` \
             (or set WHARF_OPENAPI_VALIDATOR to its path)",
            validator()
        )
    });
    assert!(
        out.status.success(),
        "the API document does not validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        v["paths"]["/healthz"]["get"].is_object(),
        "/healthz is documented"
    );
    assert_eq!(
        v["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
        "bearer authentication is documented"
    );
    let mut missing = Vec::new();
    for (path, item) in v["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let public = op["security"].as_array().is_some_and(|s| {
                s.iter()
                    .all(|r| r.as_object().is_some_and(|o| o.is_empty()))
            });
            let responses = op["responses"].as_object().unwrap();
            for code in ["401", "403"] {
                if !public && !responses.contains_key(code) {
                    missing.push(format!("{method} {path}: no {code}"));
                }
            }
            for (code, r) in responses {
                if r["description"].as_str().is_none_or(str::is_empty) {
                    missing.push(format!("{method} {path}: {code} has no description"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
