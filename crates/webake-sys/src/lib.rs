//! webake-sys
