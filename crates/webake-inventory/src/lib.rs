//! webake-inventory
