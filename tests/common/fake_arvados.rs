// A fake Arvados API server plus two fake keepstores, for crunch-run's
// integration tests. Everything speaks HTTPS on 127.0.0.1 with a certificate
// made at start-up (a throw-away CA, written to a temp file so clients can
// trust it via SSL_CERT_FILE). The fake enforces the API rules crunch-run
// must respect (docs/arvados-reference.md §2.1, §2.3, §2.5, §3) so a test
// fails when crunch-run sends something the real API would refuse.
//
// Public API (all methods take &self and are thread-safe):
//
//   start() / start_2016()         start the servers; 2016 mode additionally
//                                  applies the Jan-2016 rules (no Locked:
//                                  Queued→Running, narrower field lists) to
//                                  containers added in state Queued.
//   start_self_signed()            as start(), but every server presents one
//                                  self-signed CA:TRUE certificate (as
//                                  `openssl req -x509` makes it), which is also
//                                  all that ca_file() holds.
//   api_host() -> "127.0.0.1:PORT" for ARVADOS_API_HOST
//   ca_file() -> &Path              CA PEM, for SSL_CERT_FILE
//   ca_pem() -> Vec<u8>             the same bytes
//   token() -> &str                 admin/dispatcher token the fake accepts
//                                   (`Authorization: Bearer <t>` or `OAuth2 <t>`)
//   container_token(uuid) -> String "v2/<AUTH_UUID>/<AUTH_SECRET>/<uuid>", the
//                                   token crunch-run builds from /auth
//   keep_services_env() -> String   for ARVADOS_KEEP_SERVICES (2 https URLs)
//   keep_service_urls() -> Vec<String>
//
//   add_container(record)           uuid required; missing fields get the
//                                   defaults of reference §2.3(a) (state Locked,
//                                   or Queued in 2016 mode)
//   add_deeply_nested_container(uuid, levels)  a Locked record nested
//                                   `levels` deep (≥ 128: serde_json refuses it)
//   container(uuid) -> Value        current record
//   container_updates(uuid)         accepted `container` maps of PUT/PATCH, in order
//   set_container_fields(uuid, map) change a record bypassing all rules
//                                   (simulate another actor, e.g. priority 0)
//   set_secret_mounts(uuid, Value)  served by /secret_mounts (container token only)
//   rejected() -> Vec<Rejection>    every 4xx/5xx the fake itself produced
//                                   (API and Keep; injected faults excluded)
//
//   add_collection(&[(path, bytes)]) -> PDH   blocks ≤ 64 MiB stored on both keep
//                                   services; one stream per directory
//   add_manifest(text) -> PDH       stores a manifest as-is (blocks need not exist)
//   collection(pdh_or_uuid) -> Option<Value>  stored record (unsigned manifest)
//   collection_manifest(pdh_or_uuid) -> Option<String>  manifest, +A hints stripped
//   collections_created() -> Vec<Value>  `collection` maps of accepted POSTs
//                                   (with "uuid" and "portable_data_hash" added)
//   collections_updated() -> Vec<Value>  same for accepted PUT/PATCH
//   read_file(pdh_or_uuid, path) -> Option<Vec<u8>>  reassembled from keep blocks
//   keep_blocks() -> usize          distinct blocks stored (any service)
//   keep_puts() -> usize            successful keep PUTs (all services)
//   keep_block(hash) -> Option<Vec<u8>>
//   keep_requests() -> Vec<KeepRecorded>
//   sign_locator("hash+size", token) -> String  as the keep services sign
//
//   logs() -> Vec<LogEntry>         POST /arvados/v1/logs bodies
//   requests() -> Vec<Recorded>     every API request, in completion order
//                                   (path as sent, e.g. a PDH's + may be %2B;
//                                   also records token and status)
//
// Fault injection (combinable; each can be changed at any time):
//   fail_api(method, path_prefix, status, Times)   method "*" = any
//   delay_api(path_prefix, Duration)               sleep before handling
//   fail_keep(method, services, status, Times)     method "PUT"/"GET"/"*"
//   delay_keep(service, Duration)
//   set_keep_down(service, bool)    listener closed + open connections reset
//                                   → connection refused; `false` re-opens
//                                   the same port
//   set_api_down(bool)
//   clear_faults()                  all of the above back to normal
//
// Endpoints (API): GET /discovery/v1/apis/arvados/v1/rest (no token),
// GET/PUT/PATCH containers/{uuid} (JSON `{"container":{..},"select":[..]}`,
// un-nested JSON attrs, or form `container=<json>`), GET containers (filters
// "="/"in"), GET containers/{uuid}/auth|secret_mounts, POST
// containers/{uuid}/lock|unlock, GET collections/{pdh|uuid}, POST
// collections, PUT/PATCH collections/{uuid}, POST logs, GET
// keep_services[/accessible], GET config, GET users/current. Keep: PUT /<md5>
// (Content-Length required, md5 checked, ≤ 64 MiB), GET|HEAD /<hash+size+A..>.
// Errors are `{"errors":[..]}`; state-rule violations are 422 with
// "state cannot change from A to B" or
// "<field> cannot be modified in state '<to>' (<old>, <new>)" (Ruby inspect:
// nil, "str", 0). Unchanged values (numbers compared by value) are never
// violations; unknown attributes are. Per §2.5 a requeue (Locked→Queued)
// may change only priority, so a changed cost there is refused.
//
// Tokens: the admin token may do everything except /secret_mounts. The
// container token (see container_token; also the bare AUTH_SECRET or a v2
// token without the container uuid) is valid while some matching container
// is Locked or Running. Keep signatures are HMAC-SHA1 bound to the secret
// part of the token that made the request, so a locator signed for one token
// does not validate for another, as in Arvados.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::fake_support::{
    BLOB_SIGNATURE_TTL, EMPTY_BLOCK_HASH, Locator, SignatureProblem, check_signature, is_lower_hex,
    looks_like_pdh, md5_hex, parse_manifest, parse_pairs, parse_rfc3339, portable_data_hash,
    ruby_inspect, sign_locator, sign_manifest, strip_signatures,
};
use super::fake_timing::{ConnNumbers, Timed, Timing};
use super::http_server::{Request, Response, Server};

#[path = "fake_faults.rs"]
mod faults;
use faults::{Action, Conns, Faults};

/// The container token's uuid/secret (`containers/{uuid}/auth`).
pub const AUTH_UUID: &str = "zzzzz-gj3su-55pqoyepgi2glem";
pub const AUTH_SECRET: &str = "a3ltuwzqcu2u4sc0q7yhpc2w7s00fdcqecg5d6e0u3pfohmbjt";
/// The admin/dispatcher token and the uuids it stands for.
pub const ADMIN_TOKEN: &str = "4axaw8zxe0qm22wa6urpp5nskcne8z88cvbupv653y1njyi05h";
pub const DISPATCHER_AUTH_UUID: &str = "zzzzz-gj3su-000000000000000";
pub const ADMIN_USER_UUID: &str = "zzzzz-tpzed-000000000000000";
/// Largest keep block.
pub const BLOCK_SIZE: usize = 64 * 1024 * 1024;

const STATES: [&str; 5] = ["Queued", "Locked", "Running", "Complete", "Cancelled"];
static DISCOVERY: &str = include_str!("arvados-v1-discovery.json");

/// A request the fake refused (not counting injected faults).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub message: String,
}

/// One POST /arvados/v1/logs.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub object_uuid: String,
    pub event_type: String,
    pub text: String,
}

/// One API request. `body` holds the merged parameters: query-string
/// values and form fields (each JSON-decoded when it parses as JSON) or the
/// JSON body's top-level object.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
    pub token: Option<String>,
    pub status: u16,
}

/// One request to a keep service.
#[derive(Debug, Clone)]
pub struct KeepRecorded {
    pub service: usize,
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// How often an injected fault fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Times {
    Always,
    Next(usize),
}

struct ApiFault {
    method: String,
    prefix: String,
    status: u16,
    remaining: Option<usize>,
}

struct KeepFault {
    method: String,
    services: Vec<usize>,
    status: u16,
    remaining: Option<usize>,
}

#[derive(Clone)]
struct Collection {
    uuid: String,
    pdh: String,
    /// manifest with +A hints stripped
    manifest: String,
    record: Map<String, Value>,
}

#[derive(Default)]
struct State {
    containers: BTreeMap<String, Value>,
    legacy: HashSet<String>,
    updates: HashMap<String, Vec<Value>>,
    secret_mounts: HashMap<String, Value>,
    collections: Vec<Collection>,
    collections_created: Vec<Value>,
    collections_updated: Vec<Value>,
    /// per keep service: hash → data
    blocks: Vec<HashMap<String, Arc<Vec<u8>>>>,
    keep_puts: usize,
    logs: Vec<LogEntry>,
    requests: Vec<Recorded>,
    keep_requests: Vec<KeepRecorded>,
    rejected: Vec<Rejection>,
    api_faults: Vec<ApiFault>,
    api_delays: Vec<(String, Duration)>,
    keep_faults: Vec<KeepFault>,
    keep_delays: HashMap<usize, Duration>,
    /// Per-call resets and slow answers (faults.rs).
    faults: Faults,
    next_id: u64,
}

