//! webake-spec
