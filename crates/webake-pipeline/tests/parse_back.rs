//! Every rendered document parses back into the typed resources, which reject unknown fields,
//! and serializes to the same text again.

mod common;

use common::{CASES, rendered};
use webake_pipeline::Error;
use webake_pipeline::parse::{Resource, parse_documents};
use webake_pipeline::render::to_yaml;

fn reserialize(resource: &Resource) -> String {
    match resource {
        Resource::ConfigMap(r) => to_yaml(r),
        Resource::Job(r) => to_yaml(r),
        Resource::CronJob(r) => to_yaml(r),
        Resource::Task(r) => to_yaml(r),
        Resource::Pipeline(r) => to_yaml(r),
        Resource::PipelineRun(r) => to_yaml(r),
        Resource::TriggerTemplate(r) => to_yaml(r),
        Resource::TriggerBinding(r) => to_yaml(r),
    }
    .unwrap()
}

#[test]
fn rendered_documents_parse_back_into_the_typed_resources() {
    for case in CASES {
        let out = rendered(case);
        let parsed =
            parse_documents(&out.to_multi_document()).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(parsed.len(), out.documents.len(), "{case}");
        for (resource, doc) in parsed.iter().zip(&out.documents) {
            assert_eq!(resource.kind(), doc.kind, "{case} {}", doc.file_name);
            assert_eq!(
                reserialize(resource),
                doc.yaml,
                "{case} {} does not round-trip",
                doc.file_name
            );
        }
    }
}

fn document(case: &str, file_name: &str) -> String {
    rendered(case)
        .documents
        .into_iter()
        .find(|d| d.file_name == file_name)
        .expect(file_name)
        .yaml
}

fn assert_rejects(doc: &str, field: &str) {
    let err = parse_documents(doc).expect_err("an unknown field must be rejected");
    let message = err.to_string();
    assert!(matches!(err, Error::ParseBack { .. }), "{message}");
    assert!(
        message.contains(field),
        "the error should name `{field}`: {message}"
    );
}

#[test]
fn an_unknown_field_in_a_pipeline_spec_is_rejected() {
    let doc = document("ami", "pipeline.yaml");
    let tampered = doc.replacen("spec:\n", "spec:\n  finallyy: []\n", 1);
    assert_ne!(doc, tampered);
    assert_rejects(&tampered, "finallyy");
}

#[test]
fn an_unknown_field_deep_in_a_task_step_is_rejected() {
    let doc = document("ami", "task-webake-bake.yaml");
    let tampered = doc.replacen(
        "  - name: bake\n",
        "  - name: bake\n    imagePullPolicy: Always\n",
        1,
    );
    assert_ne!(doc, tampered, "fixture layout changed:\n{doc}");
    assert_rejects(&tampered, "imagePullPolicy");
}

#[test]
fn an_unknown_field_in_a_trigger_template_is_rejected() {
    let doc = document("ami", "triggertemplate.yaml");
    // The Triggers API spells it `resourcetemplates`; the camelCase spelling is not known.
    let tampered = doc.replacen("resourcetemplates:", "resourceTemplates:", 1);
    assert_ne!(doc, tampered);
    assert_rejects(&tampered, "resourceTemplates");
}

#[test]
fn an_unknown_kind_is_rejected() {
    let err =
        parse_documents("apiVersion: tekton.dev/v1\nkind: StepAction\nmetadata: {}\n").unwrap_err();
    assert!(
        err.to_string().contains("tekton.dev/v1/StepAction"),
        "{err}"
    );
}