impl State {
    /// Record a refusal of ours (not an injected fault) for `rejected()`.
    fn note_rejection(&mut self, method: String, path: String, reply: &Reply) {
        if reply.status >= 400 && !reply.injected {
            self.rejected.push(Rejection {
                method,
                path,
                status: reply.status,
                message: reply.message(),
            });
        }
    }
}

struct Shared {
    key: Vec<u8>,
    mode_2016: bool,
    api_root: String,
    keep_ports: Vec<u16>,
    state: Mutex<State>,
    /// The open connections of the API front, then of each Keep front (faults.rs).
    front_conns: Vec<Conns>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake cluster. Dropping it stops the servers.
pub struct FakeArvados {
    shared: Arc<Shared>,
    api_front: Front,
    keep_fronts: Vec<Front>,
    stop: Arc<AtomicBool>,
    timing: Arc<Timing>,
    _dir: tempfile::TempDir,
    ca_path: PathBuf,
    ca_pem: Vec<u8>,
}

// ---------------------------------------------------------------- start-up

struct Tls {
    ca_pem: String,
    cert_chain_pem: String,
    key_pem: String,
}

fn make_tls() -> Tls {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "crunch-run test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("leaf params");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert");
    Tls {
        ca_pem: ca_cert.pem(),
        cert_chain_pem: format!("{}{}", leaf.pem(), ca_cert.pem()),
        key_pem: leaf_key.serialize_pem(),
    }
}

/// One certificate that is its own issuer and says CA:TRUE, as `openssl req -x509
/// -addext subjectAltName=IP:127.0.0.1,DNS:localhost` makes it: the API server's own
/// self-signed certificate, which is also the whole trusted file.
fn make_self_signed_tls() -> Tls {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = params.self_signed(&key).expect("self-signed cert");
    Tls {
        ca_pem: cert.pem(),
        cert_chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn start_https(tls: &Tls) -> (Arc<Server>, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind https server");
    let server =
        Server::https(listener, &tls.cert_chain_pem, &tls.key_pem).expect("start https server");
    let addr = server.server_addr();
    (Arc::new(server), addr)
}

/// Hand each request to its own thread so a slow one never blocks others.
fn serve<F>(server: Arc<Server>, stop: Arc<AtomicBool>, handler: F)
where
    F: Fn(Request) + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match server.recv_timeout(Duration::from_millis(50)) {
                Ok(Some(rq)) => {
                    let h = handler.clone();
                    thread::spawn(move || h(rq));
                }
                Ok(None) => {}
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    });
}

impl FakeArvados {
    /// Start with the current API rules.
    pub fn start() -> FakeArvados {
        Self::start_with(false)
    }

    /// Start in "2016 mode": containers added in state Queued follow the
    /// Jan-2016 API (Queued→Running|Cancelled, Running→Complete|Cancelled,
    /// 2016 field lists). Others follow the current rules.
    pub fn start_2016() -> FakeArvados {
        Self::start_with(true)
    }

    /// Start with every server presenting one self-signed CA:TRUE certificate (as
    /// `openssl req -x509` makes it); `ca_file()` holds that certificate alone.
    pub fn start_self_signed() -> FakeArvados {
        Self::start_with_tls(false, make_self_signed_tls())
    }

    fn start_with(mode_2016: bool) -> FakeArvados {
        Self::start_with_tls(mode_2016, make_tls())
    }

    fn start_with_tls(mode_2016: bool, tls: Tls) -> FakeArvados {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_path = dir.path().join("fake-arvados-ca.pem");
        std::fs::write(&ca_path, &tls.ca_pem).expect("write CA");
        let stop = Arc::new(AtomicBool::new(false));

        let timing = Timing::new();
        let counted = |name: &str| Counted {
            timing: timing.clone(),
            server: name.to_string(),
            numbers: ConnNumbers::default(),
        };
        let (api_server, api_backend) = start_https(&tls);
        let api_counted = counted("api");
        let api_front = Front::start(api_backend, stop.clone(), api_counted.clone());
        let mut keep_servers = Vec::new();
        let mut keep_fronts = Vec::new();
        for i in 0..2 {
            let (srv, backend) = start_https(&tls);
            let c = counted(&format!("keep{i}"));
            keep_fronts.push(Front::start(backend, stop.clone(), c.clone()));
            keep_servers.push((srv, c));
        }
        // A per-instance signing key: distinct enough for tests.
        let seed = format!(
            "{:?}{}{:p}",
            SystemTime::now(),
            std::process::id(),
            &stop as *const _
        );
        let key = md5_hex(seed.as_bytes()).into_bytes();
        let shared = Arc::new(Shared {
            key,
            mode_2016,
            api_root: format!("https://{}/", api_front.addr),
            keep_ports: keep_fronts.iter().map(|f| f.addr.port()).collect(),
            front_conns: std::iter::once(&api_front)
                .chain(&keep_fronts)
                .map(|f| f.conns.clone())
                .collect(),
            state: Mutex::new(State {
                blocks: vec![HashMap::new(), HashMap::new()],
                next_id: 1,
                ..Default::default()
            }),
        });
        {
            let sh = shared.clone();
            serve(api_server, stop.clone(), move |rq| {
                api_counted.serve_one(rq, |rq| handle_api(&sh, rq))
            });
        }
        for (i, (srv, c)) in keep_servers.into_iter().enumerate() {
            let sh = shared.clone();
            serve(srv, stop.clone(), move |rq| {
                c.serve_one(rq, |rq| handle_keep(&sh, i, rq))
            });
        }
        FakeArvados {
            shared,
            api_front,
            keep_fronts,
            stop,
            timing,
            _dir: dir,
            ca_path,
            ca_pem: tls.ca_pem.into_bytes(),
        }
    }

    // ------------------------------------------------------------ accessors

    pub fn api_host(&self) -> String {
        self.api_front.addr.to_string()
    }

    pub fn ca_file(&self) -> &Path {
        &self.ca_path
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        self.ca_pem.clone()
    }

    pub fn token(&self) -> &str {
        ADMIN_TOKEN
    }

    pub fn container_token(&self, container_uuid: &str) -> String {
        format!("v2/{AUTH_UUID}/{AUTH_SECRET}/{container_uuid}")
    }

    pub fn keep_service_urls(&self) -> Vec<String> {
        self.keep_fronts
            .iter()
            .map(|f| format!("https://{}", f.addr))
            .collect()
    }

    pub fn keep_services_env(&self) -> String {
        self.keep_service_urls().join(" ")
    }

    // ----------------------------------------------------------- containers

    /// Add a container record. `record["uuid"]` is required; missing fields
    /// are filled with the defaults of reference §2.3(a), state "Locked"
    /// ("Queued" in 2016 mode).
    pub fn add_container(&self, record: Value) {
        let mut rec = default_container(
            record["uuid"]
                .as_str()
                .expect("add_container: record needs a uuid"),
        );
        let obj = rec.as_object_mut().expect("object");
        if self.shared.mode_2016 {
            // there was no Locked state in 2016
            obj.insert("state".into(), json!("Queued"));
            obj.insert("lock_count".into(), json!(0));
        }
        for (k, v) in record
            .as_object()
            .expect("add_container: record must be an object")
        {
            obj.insert(k.clone(), v.clone());
        }
        let state = obj["state"].as_str().unwrap_or("").to_string();
        assert!(STATES.contains(&state.as_str()), "bad state {state:?}");
        if !record
            .as_object()
            .is_some_and(|r| r.contains_key("locked_by_uuid"))
        {
            obj.insert(
                "locked_by_uuid".into(),
                if is_live(&state) {
                    json!(DISPATCHER_AUTH_UUID)
                } else {
                    Value::Null
                },
            );
        }
        if !record
            .as_object()
            .is_some_and(|r| r.contains_key("auth_uuid"))
        {
            obj.insert(
                "auth_uuid".into(),
                if is_live(&state) {
                    json!(AUTH_UUID)
                } else {
                    Value::Null
                },
            );
        }
        let uuid = obj["uuid"].as_str().unwrap_or_default().to_string();
        let mut st = self.shared.lock();
        if self.shared.mode_2016 && state == "Queued" {
            st.legacy.insert(uuid.clone());
        }
        st.containers.insert(uuid, rec);
    }

    /// Add a Locked container whose record is nested `levels` deep in all (a json
    /// mount's content of nested arrays), otherwise valid and served as usual; from 128
    /// levels on serde_json refuses to read it (issue 10, point 6). It can be updated
    /// like any record, e.g. to Cancelled with a runtime_status.
    pub fn add_deeply_nested_container(&self, uuid: &str, levels: usize) {
        assert!(
            levels >= 4,
            "record > mounts > mount > content: at least 4 levels"
        );
        let mut content = json!([]);
        for _ in 4..levels {
            content = json!([content]);
        }
        self.add_container(json!({
            "uuid": uuid,
            "mounts": {
                "/tmp": {"kind": "tmp", "capacity": 1000000},
                "/deep.json": {"kind": "json", "content": content},
            },
        }));
    }

    pub fn container(&self, uuid: &str) -> Value {
        self.shared
            .lock()
            .containers
            .get(uuid)
            .cloned()
            .unwrap_or_else(|| panic!("no container {uuid}"))
    }

    pub fn container_updates(&self, uuid: &str) -> Vec<Value> {
        self.shared
            .lock()
            .updates
            .get(uuid)
            .cloned()
            .unwrap_or_default()
    }

