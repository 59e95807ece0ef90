//! Store in a local directory. TO BE WRITTEN.
