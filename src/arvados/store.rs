//! Store over the Arvados API and Keep: `ApiStore` as REST calls through `ApiClient`
//! (reference §2.3), `BlockStore` delegated to `KeepClient`.
//!
//! Bodies are JSON with the resource key the API expects (`{"container": …}`,
//! `{"collection": …}`, `{"log": …}`) and a `select` list so answers stay small.

use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::arvados::client::{ApiClient, ApiSettings, percent_encode};
use crate::arvados::keep::KeepClient;
use crate::arvados::manifest::portable_data_hash;
use crate::rfc3339::format_timestamp;
use crate::store::{
    ApiStore, BlockSource, BlockStore, ContainerAccess, SavedCollection, StoreError,
};

/// The Arvados backend of the store traits.
#[derive(Debug)]
pub struct ArvadosStore {
    api: ApiClient,
    keep: Arc<LazyKeep>,
}

/// The Keep client, once its services are known: at once (ARVADOS_KEEP_SERVICES), when
/// the discovery that `ArvadosStore::start` began has answered, or, for the container's
/// token, when the client it derives from is known.
struct LazyKeep {
    client: OnceLock<Result<KeepClient, String>>,
    source: KeepSource,
}

enum KeepSource {
    Known,
    Discovery(Mutex<Option<JoinHandle<Result<KeepClient, StoreError>>>>),
    Derived { base: Arc<LazyKeep>, token: String },
}

impl std::fmt::Debug for LazyKeep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyKeep")
            .field("client", &self.client.get())
            .finish()
    }
}

impl LazyKeep {
    fn known(client: KeepClient) -> LazyKeep {
        LazyKeep {
            client: OnceLock::from(Ok(client)),
            source: KeepSource::Known,
        }
    }

    /// Discover the services through `api` on a thread of its own (inline if no thread
    /// can be started).
    fn discover(api: &ApiClient) -> LazyKeep {
        let own = api.with_token(api.token());
        let spawned = thread::Builder::new()
            .name("keep-discovery".into())
            .spawn(move || KeepClient::discover(&own));
        match spawned {
            Ok(handle) => LazyKeep {
                client: OnceLock::new(),
                source: KeepSource::Discovery(Mutex::new(Some(handle))),
            },
            Err(_) => {
                let client = KeepClient::discover(api).map_err(|e| e.to_string());
                LazyKeep {
                    client: OnceLock::from(client),
                    source: KeepSource::Known,
                }
            }
        }
    }

    /// The same services acting with `token`.
    fn with_token(self: &Arc<Self>, token: &str) -> LazyKeep {
        match self.client.get() {
            Some(Ok(client)) => LazyKeep::known(client.with_token(token)),
            _ => LazyKeep {
                client: OnceLock::new(),
                source: KeepSource::Derived {
                    base: self.clone(),
                    token: token.to_string(),
                },
            },
        }
    }

    /// The client, waiting for the discovery if it has not answered yet. Its failure is
    /// every caller's.
    fn get(&self) -> Result<&KeepClient, StoreError> {
        let client = self.client.get_or_init(|| match &self.source {
            KeepSource::Known => Err("no Keep client".to_string()),
            KeepSource::Discovery(pending) => {
                let handle = pending.lock().unwrap_or_else(|e| e.into_inner()).take();
                match handle.map(JoinHandle::join) {
                    Some(Ok(found)) => found.map_err(|e| e.to_string()),
                    Some(Err(_)) => Err("Keep service discovery panicked".to_string()),
                    None => Err("Keep service discovery was lost".to_string()),
                }
            }
            KeepSource::Derived { base, token } => base
                .get()
                .map(|c| c.with_token(token))
                .map_err(|e| e.to_string()),
        });
        client.as_ref().map_err(|message| StoreError::Unavailable {
            what: "finding the Keep services".to_string(),
            message: message.clone(),
        })
    }
}

/// Percent-encode one URL path segment (uuids and PDHs pass through unchanged).
fn path_segment(s: &str) -> String {
    percent_encode(s, b"-_.+~")
}

/// A string field of an API answer, or Invalid naming the call and field.
fn string_field(v: &Value, field: &str, what: &str) -> Result<String, StoreError> {
    v.get(field)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| StoreError::Invalid {
            what: what.to_string(),
            message: format!("answer has no string field {field:?}"),
        })
}