    /// Overwrite fields of a container record without any rule checks.
    pub fn set_container_fields(&self, uuid: &str, fields: Value) {
        let mut st = self.shared.lock();
        let rec = st
            .containers
            .get_mut(uuid)
            .unwrap_or_else(|| panic!("no container {uuid}"));
        for (k, v) in fields.as_object().expect("fields must be an object") {
            rec[k.as_str()] = v.clone();
        }
    }

    pub fn set_secret_mounts(&self, uuid: &str, mounts: Value) {
        self.shared
            .lock()
            .secret_mounts
            .insert(uuid.to_string(), mounts);
    }

    pub fn rejected(&self) -> Vec<Rejection> {
        self.shared.lock().rejected.clone()
    }

    // ---------------------------------------------------------- collections

    /// Store `files` as a collection (data in keep blocks on both services)
    /// and return its PDH.
    pub fn add_collection(&self, files: &[(&str, &[u8])]) -> String {
        // group by directory, keeping the caller's order within a stream
        let mut streams: BTreeMap<String, Vec<(String, &[u8])>> = BTreeMap::new();
        for (path, data) in files {
            let path = path.trim_start_matches("./").trim_start_matches('/');
            let (dir, name) = match path.rsplit_once('/') {
                Some((d, n)) => (format!("./{d}"), n.to_string()),
                None => (".".to_string(), path.to_string()),
            };
            streams.entry(dir).or_default().push((name, data));
        }
        let mut manifest = String::new();
        for (dir, files) in streams {
            let mut all = Vec::new();
            let mut segs = Vec::new();
            for (name, data) in &files {
                segs.push(format!(
                    "{}:{}:{}",
                    all.len(),
                    data.len(),
                    escape_name(name)
                ));
                all.extend_from_slice(data);
            }
            let mut locs = Vec::new();
            if all.is_empty() {
                locs.push(format!("{EMPTY_BLOCK_HASH}+0"));
            }
            for chunk in all.chunks(BLOCK_SIZE) {
                locs.push(self.add_block(chunk));
            }
            manifest.push_str(&escape_name(&dir));
            for l in locs {
                manifest.push(' ');
                manifest.push_str(&l);
            }
            for s in segs {
                manifest.push(' ');
                manifest.push_str(&s);
            }
            manifest.push('\n');
        }
        self.add_manifest(&manifest)
    }

    /// Store `data` as one block on both keep services; returns `hash+size`.
    pub fn add_block(&self, data: &[u8]) -> String {
        let hash = md5_hex(data);
        let mut st = self.shared.lock();
        let data = Arc::new(data.to_vec());
        for svc in st.blocks.iter_mut() {
            svc.insert(hash.clone(), data.clone());
        }
        format!("{hash}+{}", data.len())
    }

    /// Store a manifest (signatures stripped; blocks need not exist) as a
    /// new collection; returns its PDH. Panics on a syntax error.
    pub fn add_manifest(&self, manifest_text: &str) -> String {
        if let Err(e) = parse_manifest(manifest_text) {
            panic!("add_manifest: invalid manifest: {e}");
        }
        self.add_manifest_unchecked(manifest_text)
    }

    /// Store a manifest without checking its syntax, as a server that let a hostile one
    /// in would (for tests of what crunch-run refuses); returns its PDH.
    pub fn add_manifest_unchecked(&self, manifest_text: &str) -> String {
        let mut st = self.shared.lock();
        let mut rec = Map::new();
        rec.insert("name".into(), Value::Null);
        store_collection(&mut st, rec, manifest_text).pdh
    }

    pub fn collection(&self, pdh_or_uuid: &str) -> Option<Value> {
        let st = self.shared.lock();
        find_collection(&st, pdh_or_uuid).map(|c| collection_json(c, &c.manifest))
    }

    pub fn collection_manifest(&self, pdh_or_uuid: &str) -> Option<String> {
        let st = self.shared.lock();
        find_collection(&st, pdh_or_uuid).map(|c| c.manifest.clone())
    }

    pub fn collections_created(&self) -> Vec<Value> {
        self.shared.lock().collections_created.clone()
    }

    pub fn collections_updated(&self) -> Vec<Value> {
        self.shared.lock().collections_updated.clone()
    }

    /// The manifests of every collection create or update that set a trash date (the
    /// interim log saves of crunch-run), in order.
    pub fn manifests_saved_with_trash_date(&self) -> Vec<String> {
        let st = self.shared.lock();
        st.collections_created
            .iter()
            .chain(&st.collections_updated)
            .filter(|c| c["trash_at"].is_string())
            .filter_map(|c| c["manifest_text"].as_str().map(str::to_string))
            .collect()
    }

    /// The bytes of file `path` ("foo", "./foo" or "dir/foo") of a stored
    /// collection, or None if the collection/file/any block is missing.
    pub fn read_file(&self, pdh_or_uuid: &str, path: &str) -> Option<Vec<u8>> {
        let manifest = find_collection(&self.shared.lock(), pdh_or_uuid)?
            .manifest
            .clone();
        self.read_manifest_file(&manifest, path)
    }

    /// The bytes of file `path` of a manifest (signed or not) whose blocks are stored.
    pub fn read_manifest_file(&self, manifest: &str, path: &str) -> Option<Vec<u8>> {
        let st = self.shared.lock();
        let want = path.trim_start_matches("./").trim_start_matches('/');
        let streams = parse_manifest(&strip_signatures(manifest)).ok()?;
        let mut out = Vec::new();
        let mut found = false;
        for s in streams {
            let dir = s.name.strip_prefix("./").unwrap_or("");
            // lazily assemble this stream's data
            let mut data: Option<Vec<u8>> = None;
            for (pos, size, name) in &s.files {
                let full = if dir.is_empty() {
                    name.clone()
                } else {
                    format!("{dir}/{name}")
                };
                if full != want {
                    continue;
                }
                found = true;
                if data.is_none() {
                    let mut d = Vec::new();
                    for l in &s.locators {
                        if l.size == 0 {
                            continue;
                        }
                        let b = st.blocks.iter().find_map(|svc| svc.get(&l.hash))?;
                        if b.len() as u64 != l.size {
                            return None;
                        }
                        d.extend_from_slice(b);
                    }
                    data = Some(d);
                }
                let d = data.as_ref()?;
                out.extend_from_slice(&d[*pos as usize..(*pos + *size) as usize]);
            }
        }
        found.then_some(out)
    }

    pub fn keep_blocks(&self) -> usize {
        let st = self.shared.lock();
        let all: HashSet<&String> = st.blocks.iter().flat_map(|m| m.keys()).collect();
        all.len()
    }

    pub fn keep_puts(&self) -> usize {
        self.shared.lock().keep_puts
    }

    pub fn keep_block(&self, hash: &str) -> Option<Vec<u8>> {
        let st = self.shared.lock();
        st.blocks
            .iter()
            .find_map(|m| m.get(hash))
            .map(|d| d.to_vec())
    }

    /// Sign `hash+size` for `token` as this fake's keep services would.
    pub fn sign_locator(&self, bare_locator: &str, token: &str) -> String {
        let l = Locator::parse(bare_locator).expect("locator hash+size");
        sign_locator(
            &self.shared.key,
            &l.hash,
            l.size,
            token,
            now_unix() + BLOB_SIGNATURE_TTL,
        )
    }

    pub fn keep_requests(&self) -> Vec<KeepRecorded> {
        self.shared.lock().keep_requests.clone()
    }

    // --------------------------------------------------------- logs/requests

    pub fn logs(&self) -> Vec<LogEntry> {
        self.shared.lock().logs.clone()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    // ------------------------------------------------------- fault injection

    /// Answer the matching API requests (method or "*", path prefix such as
    /// "/arvados/v1/containers/") with `status` instead of handling them.
    pub fn fail_api(&self, method: &str, path_prefix: &str, status: u16, times: Times) {
        self.shared.lock().api_faults.push(ApiFault {
            method: method.to_ascii_uppercase(),
            prefix: path_prefix.to_string(),
            status,
            remaining: times_left(times),
        });
    }

    /// Sleep `delay` before handling API requests whose path starts with
    /// `path_prefix` (other requests are unaffected).
    pub fn delay_api(&self, path_prefix: &str, delay: Duration) {
        self.shared
            .lock()
            .api_delays
            .push((path_prefix.to_string(), delay));
    }

    /// Make keep `method` ("PUT", "GET" — also covers HEAD — or "*") on the
    /// given services (indexes 0/1) answer `status`.
    pub fn fail_keep(&self, method: &str, services: &[usize], status: u16, times: Times) {
        self.shared.lock().keep_faults.push(KeepFault {
            method: method.to_ascii_uppercase(),
            services: services.to_vec(),
            status,
            remaining: times_left(times),
        });
    }

    pub fn delay_keep(&self, service: usize, delay: Duration) {
        self.shared.lock().keep_delays.insert(service, delay);
    }

    /// Keep service `service` refuses connections while down.
    pub fn set_keep_down(&self, service: usize, down: bool) {
        self.keep_fronts[service].set_down(down);
    }

    pub fn set_api_down(&self, down: bool) {
        self.api_front.set_down(down);
    }

    pub fn clear_faults(&self) {
        {
            let mut st = self.shared.lock();
            st.api_faults.clear();
            st.api_delays.clear();
            st.keep_faults.clear();
            st.keep_delays.clear();
            st.faults.clear();
        }
        for f in &self.keep_fronts {
            f.set_down(false);
        }
        self.api_front.set_down(false);
    }
}

impl Drop for FakeArvados {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.api_front.set_down(true);
        for f in &self.keep_fronts {
            f.set_down(true);
        }
    }
}

