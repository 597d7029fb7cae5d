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

/// The cases every test renders: the ami kind (with a recipe), the ami kind with several
/// cluster repositories, and the docker kind.
pub const CASES: [&str; 3] = ["ami", "ami-clusters", "docker"];

pub fn inputs(case: &str) -> Inputs {
    let config_file = match case {
        "ami-clusters" => "config-clusters.yaml",
        _ => "config.yaml",
    };
    let config = PipelineConfig::load(&fixture(config_file)).expect("fixture config");
    let kind = case.split('-').next().unwrap();
    let service_file = format!("service-{kind}.yaml");
    let service = ServiceDescriptor::load(&fixture(&service_file)).expect("fixture service");
    let (recipe, recipe_path) = if kind == "ami" {
        let recipe = RecipeRef::load(&fixture("recipe.yaml"), "recipes/debian-12-base.yaml")
            .expect("fixture recipe");
        (Some(recipe), Some("tests/fixtures/recipe.yaml".to_owned()))
    } else {
        (None, None)
    };
    Inputs {
        config,
        config_path: format!("tests/fixtures/{config_file}"),
        service,
        service_path: Some(format!("tests/fixtures/{service_file}")),
        recipe,
        recipe_path,
    }
}

pub fn rendered(case: &str) -> Rendered {
    render(&inputs(case)).expect("render")
}
