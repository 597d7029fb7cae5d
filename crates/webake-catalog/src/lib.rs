//! webake-catalog