fn times_left(t: Times) -> Option<usize> {
    match t {
        Times::Always => None,
        Times::Next(n) => Some(n),
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn now_ts() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

fn is_live(state: &str) -> bool {
    state == "Locked" || state == "Running"
}

/// Go-SDK style manifest escaping: bytes in [\000-\040:\\] (and DEL) as
/// \NNN octal; other bytes, including multi-byte UTF-8, unchanged.
fn escape_name(name: &str) -> String {
    let mut out = Vec::new();
    for b in name.bytes() {
        if b <= 0x20 || b == b':' || b == b'\\' || b == 0x7f {
            out.extend_from_slice(format!("\\{b:03o}").as_bytes());
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).expect("escaping ASCII bytes keeps UTF-8 valid")
}

fn default_container(uuid: &str) -> Value {
    let now = now_ts();
    json!({
        "kind": "arvados#container",
        "etag": "1",
        "uuid": uuid,
        "owner_uuid": ADMIN_USER_UUID,
        "created_at": now,
        "modified_at": now,
        "modified_by_user_uuid": ADMIN_USER_UUID,
        "state": "Locked",
        "locked_by_uuid": DISPATCHER_AUTH_UUID,
        "lock_count": 1,
        "priority": 1,
        "command": ["echo", "hello"],
        "container_image": "d740a57097711e08eb9b2a93518f20ab+174",
        "cwd": "/tmp",
        "environment": {},
        "output_path": "/tmp",
        "output_glob": [],
        "mounts": {"/tmp": {"kind": "tmp", "capacity": 1000000}},
        "runtime_constraints": {"ram": 12000000000u64, "vcpus": 4, "API": false,
            "keep_cache_ram": 0, "keep_cache_disk": 2147483648u64,
            "gpu": {"stack": "", "device_count": 0, "driver_version": "",
                    "hardware_target": [], "vram": 0}},
        "scheduling_parameters": {"partitions": [], "preemptible": false,
            "max_run_time": 0, "supervisor": false},
        "runtime_status": {},
        "exit_code": null,
        "log": null,
        "output": null,
        "started_at": null,
        "finished_at": null,
        "auth_uuid": AUTH_UUID,
        "runtime_user_uuid": "zzzzz-tpzed-xurymjxw79nv3jz",
        "runtime_auth_scopes": ["all"],
        "gateway_address": null,
        "interactive_session_started": false,
        "output_storage_classes": ["default"],
        "output_properties": {},
        "cost": 0,
        "subrequests_cost": 0,
        "progress": 0,
        "service": false,
        "published_ports": {},
    })
}

// -------------------------------------------- latency, request times, connections

/// One server's share of the fake's `Timing`: its name, and the numbers of its
/// connections (counted by its front, looked up by each request's handler).
#[derive(Clone)]
struct Counted {
    timing: Arc<Timing>,
    server: String,
    numbers: ConnNumbers,
}

impl Counted {
    fn serve_one(&self, rq: Request, handle: impl FnOnce(Request)) {
        let conn = self.numbers.number(&rq);
        self.timing.serve_one(&self.server, conn, rq, handle);
    }
}

impl FakeArvados {
    /// Make every API and Keep request wait `latency` before it is handled (as a slow
    /// API server or a far network would); zero turns it off.
    pub fn set_latency(&self, latency: Duration) {
        self.timing.set_latency(latency);
    }

    /// Every request (API and Keep) handled so far, with its start and end, by start.
    pub fn timeline(&self) -> Vec<Timed> {
        self.timing.timeline()
    }

    /// TCP connections (each one TLS handshake) accepted so far, per server:
    /// ("api", n), ("keep0", n), ("keep1", n); servers never connected to are left out.
    pub fn connections(&self) -> Vec<(String, u64)> {
        self.timing.connections()
    }

    /// Forget the request times and connection counts so far.
    pub fn reset_timing(&self) {
        self.timing.reset();
    }
}

// -------------------------------------------------------------- TCP front

/// A TCP relay in front of each HTTPS server. It lets the fake refuse
/// connections (listener closed) and reset open keep-alive connections,
/// which the server alone does not do.
struct Front {
    addr: SocketAddr,
    listener: Arc<Mutex<Option<TcpListener>>>,
    conns: Arc<Mutex<HashMap<u64, TcpStream>>>,
}

impl Front {
    fn start(backend: SocketAddr, stop: Arc<AtomicBool>, counted: Counted) -> Front {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind front");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr");
        let listener = Arc::new(Mutex::new(Some(l)));
        let conns: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::new(Mutex::new(HashMap::new()));
        let (lc, cc) = (listener.clone(), conns.clone());
        thread::spawn(move || {
            let next = AtomicU64::new(0);
            while !stop.load(Ordering::SeqCst) {
                let accepted = {
                    let g = lc.lock().unwrap_or_else(|e| e.into_inner());
                    g.as_ref().and_then(|l| l.accept().ok())
                };
                match accepted {
                    Some((client, _)) => {
                        let id = next.fetch_add(1, Ordering::SeqCst);
                        let cc = cc.clone();
                        let number = counted.timing.accepted(&counted.server);
                        let numbers = counted.numbers.clone();
                        thread::spawn(move || relay(client, backend, cc, id, (numbers, number)));
                    }
                    None => thread::sleep(Duration::from_millis(2)),
                }
            }
            *lc.lock().unwrap_or_else(|e| e.into_inner()) = None;
        });
        Front {
            addr,
            listener,
            conns,
        }
    }

    fn set_down(&self, down: bool) {
        let mut g = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        if down {
            *g = None;
            let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            for (_, c) in conns.drain() {
                let _ = c.shutdown(Shutdown::Both);
            }
        } else if g.is_none() {
            for _ in 0..250 {
                if let Ok(l) = TcpListener::bind(self.addr) {
                    l.set_nonblocking(true).expect("nonblocking");
                    *g = Some(l);
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            panic!("could not re-open {}", self.addr);
        }
    }
}

fn relay(
    client: TcpStream,
    backend: SocketAddr,
    conns: Arc<Mutex<HashMap<u64, TcpStream>>>,
    id: u64,
    (numbers, number): (ConnNumbers, u64),
) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect(backend) else {
        return;
    };
    if let Ok(local) = server.local_addr() {
        numbers.register(local.port(), number);
    }
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    if let Ok(c) = client.try_clone() {
        conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, c);
    }
    let (Ok(mut c_read), Ok(mut s_write)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || {
        let _ = io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let _ = io::copy(&mut s_read, &mut c_write);
    let _ = c_write.shutdown(Shutdown::Both);
    let _ = s_read.shutdown(Shutdown::Both);
    let _ = up.join();
    conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
}

// ---------------------------------------------------------- HTTP plumbing

struct Reply {
    status: u16,
    /// Shared, so that a Keep GET hands out the stored block without copying it.
    body: Arc<Vec<u8>>,
    content_type: &'static str,
    headers: Vec<(String, String)>,
    /// true for injected faults (not recorded as rejections)
    injected: bool,
}

impl Reply {
    fn json(status: u16, v: &Value) -> Reply {
        Reply {
            status,
            body: Arc::new(serde_json::to_vec(v).unwrap_or_default()),
            content_type: "application/json",
            headers: Vec::new(),
            injected: false,
        }
    }
    fn ok(v: Value) -> Reply {
        Reply::json(200, &v)
    }
    fn error(status: u16, msg: impl Into<String>) -> Reply {
        let msg = msg.into();
        Reply::json(
            status,
            &json!({"errors": [msg], "error_token": "1700000000+0123abcd"}),
        )
    }
    fn errors(status: u16, msgs: Vec<String>) -> Reply {
        Reply::json(
            status,
            &json!({"errors": msgs, "error_token": "1700000000+0123abcd"}),
        )
    }
    fn text(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            body: Arc::new(body.into()),
            content_type: "text/plain",
            headers: Vec::new(),
            injected: false,
        }
    }
    fn message(&self) -> String {
        if self.content_type == "application/json"
            && let Ok(v) = serde_json::from_slice::<Value>(&self.body)
            && let Some(a) = v["errors"].as_array()
        {
            return a
                .iter()
                .map(|m| m.as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
                .join("; ");
        }
        String::from_utf8_lossy(&self.body).trim().to_string()
    }
}

fn send(rq: Request, reply: Reply) {
    // Like keepstore and the API server: a Content-Length, never chunked encoding.
    let mut headers = vec![("Content-Type".to_string(), reply.content_type.to_string())];
    headers.extend(reply.headers);
    super::fake_timing::responding();
    let _ = rq.respond(Response {
        status: reply.status,
        headers,
        body: reply.body,
    });
}

fn header(rq: &Request, name: &str) -> Option<String> {
    rq.headers()
        .iter()
        .find(|h| h.field.eq_ignore_ascii_case(name))
        .map(|h| h.value.clone())
}

fn bearer(rq: &Request) -> Option<String> {
    let v = header(rq, "Authorization")?;
    let v = v.trim();
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("OAuth2 "))
        .map(|t| t.trim().to_string())
}

/// JSON-decode a parameter value if it is JSON, else keep it as a string
/// (the Go SDK sends strings raw and everything else JSON-encoded).
fn param_value(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

#[derive(Debug, Clone, PartialEq)]
enum Caller {
    Admin,
    /// container token, with the container uuid if the token names one
    Container(Option<String>),
}

fn identify(st: &State, token: Option<&str>) -> Option<Caller> {
    let token = token?;
    if token == ADMIN_TOKEN {
        return Some(Caller::Admin);
    }
    let named: Option<Option<String>> = if token == AUTH_SECRET {
        Some(None)
    } else if let Some(rest) = token.strip_prefix("v2/") {
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [u, s] if *u == AUTH_UUID && *s == AUTH_SECRET => Some(None),
            [u, s, c] if *u == AUTH_UUID && *s == AUTH_SECRET => Some(Some(c.to_string())),
            _ => None,
        }
    } else {
        None
    };
    let named = named?;
    let valid = st.containers.values().any(|c| {
        is_live(c["state"].as_str().unwrap_or(""))
            && named
                .as_deref()
                .is_none_or(|u| c["uuid"].as_str() == Some(u))
    });
    valid.then_some(Caller::Container(named))
}

// --------------------------------------------------------------- the API

fn handle_api(sh: &Shared, mut rq: Request) {
    let method = rq.method().to_string().to_ascii_uppercase();
    let url = rq.url().to_string();
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (url.clone(), String::new()),
    };
    let token = bearer(&rq);
    let ctype = header(&rq, "Content-Type").unwrap_or_default();
    let mut raw = Vec::new();
    let read_ok = rq.as_reader().read_to_end(&mut raw).is_ok();

    // merged parameters: query, then body
    let mut params = Map::new();
    for (k, v) in parse_pairs(&query) {
        params.insert(k, param_value(&v));
    }
    let mut body_error = None;
    if !read_ok {
        body_error = Some("could not read request body".to_string());
    } else if ctype.contains("application/x-www-form-urlencoded") {
        for (k, v) in parse_pairs(&String::from_utf8_lossy(&raw)) {
            params.insert(k, param_value(&v));
        }
    } else if !raw.iter().all(|b| b.is_ascii_whitespace()) {
        match serde_json::from_slice::<Value>(&raw) {
            Ok(Value::Object(m)) => params.extend(m),
            Ok(_) => body_error = Some("JSON body must be an object".into()),
            Err(e) => body_error = Some(format!("invalid JSON body: {e}")),
        }
    }

    if !per_call_fault(sh, 0, false, &method, &path) {
        return;
    }
    // delays happen outside the lock
    let delay = {
        let st = sh.lock();
        st.api_delays
            .iter()
            .filter(|(p, _)| path.starts_with(p.as_str()))
            .map(|(_, d)| *d)
            .max()
    };
    if let Some(d) = delay {
        thread::sleep(d);
    }

    let reply = {
        let mut st = sh.lock();
        let fault = st.api_faults.iter_mut().find(|f| {
            (f.method == "*" || f.method == method)
                && path.starts_with(f.prefix.as_str())
                && f.remaining != Some(0)
        });
        if let Some(f) = fault {
            if let Some(n) = f.remaining.as_mut() {
                *n -= 1;
            }
            let mut r = Reply::error(f.status, format!("injected fault: status {}", f.status));
            r.injected = true;
            r
        } else if let Some(e) = body_error {
            Reply::error(400, e)
        } else {
            route_api(sh, &mut st, &method, &path, &params, token.as_deref())
        }
    };

    {
        let mut st = sh.lock();
        st.requests.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            body: Value::Object(params),
            token: token.clone(),
            status: reply.status,
        });
        st.note_rejection(method, path, &reply);
    }
    send(rq, reply);
}

