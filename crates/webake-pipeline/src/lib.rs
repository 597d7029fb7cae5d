//! webake-pipeline
