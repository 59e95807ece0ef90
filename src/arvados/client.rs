//! Arvados REST API client over HTTPS (ureq): TLS settings, auth header, JSON bodies,
//! retries with backoff up to a deadline. TO BE WRITTEN (helper A).