/// The per-call fault for this request (faults.rs), applied: false if its connection was
/// reset, and the request must go unanswered.
fn per_call_fault(sh: &Shared, front: usize, keep: bool, method: &str, path: &str) -> bool {
    let action = sh.lock().faults.action(keep, method, path);
    match action {
        Action::Handle => true,
        Action::Delay(d) => {
            thread::sleep(d);
            true
        }
        Action::Reset => {
            faults::reset_all(&sh.front_conns[front]);
            false
        }
    }
}

fn route_api(
    sh: &Shared,
    st: &mut State,
    method: &str,
    path: &str,
    params: &Map<String, Value>,
    token: Option<&str>,
) -> Reply {
    if method == "GET" && path == "/discovery/v1/apis/arvados/v1/rest" {
        return discovery(sh);
    }
    let Some(rest) = path.strip_prefix("/arvados/v1/") else {
        return Reply::error(404, format!("no route for {method} {path}"));
    };
    let Some(caller) = identify(st, token) else {
        return Reply::error(401, "Not logged in");
    };
    let tok = token.unwrap_or_default();
    let segs: Vec<String> = rest
        .trim_end_matches('/')
        .split('/')
        .map(super::fake_support::path_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(|s| s.as_str()).collect();
    match (method, segs.as_slice()) {
        ("GET", ["containers"]) => list_containers(st, params),
        ("GET", ["containers", uuid]) => get_container(st, &caller, uuid, params),
        ("PUT" | "PATCH", ["containers", uuid]) => update_container(st, &caller, uuid, params),
        ("GET", ["containers", uuid, "auth"]) => container_auth(st, &caller, uuid),
        ("GET", ["containers", uuid, "secret_mounts"]) => secret_mounts(st, &caller, uuid),
        ("POST", ["containers", uuid, "lock"]) => lock_container(st, &caller, uuid, true),
        ("POST", ["containers", uuid, "unlock"]) => lock_container(st, &caller, uuid, false),
        ("GET", ["collections", id]) => get_collection(sh, st, id, tok, params),
        ("POST", ["collections"]) => create_collection(sh, st, tok, params),
        ("PUT" | "PATCH", ["collections", uuid]) => update_collection(sh, st, tok, uuid, params),
        ("POST", ["logs"]) => create_log(st, params),
        ("GET", ["keep_services", "accessible"]) | ("GET", ["keep_services"]) => keep_services(sh),
        ("GET", ["config"]) => Reply::ok(json!({
            "ClusterID": "zzzzz",
            "Collections": {"BlobSigningTTL": "336h", "DefaultReplication": 2,
                            "BlobSigning": true},
            "Services": {"Controller": {"ExternalURL": sh.api_root}},
        })),
        ("GET", ["users", "current"]) => Reply::ok(json!({
            "kind": "arvados#user",
            "uuid": ADMIN_USER_UUID,
            "is_admin": caller == Caller::Admin,
            "is_active": true,
            "username": "admin",
        })),
        _ => Reply::error(404, format!("no route for {method} {path}")),
    }
}

fn discovery(sh: &Shared) -> Reply {
    let mut d: Value = serde_json::from_str(DISCOVERY).expect("discovery JSON");
    let root = sh.api_root.clone();
    d["rootUrl"] = json!(root);
    d["baseUrl"] = json!(format!("{root}arvados/v1/"));
    d["servicePath"] = json!("arvados/v1/");
    d["basePath"] = json!("/arvados/v1/");
    d["uuidPrefix"] = json!("zzzzz");
    d["blobSignatureTtl"] = json!(BLOB_SIGNATURE_TTL);
    d["defaultCollectionReplication"] = json!(2);
    d["maxRequestSize"] = json!(134217728);
    Reply::ok(d)
}

/// Apply `select` (array of field names) to a record.
fn select(v: Value, params: &Map<String, Value>) -> Value {
    let Some(sel) = params.get("select").and_then(|s| s.as_array()) else {
        return v;
    };
    let mut out = Map::new();
    for f in sel.iter().filter_map(|f| f.as_str()) {
        if let Some(x) = v.get(f) {
            out.insert(f.to_string(), x.clone());
        }
    }
    Value::Object(out)
}

/// The resource attributes: `params[name]` (object, or a JSON string of
/// one), else the top-level keys other than request options (Rails
/// ParamsWrapper).
fn resource_attrs(params: &Map<String, Value>, name: &str) -> Result<Map<String, Value>, String> {
    match params.get(name) {
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(format!("{name} must be a JSON object")),
        },
        Some(_) => Err(format!("{name} must be a JSON object")),
        None => {
            const OPTIONS: [&str; 7] = [
                "select",
                "ensure_unique_name",
                "cluster_id",
                "include_trash",
                "replace_files",
                "reader_tokens",
                "alt",
            ];
            Ok(params
                .iter()
                .filter(|(k, _)| !OPTIONS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect())
        }
    }
}

// ------------------------------------------------------------ containers

fn list_containers(st: &State, params: &Map<String, Value>) -> Reply {
    let filters = match params.get("filters") {
        Some(Value::Array(a)) => a.clone(),
        Some(Value::String(s)) => serde_json::from_str::<Vec<Value>>(s).unwrap_or_default(),
        _ => Vec::new(),
    };
    let items: Vec<Value> = st
        .containers
        .values()
        .filter(|c| {
            filters
                .iter()
                .all(|f| match f.as_array().map(|a| a.as_slice()) {
                    Some([Value::String(attr), Value::String(op), val]) if op == "=" => {
                        c.get(attr) == Some(val)
                    }
                    Some([Value::String(attr), Value::String(op), Value::Array(vals)])
                        if op == "in" =>
                    {
                        c.get(attr).is_some_and(|x| vals.contains(x))
                    }
                    _ => false,
                })
        })
        .map(|c| select(c.clone(), params))
        .collect();
    let n = items.len();
    Reply::ok(json!({"kind": "arvados#containerList", "items": items,
                     "items_available": n, "offset": 0, "limit": 100}))
}

fn container_visible(caller: &Caller, uuid: &str) -> bool {
    match caller {
        Caller::Admin => true,
        Caller::Container(None) => true,
        Caller::Container(Some(u)) => u == uuid,
    }
}

fn get_container(st: &State, caller: &Caller, uuid: &str, params: &Map<String, Value>) -> Reply {
    match st.containers.get(uuid) {
        Some(c) if container_visible(caller, uuid) => Reply::ok(select(c.clone(), params)),
        _ => Reply::error(404, "Path not found"),
    }
}

fn container_auth(st: &State, caller: &Caller, uuid: &str) -> Reply {
    let Some(c) = st.containers.get(uuid) else {
        return Reply::error(404, "Path not found");
    };
    if *caller != Caller::Admin {
        return Reply::error(403, "Not locked by your token");
    }
    if !is_live(c["state"].as_str().unwrap_or("")) {
        return Reply::error(403, "Not locked by your token");
    }
    Reply::ok(json!({
        "kind": "arvados#apiClientAuthorization",
        "uuid": AUTH_UUID,
        "api_token": AUTH_SECRET,
        "owner_uuid": c["runtime_user_uuid"],
        "scopes": ["all"],
        "expires_at": null,
    }))
}

fn secret_mounts(st: &State, caller: &Caller, uuid: &str) -> Reply {
    if !st.containers.contains_key(uuid) {
        return Reply::error(404, "Path not found");
    }
    match caller {
        Caller::Container(n) if n.as_deref().is_none_or(|u| u == uuid) => {
            let m = st.secret_mounts.get(uuid).cloned().unwrap_or(json!({}));
            Reply::ok(json!({ "secret_mounts": m }))
        }
        _ => Reply::error(403, "Token is not associated with this container."),
    }
}

fn lock_container(st: &mut State, caller: &Caller, uuid: &str, lock: bool) -> Reply {
    if *caller != Caller::Admin {
        return Reply::error(403, "PermissionDenied");
    }
    let Some(c) = st.containers.get_mut(uuid) else {
        return Reply::error(404, "Path not found");
    };
    let state = c["state"].as_str().unwrap_or("").to_string();
    if lock {
        if state != "Queued" || c["priority"].as_i64().unwrap_or(0) <= 0 {
            return Reply::error(
                422,
                format!("cannot lock when {state} and priority {}", c["priority"]),
            );
        }
        c["state"] = json!("Locked");
        c["locked_by_uuid"] = json!(DISPATCHER_AUTH_UUID);
        c["auth_uuid"] = json!(AUTH_UUID);
        c["lock_count"] = json!(c["lock_count"].as_i64().unwrap_or(0) + 1);
    } else {
        if state != "Locked" {
            return Reply::error(422, format!("cannot unlock when {state}"));
        }
        c["state"] = json!("Queued");
        c["locked_by_uuid"] = Value::Null;
        c["auth_uuid"] = Value::Null;
        c["runtime_status"] = json!({});
    }
    c["modified_at"] = json!(now_ts());
    Reply::ok(json!({
        "uuid": uuid, "state": c["state"], "priority": c["priority"],
        "auth_uuid": c["auth_uuid"], "locked_by_uuid": c["locked_by_uuid"],
    }))
}

fn transitions(legacy: bool, from: &str) -> &'static [&'static str] {
    if legacy {
        match from {
            "Queued" => &["Running", "Cancelled"],
            "Running" => &["Complete", "Cancelled"],
            _ => &[],
        }
    } else {
        match from {
            "Queued" => &["Locked", "Cancelled"],
            "Locked" => &["Queued", "Running", "Cancelled"],
            "Running" => &["Complete", "Cancelled"],
            "Complete" => &["Cancelled"],
            _ => &[],
        }
    }
}