impl ArvadosStore {
    /// Connect with these settings: Keep services from `keep_services` (the value of
    /// ARVADOS_KEEP_SERVICES) if given and not blank, else discovered through the API
    /// (one API call, made now).
    pub fn connect(
        settings: ApiSettings,
        keep_services: Option<&str>,
    ) -> Result<ArvadosStore, StoreError> {
        let api = ApiClient::new(settings)?;
        let keep = match keep_services {
            Some(list) if !list.trim().is_empty() => KeepClient::from_env_list(list, &api)?,
            _ => KeepClient::discover(&api)?,
        };
        Ok(ArvadosStore {
            api,
            keep: Arc::new(LazyKeep::known(keep)),
        })
    }

    /// As `connect`, but a discovery of the Keep services goes on in the background while
    /// the caller asks the API other things: the first block operation, or `ready`, waits
    /// for it, and fails if it did. Call `ready` before anything that must not start
    /// without Keep (setting a container Running).
    pub fn start(
        settings: ApiSettings,
        keep_services: Option<&str>,
    ) -> Result<ArvadosStore, StoreError> {
        let api = ApiClient::new(settings)?;
        let keep = match keep_services {
            Some(list) if !list.trim().is_empty() => {
                LazyKeep::known(KeepClient::from_env_list(list, &api)?)
            }
            _ => LazyKeep::discover(&api),
        };
        Ok(ArvadosStore {
            api,
            keep: Arc::new(keep),
        })
    }

    /// The container's own token, `v2/<auth uuid>/<secret>/<container uuid>`, from
    /// `GET /arvados/v1/containers/{uuid}/auth` (only the token that locked the container
    /// may ask). The value is a secret: the caller must add it to the run's `Secrets`.
    pub fn container_token(&self, uuid: &str) -> Result<String, StoreError> {
        let path = format!("/arvados/v1/containers/{}/auth", path_segment(uuid));
        let what = format!("GET {path}");
        let v = self.api.get(&path, &[])?;
        let auth_uuid = string_field(&v, "uuid", &what)?;
        let secret = string_field(&v, "api_token", &what)?;
        Ok(format!("v2/{auth_uuid}/{secret}/{uuid}"))
    }
}

impl ApiStore for ArvadosStore {
    fn get_container(&self, uuid: &str) -> Result<Value, StoreError> {
        let path = format!("/arvados/v1/containers/{}", path_segment(uuid));
        let v = self.api.get(&path, &[])?;
        if !v.is_object() {
            return Err(StoreError::Invalid {
                what: format!("GET {path}"),
                message: "answer is not a JSON object".to_string(),
            });
        }
        Ok(v)
    }

    fn update_container(&self, uuid: &str, fields: &Map<String, Value>) -> Result<(), StoreError> {
        let path = format!("/arvados/v1/containers/{}", path_segment(uuid));
        self.api
            .put(&path, &json!({"container": fields, "select": ["uuid"]}))?;
        Ok(())
    }

    fn unlock_container(&self, uuid: &str) -> Result<(), StoreError> {
        let path = format!("/arvados/v1/containers/{}/unlock", path_segment(uuid));
        self.api.post(&path, &json!({"select": ["uuid"]}))?;
        Ok(())
    }

    fn get_collection_manifest(&self, pdh_or_uuid: &str) -> Result<String, StoreError> {
        let path = format!("/arvados/v1/collections/{}", path_segment(pdh_or_uuid));
        let v = self.api.get(&path, &[])?;
        string_field(&v, "manifest_text", &format!("GET {path}"))
    }

    /// Creates the collection (`ensure_unique_name`) and checks that the API computed the
    /// same portable data hash as we do, so a manifest we would record elsewhere by PDH is
    /// really the one saved.
    fn create_collection(
        &self,
        name: &str,
        manifest_text: &str,
    ) -> Result<SavedCollection, StoreError> {
        self.post_collection(json!({"name": name, "manifest_text": manifest_text}))
    }

    fn create_interim_collection(
        &self,
        name: &str,
        manifest_text: &str,
        trash_at: SystemTime,
    ) -> Result<SavedCollection, StoreError> {
        let at = format_timestamp(trash_at);
        self.post_collection(json!({
            "name": name,
            "manifest_text": manifest_text,
            "trash_at": at,
            "delete_at": at,
        }))
    }

