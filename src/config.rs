//! Flags and environment -> Config. TO BE WRITTEN.