/// Attributes (besides `state`) the admin/dispatcher may change, per
/// reference §2.5 (current) or the Jan-2016 container.rb (legacy).
fn permitted(legacy: bool, old: &Value, from: &str, to: &str) -> Vec<&'static str> {
    let changed = from != to;
    if legacy {
        return match to {
            "Queued" => vec!["priority"],
            "Running" if changed => vec!["started_at"],
            "Running" => vec!["priority", "progress"],
            "Complete" if from == "Running" => vec!["finished_at", "output", "log", "exit_code"],
            "Cancelled" if from == "Running" => vec!["finished_at", "output", "log"],
            "Cancelled" if from == "Queued" => vec!["finished_at"],
            _ => vec![],
        };
    }
    const PROGRESS: [&str; 8] = [
        "progress",
        "runtime_status",
        "subrequests_cost",
        "cost",
        "log",
        "output",
        "output_properties",
        "exit_code",
    ];
    let mut p: Vec<&'static str> = Vec::new();
    match to {
        "Locked" => p.extend(["priority", "runtime_status", "log", "lock_count"]),
        "Queued" => p.push("priority"),
        "Running" => {
            p.extend(["priority", "gateway_address"]);
            p.extend(PROGRESS);
            if changed {
                p.push("started_at");
            }
            if old["interactive_session_started"] != json!(true) {
                p.push("interactive_session_started");
            }
        }
        "Complete" if from == "Running" => {
            p.push("finished_at");
            p.extend(PROGRESS);
        }
        "Cancelled" if from == "Running" => {
            p.push("finished_at");
            p.extend(PROGRESS);
        }
        "Cancelled" if from == "Queued" || from == "Locked" => {
            p.extend(["finished_at", "log", "runtime_status", "cost"])
        }
        _ => {}
    }
    p
}

/// Rails "really changed": numbers compare by value (0 == 0.0).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn update_container(
    st: &mut State,
    caller: &Caller,
    uuid: &str,
    params: &Map<String, Value>,
) -> Reply {
    let Some(old) = st.containers.get(uuid).cloned() else {
        return Reply::error(404, "Path not found");
    };
    if !container_visible(caller, uuid) {
        return Reply::error(404, "Path not found");
    }
    let patch = match resource_attrs(params, "container") {
        Ok(p) => p,
        Err(e) => return Reply::error(422, e),
    };
    let legacy = st.legacy.contains(uuid);
    let from = old["state"].as_str().unwrap_or("").to_string();
    let to = match patch.get("state") {
        None => from.clone(),
        Some(Value::String(s)) if STATES.contains(&s.as_str()) => s.clone(),
        Some(v) => return Reply::error(422, format!("state is not included in the list ({v})")),
    };
    let mut errors = Vec::new();
    if to != from && !transitions(legacy, &from).contains(&to.as_str()) {
        errors.push(format!("state cannot change from {from} to {to}"));
    }
    let mut allowed = permitted(legacy, &old, &from, &to);
    if let Caller::Container(_) = caller {
        if from != "Running" {
            return Reply::error(403, "PermissionDenied");
        }
        allowed.push("finished_at");
        allowed.retain(|f| *f != "log" && *f != "priority");
    }
    let known = default_container(uuid);
    for (k, v) in &patch {
        if k == "state" {
            continue;
        }
        if known.get(k).is_none() {
            errors.push(format!("unknown attribute '{k}' for Container."));
            continue;
        }
        let was = old.get(k).cloned().unwrap_or(Value::Null);
        if !same_value(&was, v) && !allowed.contains(&k.as_str()) {
            errors.push(format!(
                "{k} cannot be modified in state '{to}' ({}, {})",
                ruby_inspect(&was),
                ruby_inspect(v)
            ));
        }
    }
    // type and reference checks
    if let Some(v) = patch.get("exit_code")
        && !(v.is_null() || v.is_i64())
    {
        errors.push(format!("exit_code must be an integer (got {v})"));
    }
    for f in ["priority", "lock_count"] {
        if let Some(v) = patch.get(f)
            && !v.is_i64()
        {
            errors.push(format!("{f} must be an integer (got {v})"));
        }
    }
    for f in ["cost", "subrequests_cost", "progress"] {
        if let Some(v) = patch.get(f)
            && !v.is_number()
        {
            errors.push(format!("{f} must be a number (got {v})"));
        }
    }
    if let Some(v) = patch.get("runtime_status") {
        match v.as_object() {
            None => errors.push("runtime_status must be a JSON object".into()),
            Some(m) => {
                for k in [
                    "error",
                    "errorDetail",
                    "warning",
                    "warningDetail",
                    "activity",
                    "preemptionNotice",
                ] {
                    if m.get(k).is_some_and(|x| !x.is_string()) {
                        errors.push(format!("runtime_status '{k}' value must be a string"));
                    }
                }
            }
        }
    }
    for f in ["log", "output"] {
        match patch.get(f) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                let was = old.get(f).cloned().unwrap_or(Value::Null);
                if was.as_str() != Some(s) {
                    if !looks_like_pdh(s) {
                        errors.push(format!("{f} must be a portable data hash (got {s:?})"));
                    } else if !st.collections.iter().any(|c| &c.pdh == s) {
                        errors.push(format!(
                            "{f} collection must exist and be readable by current user."
                        ));
                    }
                }
            }
            Some(v) => errors.push(format!("{f} must be a string (got {v})")),
        }
    }
    if let Some(v) = patch.get("gateway_address")
        && !(v.is_null() || v.is_string())
    {
        errors.push(format!("gateway_address must be a string (got {v})"));
    }
    if !errors.is_empty() {
        return Reply::errors(422, errors);
    }

    // apply
    let mut rec = old.clone();
    for (k, v) in &patch {
        rec[k.as_str()] = v.clone();
    }
    let now = now_ts();
    if to != from {
        if to == "Running" && patch.get("started_at").is_none_or(|v| v.is_null()) {
            rec["started_at"] = json!(now);
        }
        if (to == "Complete" || to == "Cancelled")
            && patch.get("finished_at").is_none_or(|v| v.is_null())
        {
            rec["finished_at"] = json!(now);
        }
        if from == "Locked" && to == "Queued" {
            rec["runtime_status"] = json!({});
        }
        if is_live(&to) {
            if rec["locked_by_uuid"].is_null() {
                rec["locked_by_uuid"] = json!(DISPATCHER_AUTH_UUID);
            }
            rec["auth_uuid"] = json!(AUTH_UUID);
        } else {
            rec["locked_by_uuid"] = Value::Null;
            rec["auth_uuid"] = Value::Null;
        }
        if to == "Complete" || to == "Cancelled" {
            st.secret_mounts.remove(uuid);
        }
    }
    rec["modified_at"] = json!(now);
    let etag = rec["etag"]
        .as_str()
        .unwrap_or("0")
        .parse::<u64>()
        .unwrap_or(0)
        + 1;
    rec["etag"] = json!(etag.to_string());
    st.containers.insert(uuid.to_string(), rec.clone());
    st.updates
        .entry(uuid.to_string())
        .or_default()
        .push(Value::Object(patch));
    Reply::ok(select(rec, params))
}

