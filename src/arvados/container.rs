//! The Container record. TO BE WRITTEN.
