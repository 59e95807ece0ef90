//! Store over the Arvados API and Keep. TO BE WRITTEN.
