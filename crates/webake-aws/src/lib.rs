//! webake-aws