    fn update_collection(
        &self,
        uuid: &str,
        manifest_text: &str,
        trash_at: Option<SystemTime>,
    ) -> Result<SavedCollection, StoreError> {
        let at = trash_at.map(format_timestamp);
        let path = format!("/arvados/v1/collections/{}", path_segment(uuid));
        let what = format!("PUT {path}");
        let body = json!({
            "collection": {"manifest_text": manifest_text, "trash_at": at, "delete_at": at},
            "select": ["uuid", "portable_data_hash"],
        });
        let v = self.api.put(&path, &body)?;
        checked_collection(&v, manifest_text, &what)
    }

    fn create_output_collection(
        &self,
        name: &str,
        manifest_text: &str,
    ) -> Result<SavedCollection, StoreError> {
        self.post_collection(
            json!({"name": name, "manifest_text": manifest_text, "is_trashed": true}),
        )
    }

    fn container_access(&self, uuid: &str) -> Result<Option<ContainerAccess>, StoreError> {
        let token = self.container_token(uuid)?;
        let api = self.api.with_token(&token);
        let keep = Arc::new(self.keep.with_token(&token));
        let store = Arc::new(ArvadosStore { api, keep });
        Ok(Some(ContainerAccess {
            token,
            api: store.clone(),
            blocks: store,
        }))
    }

    fn secret_mounts(&self, uuid: &str) -> Result<Value, StoreError> {
        let path = format!(
            "/arvados/v1/containers/{}/secret_mounts",
            path_segment(uuid)
        );
        match self.api.get(&path, &[]) {
            Ok(v) => match v.get("secret_mounts") {
                Some(m @ Value::Object(_)) => Ok(m.clone()),
                None | Some(Value::Null) => Ok(json!({})),
                Some(_) => Err(StoreError::Invalid {
                    what: format!("GET {path}"),
                    message: "secret_mounts is not an object".into(),
                }),
            },
            // An API server older than secret mounts.
            Err(StoreError::NotFound { .. }) => Ok(json!({})),
            Err(e) => Err(e),
        }
    }

    fn create_log(
        &self,
        object_uuid: &str,
        event_type: &str,
        text: &str,
    ) -> Result<(), StoreError> {
        let body = json!({
            "log": {
                "object_uuid": object_uuid,
                "event_type": event_type,
                "properties": {"text": text},
            },
            "select": ["uuid"],
        });
        self.api.post("/arvados/v1/logs", &body)?;
        Ok(())
    }
}

impl ArvadosStore {
    /// `POST /arvados/v1/collections`, checking the PDH the server computed against ours.
    fn post_collection(&self, collection: Value) -> Result<SavedCollection, StoreError> {
        let manifest_text = collection
            .get("manifest_text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let path = "/arvados/v1/collections";
        let what = format!("POST {path}");
        let body = json!({
            "collection": collection,
            "ensure_unique_name": true,
            "select": ["uuid", "portable_data_hash"],
        });
        let v = self.api.post(path, &body)?;
        checked_collection(&v, &manifest_text, &what)
    }
}

/// The saved collection in an API answer, if the API computed the same portable data hash
/// as we do: a manifest we record elsewhere by PDH must be the one saved.
fn checked_collection(
    v: &Value,
    manifest_text: &str,
    what: &str,
) -> Result<SavedCollection, StoreError> {
    let uuid = string_field(v, "uuid", what)?;
    let pdh = string_field(v, "portable_data_hash", what)?;
    let ours = portable_data_hash(manifest_text);
    if pdh != ours {
        return Err(StoreError::Invalid {
            what: what.to_string(),
            message: format!(
                "collection {uuid} was saved with portable data hash {pdh}, expected {ours}"
            ),
        });
    }
    Ok(SavedCollection {
        uuid,
        portable_data_hash: pdh,
    })
}

impl BlockStore for ArvadosStore {
    fn put_block(
        &self,
        hash: &str,
        size: u64,
        body: &BlockSource<'_>,
    ) -> Result<String, StoreError> {
        self.keep.get()?.put_block(hash, size, body)
    }

    fn get_block(&self, locator: &str, out: &mut dyn std::io::Write) -> Result<u64, StoreError> {
        self.keep.get()?.get_block(locator, out)
    }

