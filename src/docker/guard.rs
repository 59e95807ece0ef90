//! The guard process that removes the container if crunch-run dies. TO BE WRITTEN (helper D).
