//! Pure builders for docker CLI argument lists. TO BE WRITTEN (helper D).