    fn ready(&self) -> Result<(), StoreError> {
        self.keep.get().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arvados::client::testserver::{Req, Server, response, start};
    use crate::arvados::retry::RetryPolicy;
    use std::io::Read;
    use std::time::Duration;

    const TOKEN: &str = "v2/zzzzz-gj3su-000000000000000/dispatchtoken1234567890";
    const CUUID: &str = "zzzzz-dz642-queuedcontainer";

    fn settings(url: &str) -> ApiSettings {
        ApiSettings {
            host: url.to_string(),
            token: TOKEN.to_string(),
            insecure: false,
            extra_ca_file: None,
            retry: RetryPolicy {
                initial_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(10),
                deadline: Duration::from_secs(2),
                limit: Default::default(),
            },
        }
    }

    /// A store whose API and Keep are the same fake server.
    fn store(handler: impl Fn(usize, &Req) -> Vec<u8> + Send + 'static) -> (ArvadosStore, Server) {
        let server = start(handler);
        let s = ArvadosStore::connect(settings(&server.url), Some(&server.url)).unwrap();
        (s, server)
    }

    /// A record nested deeper than serde_json reads (issue 10, point 6) is Undecodable
    /// with its state, so the run can still close it; not retried.
    #[test]
    fn a_record_too_deep_to_read_is_undecodable_with_its_state() {
        let body = format!(
            r#"{{"uuid":"{CUUID}","mounts":{{"/j":{{"kind":"json","content":{}{}}}}},"state":"Locked"}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let (s, server) = store(move |_, _| response(200, &[], body.as_bytes()));
        let err = s.get_container(CUUID).unwrap_err();
        match &err {
            StoreError::Undecodable { what, state, .. } => {
                assert_eq!(what, &format!("GET /arvados/v1/containers/{CUUID}"));
                assert_eq!(state.as_deref(), Some("Locked"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            err.to_string().contains("nested more than 127 levels deep"),
            "{err}"
        );
        assert_eq!(server.requests.lock().unwrap().len(), 1);
    }

    fn sent(server: &Server, i: usize) -> (String, String, Value) {
        let r = server.requests.lock().unwrap()[i].clone();
        let body = if r.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&r.body).unwrap()
        };
        (r.method, r.path, body)
    }

    #[test]
    fn get_container_keeps_big_numbers() {
        let (s, server) = store(|_, _| {
            response(
                200,
                &[],
                br#"{"uuid":"zzzzz-dz642-queuedcontainer","state":"Locked","mounts":{"/json":{"kind":"json","content":{"number":123456789123456789}}},"runtime_constraints":{"ram":12000000000}}"#,
            )
        });
        let c = s.get_container(CUUID).unwrap();
        assert_eq!(c["state"], "Locked");
        assert_eq!(
            c["mounts"]["/json"]["content"]["number"].as_u64(),
            Some(123456789123456789)
        );
        assert_eq!(
            serde_json::to_string(&c["mounts"]["/json"]["content"]).unwrap(),
            r#"{"number":123456789123456789}"#
        );
        let (m, p, _) = sent(&server, 0);
        assert_eq!(
            (m.as_str(), p.as_str()),
            ("GET", "/arvados/v1/containers/zzzzz-dz642-queuedcontainer")
        );
    }

    #[test]
    fn update_container_sends_container_and_select() {
        let (s, server) = store(|_, _| response(200, &[], br#"{"uuid":"x"}"#));
        let mut fields = Map::new();
        fields.insert("state".into(), json!("Running"));
        fields.insert("exit_code".into(), Value::Null);
        s.update_container(CUUID, &fields).unwrap();
        let (m, p, body) = sent(&server, 0);
        assert_eq!(m, "PUT");
        assert_eq!(p, format!("/arvados/v1/containers/{CUUID}"));
        assert_eq!(
            body,
            json!({"container": {"state": "Running", "exit_code": null}, "select": ["uuid"]})
        );
    }

    #[test]
    fn update_container_rejection_carries_the_api_message() {
        let (s, _server) = store(|_, _| {
            response(
                422,
                &[],
                br#"{"errors":["State cannot change from Complete to Running (req-x)"]}"#,
            )
        });
        let err = s.update_container(CUUID, &Map::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "PUT /arvados/v1/containers/{CUUID}: HTTP 422: State cannot change from Complete to Running (req-x)"
            )
        );
    }

    #[test]
    fn get_collection_manifest_by_pdh() {
        let (s, server) = store(|_, _| {
            response(
                200,
                &[],
                br#"{"uuid":"zzzzz-4zz18-x","portable_data_hash":"1f4b0bc7583c2a7f9102c395f4ffc5e3+45","manifest_text":". acbd18db4cc2f85cedef654fccc4a4d8+3+Afoo@1 0:3:foo\n"}"#,
            )
        });
        let m = s
            .get_collection_manifest("1f4b0bc7583c2a7f9102c395f4ffc5e3+45")
            .unwrap();
        assert_eq!(m, ". acbd18db4cc2f85cedef654fccc4a4d8+3+Afoo@1 0:3:foo\n");
        let (_, p, _) = sent(&server, 0);
        assert_eq!(
            p,
            "/arvados/v1/collections/1f4b0bc7583c2a7f9102c395f4ffc5e3+45"
        );

        let (s, _server) = store(|_, _| response(200, &[], br#"{"uuid":"x"}"#));
        let err = s.get_collection_manifest("x").unwrap_err();
        assert!(err.to_string().contains("manifest_text"), "{err}");
    }

    #[test]
    fn create_collection_checks_the_pdh() {
        let manifest = ". 744b2e4553123b02fa7b452ec5c18993+123+A0000000000000000000000000000000000000000@7fffffff 0:123:crunch-run.txt\n";
        let (s, server) = store(|n, _| {
            let pdh = if n == 0 {
                "63da7bdacf08c40f604daad80c261e9a+60"
            } else {
                "00000000000000000000000000000000+60"
            };
            response(
                200,
                &[],
                format!(r#"{{"uuid":"zzzzz-4zz18-000000000000001","portable_data_hash":"{pdh}"}}"#)
                    .as_bytes(),
            )
        });
        let saved = s
            .create_collection("logs for zzzzz-zzzzz-zzzzzzzzzzzzzzz", manifest)
            .unwrap();
        assert_eq!(
            saved,
            SavedCollection {
                uuid: "zzzzz-4zz18-000000000000001".into(),
                portable_data_hash: "63da7bdacf08c40f604daad80c261e9a+60".into()
            }
        );
        let (m, p, body) = sent(&server, 0);
        assert_eq!(
            (m.as_str(), p.as_str()),
            ("POST", "/arvados/v1/collections")
        );
        assert_eq!(
            body,
            json!({
                "collection": {"name": "logs for zzzzz-zzzzz-zzzzzzzzzzzzzzz", "manifest_text": manifest},
                "ensure_unique_name": true,
                "select": ["uuid", "portable_data_hash"],
            })
        );
        let err = s.create_collection("x", manifest).unwrap_err();
        assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("expected 63da7bdacf08c40f604daad80c261e9a+60"),
            "{err}"
        );
    }

    #[test]
    fn create_log_body() {
        let (s, server) = store(|_, _| response(200, &[], br#"{"uuid":"zzzzz-57u5n-1"}"#));
        s.create_log(CUUID, "stdout", "2016-06-30T12:00:00.000000001Z hello\n")
            .unwrap();
        let (m, p, body) = sent(&server, 0);
        assert_eq!((m.as_str(), p.as_str()), ("POST", "/arvados/v1/logs"));
        assert_eq!(
            body["log"],
            json!({"object_uuid": CUUID, "event_type": "stdout",
                   "properties": {"text": "2016-06-30T12:00:00.000000001Z hello\n"}})
        );
    }

    #[test]
    fn container_token_is_v2_form() {
        let (s, server) = store(|_, _| {
            response(
                200,
                &[],
                br#"{"kind":"arvados#apiClientAuthorization","uuid":"zzzzz-gj3su-55pqoyepgi2glem","api_token":"a3ltuwzqcu2u4sc0q7yhpc2w7s00fdcqecg5d6e0u3pfohmbjt"}"#,
            )
        });
        assert_eq!(
            s.container_token(CUUID).unwrap(),
            format!(
                "v2/zzzzz-gj3su-55pqoyepgi2glem/a3ltuwzqcu2u4sc0q7yhpc2w7s00fdcqecg5d6e0u3pfohmbjt/{CUUID}"
            )
        );
        let (_, p, _) = sent(&server, 0);
        assert_eq!(p, format!("/arvados/v1/containers/{CUUID}/auth"));
    }

    #[test]
    fn blocks_go_to_keep() {
        // The fake answers PUT with a signed locator and GET with "foo".
        let (s, server) = store(|_, req| {
            if req.method == "PUT" {
                response(
                    200,
                    &[],
                    b"acbd18db4cc2f85cedef654fccc4a4d8+3+A0000000000000000000000000000000000000000@7fffffff\n",
                )
            } else {
                response(200, &[], b"foo")
            }
        });
        let body = || Ok(Box::new(&b"foo"[..]) as Box<dyn Read + Send>);
        let loc = s
            .put_block("acbd18db4cc2f85cedef654fccc4a4d8", 3, &body)
            .unwrap();
        assert!(loc.starts_with("acbd18db4cc2f85cedef654fccc4a4d8+3+A"));
        let mut out = Vec::new();
        assert_eq!(s.get_block(&loc, &mut out).unwrap(), 3);
        assert_eq!(out, b"foo");
        assert_eq!(server.requests.lock().unwrap().len(), 2);
        assert_eq!(
            s.keep.get().unwrap().services()[0].uuid,
            "00000-bi6l4-000000000000000"
        );
    }

    #[test]
    fn connect_discovers_keep_when_no_list() {
        let server = start(|_, _| {
            response(
                200,
                &[],
                br#"{"items":[{"uuid":"zzzzz-bi6l4-6zhilxar6r8ey90","service_host":"keep0","service_port":25107,"service_ssl_flag":true,"read_only":false}]}"#,
            )
        });
        let s = ArvadosStore::connect(settings(&server.url), Some("  ")).unwrap();
        assert_eq!(
            s.keep.get().unwrap().services()[0].root,
            "https://keep0:25107"
        );
        assert_eq!(
            server.requests.lock().unwrap()[0].path,
            "/arvados/v1/keep_services/accessible"
        );
    }

    const ACCESSIBLE: &[u8] = br#"{"items":[{"uuid":"zzzzz-bi6l4-6zhilxar6r8ey90","service_host":"keep0","service_port":25107,"service_ssl_flag":true,"service_type":"disk"}]}"#;

    #[test]
    fn start_finds_keep_in_the_background_and_ready_waits_for_it() {
        let slow = Duration::from_millis(400);
        let server = start(move |_, req| {
            if req.path.ends_with("/keep_services/accessible") {
                std::thread::sleep(slow);
                response(200, &[], ACCESSIBLE)
            } else {
                response(
                    200,
                    &[],
                    br#"{"uuid":"zzzzz-gj3su-55pqoyepgi2glem","api_token":"containersecret"}"#,
                )
            }
        });
        let t = std::time::Instant::now();
        let s = ArvadosStore::start(settings(&server.url), None).unwrap();
        assert!(t.elapsed() < slow / 2, "{:?}", t.elapsed());
        // The container's stores, made before the discovery answered, use its services.
        let access = s.container_access(CUUID).unwrap().unwrap();
        access.blocks.ready().unwrap();
        assert!(t.elapsed() >= slow, "{:?}", t.elapsed());
        s.ready().unwrap();
        assert_eq!(
            s.keep.get().unwrap().services()[0].root,
            "https://keep0:25107"
        );
        assert_eq!(server.requests.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_failed_discovery_fails_ready_and_every_block_operation() {
        let server = start(|_, _| response(401, &[], br#"{"errors":["Not logged in"]}"#));
        let s = ArvadosStore::start(settings(&server.url), Some(" ")).unwrap();
        let err = s.ready().unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        assert!(err.to_string().contains("Not logged in"), "{err}");
        let err = s.get_block(&format!("{}+3", "a".repeat(32)), &mut Vec::new());
        assert!(err.unwrap_err().to_string().contains("Not logged in"));
        assert_eq!(server.requests.lock().unwrap().len(), 1, "asked once");
        // connect waits, and fails, at once.
        assert!(ArvadosStore::connect(settings(&server.url), None).is_err());
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment(CUUID), CUUID);
        assert_eq!(
            path_segment("1f4b0bc7583c2a7f9102c395f4ffc5e3+45"),
            "1f4b0bc7583c2a7f9102c395f4ffc5e3+45"
        );
        assert_eq!(path_segment("../x?y"), "..%2Fx%3Fy");
    }
}
