//! TO BE WRITTEN (helper B).
