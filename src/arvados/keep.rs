//! Keep client: service discovery, rendezvous order, block PUT from a re-openable source,
//! block GET streamed with md5 check, retries. TO BE WRITTEN (helper A).
