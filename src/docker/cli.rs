//! Running the docker CLI. TO BE WRITTEN (helper D).
