//! webake-build
