//! Shared fixtures of the integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use webake_pipeline::{Inputs, PipelineConfig, RecipeRef, Rendered, ServiceDescriptor, render};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The two cases every test renders: the ami kind (with a recipe) and the docker kind.
pub const CASES: [&str; 2] = ["ami", "docker"];

pub fn inputs(case: &str) -> Inputs {
    let config = PipelineConfig::load(&fixture("config.yaml")).expect("fixture config");
    let service_file = format!("service-{case}.yaml");
    let service = ServiceDescriptor::load(&fixture(&service_file)).expect("fixture service");
    let (recipe, recipe_path) = if case == "ami" {
        let recipe = RecipeRef::load(&fixture("recipe.yaml"), "recipes/debian-12-base.yaml")
            .expect("fixture recipe");
        (Some(recipe), Some("tests/fixtures/recipe.yaml".to_owned()))
    } else {
        (None, None)
    };
    Inputs {
        config,
        config_path: "tests/fixtures/config.yaml".to_owned(),
        service,
        service_path: Some(format!("tests/fixtures/{service_file}")),
        recipe,
        recipe_path,
    }
}

pub fn rendered(case: &str) -> Rendered {
    render(&inputs(case)).expect("render")
}