// ----------------------------------------------------------- collections

fn find_collection<'a>(st: &'a State, id: &str) -> Option<&'a Collection> {
    st.collections
        .iter()
        .find(|c| c.uuid == id)
        .or_else(|| st.collections.iter().find(|c| c.pdh == id))
}

fn collection_json(c: &Collection, manifest: &str) -> Value {
    let mut m = c.record.clone();
    m.insert("kind".into(), json!("arvados#collection"));
    m.insert("uuid".into(), json!(c.uuid));
    m.insert("portable_data_hash".into(), json!(c.pdh));
    m.insert("manifest_text".into(), json!(manifest));
    Value::Object(m)
}

fn store_collection(st: &mut State, mut record: Map<String, Value>, manifest: &str) -> Collection {
    let id = st.next_id;
    st.next_id += 1;
    let now = now_ts();
    for (k, v) in [
        ("owner_uuid", json!(ADMIN_USER_UUID)),
        ("created_at", json!(now)),
        ("modified_at", json!(now)),
        ("properties", json!({})),
        ("is_trashed", json!(false)),
        ("trash_at", Value::Null),
        ("delete_at", Value::Null),
        ("storage_classes_desired", json!(["default"])),
    ] {
        record.entry(k.to_string()).or_insert(v);
    }
    let stripped = strip_signatures(manifest);
    let c = Collection {
        uuid: format!("zzzzz-4zz18-{id:015x}"),
        pdh: portable_data_hash(&stripped),
        manifest: stripped,
        record,
    };
    st.collections.push(c.clone());
    c
}

fn get_collection(
    sh: &Shared,
    st: &State,
    id: &str,
    token: &str,
    params: &Map<String, Value>,
) -> Reply {
    match find_collection(st, id) {
        Some(c) => {
            let signed =
                sign_manifest(&sh.key, &c.manifest, token, now_unix() + BLOB_SIGNATURE_TTL);
            Reply::ok(select(collection_json(c, &signed), params))
        }
        None => Reply::error(404, "Path not found"),
    }
}

/// Validate manifest syntax and every locator's signature/existence.
fn check_manifest(sh: &Shared, st: &State, manifest: &str, token: &str) -> Vec<String> {
    let streams = match parse_manifest(manifest) {
        Ok(s) => s,
        Err(e) => return vec![format!("manifest_text is invalid: {e}")],
    };
    let now = now_unix();
    let mut errors = Vec::new();
    for s in &streams {
        for l in &s.locators {
            if l.hash == EMPTY_BLOCK_HASH && l.size == 0 {
                continue;
            }
            match check_signature(&sh.key, l, token, now) {
                Ok(()) => {}
                Err(p) => {
                    let what = match p {
                        SignatureProblem::Missing => "missing",
                        SignatureProblem::Malformed => "malformed",
                        SignatureProblem::Expired => "expired",
                        SignatureProblem::Invalid => "invalid",
                    };
                    errors.push(format!(
                        "Permission signature {what} for locator {}",
                        l.bare()
                    ));
                    continue;
                }
            }
            let exists = st
                .blocks
                .iter()
                .any(|svc| svc.get(&l.hash).is_some_and(|d| d.len() as u64 == l.size));
            if !exists {
                errors.push(format!("block {} not found in keep", l.bare()));
            }
        }
    }
    errors
}

fn is_trashed(rec: &Map<String, Value>) -> bool {
    if rec.get("is_trashed") == Some(&json!(true)) {
        return true;
    }
    match rec.get("trash_at").and_then(|t| t.as_str()) {
        Some(t) => parse_rfc3339(t).is_some_and(|t| t <= now_unix() as i64),
        None => false,
    }
}

/// Name uniqueness per owner among live collections; with
/// ensure_unique_name a clash gets " (<UTC time>)" appended, as Rails does.
fn unique_name(
    st: &State,
    rec: &mut Map<String, Value>,
    ensure_unique: bool,
    except_uuid: Option<&str>,
) -> Result<(), String> {
    let Some(name) = rec
        .get("name")
        .and_then(|n| n.as_str())
        .map(|s| s.to_string())
    else {
        return Ok(());
    };
    if is_trashed(rec) {
        return Ok(());
    }
    let owner = rec
        .get("owner_uuid")
        .and_then(|o| o.as_str())
        .unwrap_or(ADMIN_USER_UUID)
        .to_string();
    let taken = |n: &str| {
        st.collections.iter().any(|c| {
            Some(c.uuid.as_str()) != except_uuid
                && c.record.get("name").and_then(|x| x.as_str()) == Some(n)
                && c.record.get("owner_uuid").and_then(|x| x.as_str()) == Some(owner.as_str())
                && !is_trashed(&c.record)
        })
    };
    if !taken(&name) {
        return Ok(());
    }
    if !ensure_unique {
        return Err("name has already been taken".into());
    }
    let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let mut candidate = format!("{name} ({ts})");
    let mut i = 1;
    while taken(&candidate) {
        candidate = format!("{name} ({ts}) {i}");
        i += 1;
    }
    rec.insert("name".into(), json!(candidate));
    Ok(())
}

const COLLECTION_FIELDS: [&str; 12] = [
    "name",
    "manifest_text",
    "portable_data_hash",
    "owner_uuid",
    "trash_at",
    "delete_at",
    "is_trashed",
    "properties",
    "description",
    "storage_classes_desired",
    "replication_desired",
    "preserve_version",
];

fn create_collection(
    sh: &Shared,
    st: &mut State,
    token: &str,
    params: &Map<String, Value>,
) -> Reply {
    let mut attrs = match resource_attrs(params, "collection") {
        Ok(a) => a,
        Err(e) => return Reply::error(422, e),
    };
    let (manifest, mut errors) = collection_checks(sh, st, token, &attrs);
    let ensure_unique = params.get("ensure_unique_name") == Some(&json!(true))
        || params.get("ensure_unique_name") == Some(&json!("true"));
    if errors.is_empty()
        && let Err(e) = unique_name(st, &mut attrs, ensure_unique, None)
    {
        errors.push(e);
    }
    if !errors.is_empty() {
        return Reply::errors(422, errors);
    }
    let mut record = attrs.clone();
    record.remove("manifest_text");
    record.remove("portable_data_hash");
    let c = store_collection(st, record, &manifest);
    let mut created = attrs;
    created.insert("uuid".into(), json!(c.uuid));
    created.insert("portable_data_hash".into(), json!(c.pdh));
    st.collections_created.push(Value::Object(created));
    let signed = sign_manifest(&sh.key, &c.manifest, token, now_unix() + BLOB_SIGNATURE_TTL);
    Reply::ok(select(collection_json(&c, &signed), params))
}

