//! webake-rollout
