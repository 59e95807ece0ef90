//! The lifecycle of one container. TO BE WRITTEN.