/// Shared create/update checks; returns (manifest, errors).
fn collection_checks(
    sh: &Shared,
    st: &State,
    token: &str,
    attrs: &Map<String, Value>,
) -> (String, Vec<String>) {
    let mut errors = Vec::new();
    for k in attrs.keys() {
        if !COLLECTION_FIELDS.contains(&k.as_str()) && k != "uuid" {
            errors.push(format!("unknown attribute '{k}' for Collection."));
        }
    }
    let manifest = match attrs.get("manifest_text") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            errors.push(format!("manifest_text must be a string (got {v})"));
            String::new()
        }
    };
    errors.extend(check_manifest(sh, st, &manifest, token));
    if let Some(p) = attrs.get("portable_data_hash").and_then(|p| p.as_str()) {
        let pdh = portable_data_hash(&manifest);
        if p.get(..32) != pdh.get(..32) {
            errors.push(format!(
                "portable_data_hash {p} does not match manifest ({pdh})"
            ));
        }
    }
    for f in ["trash_at", "delete_at"] {
        match attrs.get(f) {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if parse_rfc3339(t).is_some() => {}
            Some(v) => errors.push(format!("{f} is not an RFC 3339 timestamp: {v}")),
        }
    }
    (manifest, errors)
}

fn update_collection(
    sh: &Shared,
    st: &mut State,
    token: &str,
    uuid: &str,
    params: &Map<String, Value>,
) -> Reply {
    let Some(idx) = st.collections.iter().position(|c| c.uuid == uuid) else {
        return Reply::error(404, "Path not found");
    };
    let mut attrs = match resource_attrs(params, "collection") {
        Ok(a) => a,
        Err(e) => return Reply::error(422, e),
    };
    let mut errors = Vec::new();
    let mut manifest = st.collections[idx].manifest.clone();
    if attrs.contains_key("manifest_text") {
        let (m, e) = collection_checks(sh, st, token, &attrs);
        manifest = m;
        errors.extend(e);
    } else {
        let (_, e) = collection_checks(sh, st, token, &Map::new());
        errors.extend(e);
        for k in attrs.keys() {
            if !COLLECTION_FIELDS.contains(&k.as_str()) && k != "uuid" {
                errors.push(format!("unknown attribute '{k}' for Collection."));
            }
        }
    }
    let mut merged = st.collections[idx].record.clone();
    for (k, v) in &attrs {
        if k != "manifest_text" && k != "portable_data_hash" {
            merged.insert(k.clone(), v.clone());
        }
    }
    let ensure_unique = params.get("ensure_unique_name") == Some(&json!(true));
    if errors.is_empty()
        && let Err(e) = unique_name(st, &mut merged, ensure_unique, Some(uuid))
    {
        errors.push(e);
    }
    if !errors.is_empty() {
        return Reply::errors(422, errors);
    }
    merged.insert("modified_at".into(), json!(now_ts()));
    let stripped = strip_signatures(&manifest);
    let c = &mut st.collections[idx];
    c.pdh = portable_data_hash(&stripped);
    c.manifest = stripped;
    c.record = merged;
    let c = c.clone();
    attrs.insert("uuid".into(), json!(c.uuid));
    attrs.insert("portable_data_hash".into(), json!(c.pdh));
    st.collections_updated.push(Value::Object(attrs));
    let signed = sign_manifest(&sh.key, &c.manifest, token, now_unix() + BLOB_SIGNATURE_TTL);
    Reply::ok(select(collection_json(&c, &signed), params))
}

// ------------------------------------------------------------------ logs

fn create_log(st: &mut State, params: &Map<String, Value>) -> Reply {
    let attrs = match resource_attrs(params, "log") {
        Ok(a) => a,
        Err(e) => return Reply::error(422, e),
    };
    let object_uuid = attrs.get("object_uuid").and_then(|v| v.as_str());
    let event_type = attrs.get("event_type").and_then(|v| v.as_str());
    let (Some(object_uuid), Some(event_type)) = (object_uuid, event_type) else {
        return Reply::error(422, "log needs string object_uuid and event_type");
    };
    let text = match attrs.get("properties").map(|p| p.get("text")) {
        None | Some(None) => String::new(),
        Some(Some(Value::String(s))) => s.clone(),
        Some(Some(v)) => {
            return Reply::error(422, format!("properties.text must be a string (got {v})"));
        }
    };
    let id = st.next_id;
    st.next_id += 1;
    st.logs.push(LogEntry {
        object_uuid: object_uuid.to_string(),
        event_type: event_type.to_string(),
        text,
    });
    let mut rec = attrs.clone();
    rec.insert("kind".into(), json!("arvados#log"));
    rec.insert("uuid".into(), json!(format!("zzzzz-57u5n-{id:015x}")));
    rec.insert("created_at".into(), json!(now_ts()));
    Reply::ok(select(Value::Object(rec), params))
}

fn keep_services(sh: &Shared) -> Reply {
    let items: Vec<Value> = sh
        .keep_ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            json!({
                "kind": "arvados#keepService",
                "uuid": format!("zzzzz-bi6l4-{i:015x}"),
                "service_host": "127.0.0.1",
                "service_port": port,
                "service_ssl_flag": true,
                "service_type": "disk",
                "read_only": false,
            })
        })
        .collect();
    let n = items.len();
    Reply::ok(json!({"kind": "arvados#keepServiceList", "items": items,
                     "items_available": n, "offset": 0, "limit": 100}))
}

// ------------------------------------------------------------------ keep

fn handle_keep(sh: &Shared, svc: usize, mut rq: Request) {
    let method = rq.method().to_string().to_ascii_uppercase();
    let path = rq.url().split('?').next().unwrap_or("").to_string();
    let token = bearer(&rq);
    let content_length = header(&rq, "Content-Length");

    let delay = sh.lock().keep_delays.get(&svc).copied();
    if let Some(d) = delay {
        thread::sleep(d);
    }

    if !per_call_fault(sh, svc + 1, true, &method, &path) {
        return;
    }
    // Read the body before answering (an unread body confuses keep-alive).
    let mut body = Vec::new();
    let read_ok = rq
        .as_reader()
        .take(BLOCK_SIZE as u64 + 1)
        .read_to_end(&mut body)
        .is_ok();

    let reply = {
        let mut st = sh.lock();
        let fault_method = if method == "HEAD" {
            "GET"
        } else {
            method.as_str()
        };
        let fault = st.keep_faults.iter_mut().find(|f| {
            (f.method == "*" || f.method == fault_method)
                && f.services.contains(&svc)
                && f.remaining != Some(0)
        });
        if let Some(f) = fault {
            if let Some(n) = f.remaining.as_mut() {
                *n -= 1;
            }
            let mut r = Reply::text(f.status, format!("injected fault: status {}\n", f.status));
            r.injected = true;
            r
        } else if !read_ok {
            Reply::text(400, "could not read body\n")
        } else {
            keep_route(
                sh,
                &mut st,
                svc,
                &method,
                &path,
                token.as_deref(),
                content_length,
                body,
            )
        }
    };
    {
        let mut st = sh.lock();
        st.keep_requests.push(KeepRecorded {
            service: svc,
            method: method.clone(),
            path: path.clone(),
            status: reply.status,
        });
        st.note_rejection(method, path, &reply);
    }
    send(rq, reply);
}

#[allow(clippy::too_many_arguments)]
fn keep_route(
    sh: &Shared,
    st: &mut State,
    svc: usize,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_length: Option<String>,
    body: Vec<u8>,
) -> Reply {
    let Some(token) = token.filter(|t| identify(st, Some(t)).is_some()) else {
        return Reply::text(401, "Unauthorized\n");
    };
    let target = path.trim_start_matches('/');
    match method {
        "PUT" => {
            let hash = target.split('+').next().unwrap_or("");
            if hash.len() != 32 || !is_lower_hex(hash) {
                return Reply::text(400, format!("bad block hash {target:?}\n"));
            }
            let Some(cl) = content_length else {
                return Reply::text(411, "Content-Length required\n");
            };
            if cl.trim().parse::<usize>().ok() != Some(body.len()) {
                return Reply::text(400, "Content-Length does not match body\n");
            }
            if body.len() > BLOCK_SIZE {
                return Reply::text(413, "block too large\n");
            }
            let got = md5_hex(&body);
            if got != hash {
                return Reply::text(422, format!("Hash mismatch: body md5 is {got}\n"));
            }
            let size = body.len() as u64;
            st.blocks[svc].insert(hash.to_string(), Arc::new(body));
            st.keep_puts += 1;
            let signed = sign_locator(&sh.key, hash, size, token, now_unix() + BLOB_SIGNATURE_TTL);
            let mut r = Reply::text(200, format!("{signed}\n"));
            r.headers = vec![
                ("X-Keep-Replicas-Stored".into(), "1".into()),
                (
                    "X-Keep-Storage-Classes-Confirmed".into(),
                    "default=1".into(),
                ),
            ];
            r
        }
        "GET" | "HEAD" => {
            let Some(loc) = Locator::parse(target) else {
                return Reply::text(
                    400,
                    format!("bad locator {target:?} (size hint required)\n"),
                );
            };
            if loc.hash == EMPTY_BLOCK_HASH && loc.size == 0 {
                let mut r = Reply::text(200, Vec::new());
                r.content_type = "application/octet-stream";
                return r;
            }
            if let Err(p) = check_signature(&sh.key, &loc, token, now_unix()) {
                return Reply::text(403, format!("Forbidden: signature {p:?}\n"));
            }
            match st.blocks[svc].get(&loc.hash) {
                Some(d) if d.len() as u64 == loc.size => {
                    let mut r = Reply::text(200, Vec::new());
                    r.body = d.clone();
                    r.content_type = "application/octet-stream";
                    r
                }
                _ => Reply::text(404, "Not Found\n"),
            }
        }
        _ => Reply::text(405, "Method Not Allowed\n"),
    }
}
