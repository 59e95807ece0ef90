// Self-test for the fake Arvados server used by crunch-run's integration
// tests (tests/common/fake_arvados.rs): proves it enforces the API and Keep
// rules crunch-run must respect (docs/arvados-reference.md §2.3, §2.5, §3),
// that fault injection works, and that the real Arvados Python SDK can read
// back what it stores.

mod common;

use std::time::{Duration, Instant};

use common::fake_arvados::{AUTH_SECRET, AUTH_UUID, FakeArvados, Times};
use common::fake_support::{
    hex, hmac_sha1, parse_manifest, parse_rfc3339, portable_data_hash, sha1, strip_signatures,
};
use serde_json::{Value, json};

const CUUID: &str = "zzzzz-dz642-queuedcontainer";

struct Client {
    agent: ureq::Agent,
    base: String,
}

struct Resp {
    status: u16,
    body: Vec<u8>,
    replicas: Option<String>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

enum Body<'a> {
    None,
    Json(Value),
    Form(&'a [(&'a str, String)]),
    Bytes(&'a [u8]),
}

impl Client {
    fn new(fake: &FakeArvados) -> Client {
        Client {
            agent: common::https_agent(fake),
            base: format!("https://{}", fake.api_host()),
        }
    }

    fn try_call(
        &self,
        method: &str,
        url: &str,
        auth: Option<&str>,
        body: Body<'_>,
    ) -> Result<Resp, ureq::Error> {
        let url = if url.starts_with("https://") {
            url.to_string()
        } else {
            format!("{}{url}", self.base)
        };
        let (ctype, bytes): (Option<&str>, Option<Vec<u8>>) = match body {
            Body::None => (None, None),
            Body::Json(v) => (
                Some("application/json"),
                Some(serde_json::to_vec(&v).unwrap()),
            ),
            Body::Form(pairs) => {
                let enc: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| format!("{k}={}", common::fake_support::url_encode(v)))
                    .collect();
                (
                    Some("application/x-www-form-urlencoded"),
                    Some(enc.join("&").into_bytes()),
                )
            }
            Body::Bytes(b) => (Some("application/octet-stream"), Some(b.to_vec())),
        };
        let mut resp = match method {
            "GET" | "HEAD" | "DELETE" => {
                let mut rb = match method {
                    "GET" => self.agent.get(&url),
                    "HEAD" => self.agent.head(&url),
                    _ => self.agent.delete(&url),
                };
                if let Some(a) = auth {
                    rb = rb.header("Authorization", a);
                }
                rb.call()?
            }
            _ => {
                let mut rb = match method {
                    "PUT" => self.agent.put(&url),
                    "PATCH" => self.agent.patch(&url),
                    _ => self.agent.post(&url),
                };
                if let Some(a) = auth {
                    rb = rb.header("Authorization", a);
                }
                if let Some(c) = ctype {
                    rb = rb.header("Content-Type", c);
                }
                rb.send(bytes.unwrap_or_default())?
            }
        };
        let status = resp.status().as_u16();
        let replicas = resp
            .headers()
            .get("X-Keep-Replicas-Stored")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.to_string());
        let body = resp
            .body_mut()
            .with_config()
            .limit(200 << 20)
            .read_to_vec()?;
        Ok(Resp {
            status,
            body,
            replicas,
        })
    }

    fn call(&self, method: &str, url: &str, auth: Option<&str>, body: Body<'_>) -> Resp {
        self.try_call(method, url, auth, body)
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
    }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn container_path(uuid: &str) -> String {
    format!("/arvados/v1/containers/{uuid}")
}

fn put_container(c: &Client, fake: &FakeArvados, attrs: Value) -> Resp {
    c.call(
        "PUT",
        &container_path(CUUID),
        Some(&bearer(fake.token())),
        Body::Json(json!({"container": attrs, "select": ["uuid"]})),
    )
}

fn first_error(r: &Resp) -> String {
    r.json()["errors"][0]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

// ------------------------------------------------------------------- auth

#[test]
fn api_requires_a_valid_token() {
    let fake = FakeArvados::start();
    fake.add_container(json!({"uuid": CUUID}));
    let c = Client::new(&fake);
    let p = container_path(CUUID);
    assert_eq!(c.call("GET", &p, None, Body::None).status, 401);
    assert_eq!(
        c.call("GET", &p, Some("Bearer wrongtoken"), Body::None)
            .status,
        401
    );
    let ok = c.call("GET", &p, Some(&bearer(fake.token())), Body::None);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["uuid"], CUUID);
    assert_eq!(ok.json()["state"], "Locked");
    // the 2016 header form is accepted too
    let oauth = format!("OAuth2 {}", fake.token());
    assert_eq!(c.call("GET", &p, Some(&oauth), Body::None).status, 200);
    // discovery needs no token and points at this server
    let d = c.call(
        "GET",
        "/discovery/v1/apis/arvados/v1/rest",
        None,
        Body::None,
    );
    assert_eq!(d.status, 200);
    assert_eq!(d.json()["rootUrl"], format!("https://{}/", fake.api_host()));
    let rej = fake.rejected();
    assert_eq!(rej.len(), 2, "{rej:?}");
    assert!(rej.iter().all(|r| r.status == 401));
}

#[test]
fn container_token_auth_and_secret_mounts() {
    let fake = FakeArvados::start();
    fake.add_container(json!({"uuid": CUUID}));
    fake.set_secret_mounts(
        CUUID,
        json!({"/etc/pw": {"kind": "text", "content": "s3cret"}}),
    );
    let c = Client::new(&fake);
    let admin = bearer(fake.token());
    let auth = c.call(
        "GET",
        &format!("{}/auth", container_path(CUUID)),
        Some(&admin),
        Body::None,
    );
    assert_eq!(auth.status, 200);
    assert_eq!(auth.json()["uuid"], AUTH_UUID);
    assert_eq!(auth.json()["api_token"], AUTH_SECRET);

    let sm = format!("{}/secret_mounts", container_path(CUUID));
    // only the container's own token may read secret mounts
    let r = c.call("GET", &sm, Some(&admin), Body::None);
    assert_eq!(r.status, 403);
    let ctok = bearer(&format!("v2/{AUTH_UUID}/{AUTH_SECRET}/{CUUID}"));
    assert_eq!(ctok, bearer(&fake.container_token(CUUID)));
    let r = c.call("GET", &sm, Some(&ctok), Body::None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["secret_mounts"]["/etc/pw"]["content"], "s3cret");

    // the container token dies when the container leaves Locked/Running
    assert_eq!(
        put_container(&c, &fake, json!({"state": "Cancelled"})).status,
        200
    );
    assert_eq!(c.call("GET", &sm, Some(&ctok), Body::None).status, 401);
    let r = c.call(
        "GET",
        &format!("{}/auth", container_path(CUUID)),
        Some(&admin),
        Body::None,
    );
    assert_eq!(r.status, 403);
}

// ------------------------------------------------------- container states

#[test]
fn locked_running_complete_is_accepted() {
    let fake = FakeArvados::start();
    fake.add_container(json!({"uuid": CUUID}));
    let log = fake.add_collection(&[("crunch-run.txt", b"hello\n")]);
    let out = fake.add_collection(&[("out.txt", b"result\n")]);
    let c = Client::new(&fake);

    let r = put_container(
        &c,
        &fake,
        json!({"state": "Running", "gateway_address": "127.0.0.1:1234"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"uuid": CUUID}), "select honoured");
    let rec = fake.container(CUUID);
    assert_eq!(rec["state"], "Running");
    assert!(rec["started_at"].is_string(), "started_at set by the API");

    // form-encoded, as the Go SDK sends it
    let form = [
        ("container", json!({"exit_code": 0}).to_string()),
        ("select", json!(["uuid"]).to_string()),
    ];
    let r = c.call(
        "PUT",
        &container_path(CUUID),
        Some(&bearer(fake.token())),
        Body::Form(&form),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(fake.container(CUUID)["exit_code"], 0);

    let r = put_container(
        &c,
        &fake,
        json!({"state": "Complete", "exit_code": 0, "log": log, "output": out, "cost": 0.5}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = fake.container(CUUID);
    assert_eq!(rec["state"], "Complete");
    assert_eq!(rec["log"], json!(log));
    assert_eq!(rec["output"], json!(out));
    assert!(rec["finished_at"].is_string());
    assert!(rec["auth_uuid"].is_null() && rec["locked_by_uuid"].is_null());
    let ups = fake.container_updates(CUUID);
    assert_eq!(ups.len(), 3);
    assert_eq!(ups[1], json!({"exit_code": 0}));
    assert_eq!(ups[2]["state"], "Complete");
    assert!(fake.rejected().is_empty(), "{:?}", fake.rejected());

    // nothing may change once Complete except → Cancelled
    let r = put_container(&c, &fake, json!({"exit_code": 1}));
    assert_eq!(r.status, 422);
    assert_eq!(
        first_error(&r),
        "exit_code cannot be modified in state 'Complete' (0, 1)"
    );
}

#[test]
fn locked_to_complete_is_rejected() {
    let fake = FakeArvados::start();
    fake.add_container(json!({"uuid": CUUID}));
    let c = Client::new(&fake);
    let r = put_container(&c, &fake, json!({"state": "Complete", "exit_code": 0}));
    assert_eq!(r.status, 422);
    let errs = r.json()["errors"].clone();
    assert!(
        errs.as_array()
            .unwrap()
            .contains(&json!("state cannot change from Locked to Complete")),
        "{errs}"
    );
    assert_eq!(fake.container(CUUID)["state"], "Locked");
    assert!(fake.container_updates(CUUID).is_empty());
    let rej = fake.rejected();
    assert_eq!(rej.len(), 1);
    assert_eq!(rej[0].status, 422);
    assert_eq!(rej[0].method, "PUT");
    assert_eq!(rej[0].path, container_path(CUUID));
    assert!(
        rej[0]
            .message
            .contains("cannot change from Locked to Complete")
    );
}

#[test]
fn cancel_from_locked_permits_log_but_not_exit_code() {
    let fake = FakeArvados::start();
    fake.add_container(json!({"uuid": CUUID}));
    let log = fake.add_collection(&[("crunch-run.txt", b"oops\n")]);
    let c = Client::new(&fake);
    let r = put_container(
        &c,
        &fake,
        json!({"state": "Cancelled", "exit_code": 0, "log": log}),
    );
    assert_eq!(r.status, 422);
    assert_eq!(
        first_error(&r),
        "exit_code cannot be modified in state 'Cancelled' (nil, 0)"
    );
    // null exit_code is "unchanged" and so allowed
    let r = put_container(
        &c,
        &fake,
        json!({"state": "Cancelled", "exit_code": null, "log": log, "cost": 0.0}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(fake.container(CUUID)["state"], "Cancelled");
}

/// The fixture for issue 10, point 6: a record nested too deep for serde_json is served
/// whole, and can still be moved to Cancelled with the reason in runtime_status.
#[test]
fn a_record_nested_too_deep_is_served_and_can_be_cancelled() {
    let fake = FakeArvados::start();
    fake.add_deeply_nested_container(CUUID, 130);
    let c = Client::new(&fake);
    let r = c.call(
        "GET",
        &container_path(CUUID),
        Some(&bearer(fake.token())),
        Body::None,
    );
    assert_eq!(r.status, 200);
    let err = serde_json::from_slice::<Value>(&r.body).unwrap_err();
    assert!(
        err.to_string().starts_with("recursion limit exceeded"),
        "{err}"
    );
    let text = r.text();
    // 130 levels: record, mounts, mount, then 127 arrays.
    assert!(text.contains(&"[".repeat(127)) && !text.contains(&"[".repeat(128)));
    assert!(text.contains(r#""state":"Locked""#), "{text:.200}");

    let status = json!({"error": "cannot read the container record", "errorDetail": "nested"});
    let r = put_container(
        &c,
        &fake,
        json!({"state": "Cancelled", "runtime_status": status}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = fake.container(CUUID);
    assert_eq!(rec["state"], "Cancelled");
    assert_eq!(rec["runtime_status"], status);
}

#[test]
fn field_and_reference_rules() {
    let fake = FakeArvados::start();
    fake.add_container(json!({"uuid": CUUID}));
    let c = Client::new(&fake);
    // requeue may not carry a log
    let log = fake.add_collection(&[("x", b"x")]);
    let r = put_container(&c, &fake, json!({"state": "Queued", "log": log}));
    assert_eq!(r.status, 422);
    assert!(first_error(&r).starts_with("log cannot be modified in state 'Queued'"));
    // Locked → Running; then the references must exist
    assert_eq!(
        put_container(&c, &fake, json!({"state": "Running"})).status,
        200
    );
    let r = put_container(
        &c,
        &fake,
        json!({"log": "0123456789abcdef0123456789abcdef+99"}),
    );
    assert_eq!(r.status, 422);
    assert!(first_error(&r).contains("log collection must exist"));
    let r = put_container(&c, &fake, json!({"output": "not-a-pdh"}));
    assert_eq!(r.status, 422);
    let r = put_container(&c, &fake, json!({"exit_code": "0"}));
    assert_eq!(r.status, 422);
    let r = put_container(&c, &fake, json!({"runtime_status": {"warning": 5}}));
    assert_eq!(r.status, 422);
    assert!(first_error(&r).contains("'warning' value must be a string"));
    let r = put_container(&c, &fake, json!({"no_such_field": 1}));
    assert_eq!(r.status, 422);
    let r = put_container(
        &c,
        &fake,
        json!({"runtime_status": {"warning": "arv-mount: Keep write error",
                                  "warningDetail": "line"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        fake.container(CUUID)["runtime_status"]["warning"],
        "arv-mount: Keep write error"
    );
    // Running → Queued is not a transition
    let r = put_container(&c, &fake, json!({"state": "Queued"}));
    assert_eq!(
        first_error(&r),
        "state cannot change from Running to Queued"
    );
    assert_eq!(fake.rejected().len(), 7, "{:?}", fake.rejected());
}

#[test]
fn modern_queued_cannot_run_but_2016_mode_can() {
    let fake = FakeArvados::start();
    fake.add_container(json!({"uuid": CUUID, "state": "Queued"}));
    let c = Client::new(&fake);
    let r = put_container(&c, &fake, json!({"state": "Running"}));
    assert_eq!(
        first_error(&r),
        "state cannot change from Queued to Running"
    );

    let fake = FakeArvados::start_2016();
    fake.add_container(json!({"uuid": CUUID, "state": "Queued"}));
    let c = Client::new(&fake);
    let log = fake.add_collection(&[("log.txt", b"log\n")]);
    // 2016: only state (+started_at) on the transition to Running
    let r = put_container(&c, &fake, json!({"state": "Running", "priority": 2}));
    assert_eq!(r.status, 422);
    assert_eq!(
        first_error(&r),
        "priority cannot be modified in state 'Running' (1, 2)"
    );
    assert_eq!(
        put_container(&c, &fake, json!({"state": "Running"})).status,
        200
    );
    // 2016: Running → Cancelled permits state, finished_at, output, log only
    let r = put_container(
        &c,
        &fake,
        json!({"state": "Cancelled", "exit_code": 0, "log": log}),
    );
    assert_eq!(
        first_error(&r),
        "exit_code cannot be modified in state 'Cancelled' (nil, 0)"
    );
    let r = put_container(
        &c,
        &fake,
        json!({"state": "Cancelled", "log": log, "output": log}),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // 2016 Queued → Cancelled: state and finished_at only
    let other = "zzzzz-dz642-queuedcontaine2";
    fake.add_container(json!({"uuid": other, "state": "Queued"}));
    let r = c.call(
        "PUT",
        &container_path(other),
        Some(&bearer(fake.token())),
        Body::Json(json!({"container": {"state": "Cancelled", "log": log}})),
    );
    assert_eq!(r.status, 422);
    let r = c.call(
        "PUT",
        &container_path(other),
        Some(&bearer(fake.token())),
        // un-nested attributes, as the 2016 crunch-run sent them
        Body::Json(json!({"state": "Cancelled"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(fake.container(other)["state"], "Cancelled");
}

// ------------------------------------------------------------------ keep

fn keep_put(c: &Client, url: &str, token: &str, hash: &str, data: &[u8]) -> Resp {
    c.call(
        "PUT",
        &format!("{url}/{hash}"),
        Some(&bearer(token)),
        Body::Bytes(data),
    )
}

#[test]
fn keep_put_get_round_trip_and_rules() {
    let fake = FakeArvados::start();
    fake.add_container(json!({"uuid": CUUID}));
    let c = Client::new(&fake);
    let urls = fake.keep_service_urls();
    assert_eq!(fake.keep_services_env(), urls.join(" "));
    let tok = fake.token().to_string();

    // body md5 must match the path
    let r = keep_put(
        &c,
        &urls[0],
        &tok,
        "acbd18db4cc2f85cedef654fccc4a4d8",
        b"bar",
    );
    assert_eq!(r.status, 422);
    assert_eq!(fake.keep_puts(), 0);
    // no token → 401
    let r = c.call(
        "PUT",
        &format!("{}/acbd18db4cc2f85cedef654fccc4a4d8", urls[0]),
        None,
        Body::Bytes(b"foo"),
    );
    assert_eq!(r.status, 401);
    // chunked upload without Content-Length → 411
    let mut reader: &[u8] = b"foo";
    let r = c
        .agent
        .put(&format!("{}/acbd18db4cc2f85cedef654fccc4a4d8", urls[0]))
        .header("Authorization", &bearer(&tok))
        .send(ureq::SendBody::from_reader(&mut reader))
        .unwrap();
    assert_eq!(r.status().as_u16(), 411);

    let r = keep_put(
        &c,
        &urls[0],
        &tok,
        "acbd18db4cc2f85cedef654fccc4a4d8",
        b"foo",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.replicas.as_deref(), Some("1"));
    let signed = r.text().trim_end().to_string();
    assert!(r.text().ends_with('\n'));
    let (bare, sig) = signed.split_once("+A").expect("signed locator");
    assert_eq!(bare, "acbd18db4cc2f85cedef654fccc4a4d8+3");
    let (sig, exp) = sig.split_once('@').unwrap();
    assert_eq!(sig.len(), 40);
    assert_eq!(exp.len(), 8);
    assert_eq!(fake.keep_puts(), 1);
    assert_eq!(fake.keep_blocks(), 1);

    let r = c.call(
        "GET",
        &format!("{}/{signed}", urls[0]),
        Some(&bearer(&tok)),
        Body::None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"foo");
    // the other service does not have it
    let r = c.call(
        "GET",
        &format!("{}/{signed}", urls[1]),
        Some(&bearer(&tok)),
        Body::None,
    );
    assert_eq!(r.status, 404);
    // unsigned, or without size hint, or signed for another token
    let r = c.call(
        "GET",
        &format!("{}/{bare}", urls[0]),
        Some(&bearer(&tok)),
        Body::None,
    );
    assert_eq!(r.status, 403);
    let r = c.call(
        "GET",
        &format!("{}/acbd18db4cc2f85cedef654fccc4a4d8", urls[0]),
        Some(&bearer(&tok)),
        Body::None,
    );
    assert_eq!(r.status, 400);
    let ctok = fake.container_token(CUUID);
    let r = c.call(
        "GET",
        &format!("{}/{signed}", urls[0]),
        Some(&bearer(&ctok)),
        Body::None,
    );
    assert_eq!(r.status, 403);
    // a v2 token signs with its secret: bare secret and v2 form agree
    let r = keep_put(
        &c,
        &urls[1],
        &ctok,
        "acbd18db4cc2f85cedef654fccc4a4d8",
        b"foo",
    );
    let csigned = r.text().trim_end().to_string();
    let r = c.call(
        "GET",
        &format!("{}/{csigned}", urls[1]),
        Some(&bearer(AUTH_SECRET)),
        Body::None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        fake.keep_block("acbd18db4cc2f85cedef654fccc4a4d8").unwrap(),
        b"foo"
    );
    // the empty block needs neither storage nor signature
    let r = c.call(
        "GET",
        &format!("{}/d41d8cd98f00b204e9800998ecf8427e+0", urls[0]),
        Some(&bearer(&tok)),
        Body::None,
    );
    assert_eq!((r.status, r.body.len()), (200, 0));
}

// ----------------------------------------------------------- collections

const FOO_MANIFEST: &str = ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:foo\n";
const FOO_PDH: &str = "1f4b0bc7583c2a7f9102c395f4ffc5e3+45";

#[test]
fn pdh_reference_vectors() {
    assert_eq!(portable_data_hash(FOO_MANIFEST), FOO_PDH);
    let hw = ". 82ab40c24fc8df01798e57ba66795bb1+841216+Aa124ac75e5168396c73c0a18eda641a4f41791c0@569fa8c3 0:841216:9c31ee32b3d15268a0754e8edc74d4f815ee014b693bc5109058e431dd5caea7.tar\n";
    assert_eq!(
        portable_data_hash(hw),
        "a45557269dcb65a6b78f9ac061c0850b+120"
    );
    assert_eq!(portable_data_hash(""), "d41d8cd98f00b204e9800998ecf8427e+0");
    assert_eq!(
        portable_data_hash(
            ". 68a84f561b1d1708c6baff5e019a9ab3+46+Ae5d0af96944a3690becb1decdf60cc1c937f556d@5693216f 0:46:md5sum.txt\n"
        ),
        "a3e8f74c6f101eae01fa08bfb4e49b3a+54"
    );
    assert_eq!(
        strip_signatures(hw),
        ". 82ab40c24fc8df01798e57ba66795bb1+841216 0:841216:9c31ee32b3d15268a0754e8edc74d4f815ee014b693bc5109058e431dd5caea7.tar\n"
    );
    let fake = FakeArvados::start();
    assert_eq!(fake.add_manifest(FOO_MANIFEST), FOO_PDH);
    assert_eq!(fake.add_collection(&[("foo", b"foo")]), FOO_PDH);
    assert_eq!(fake.read_file(FOO_PDH, "foo").unwrap(), b"foo");
}

#[test]
fn manifest_syntax_checks() {
    for bad in [
        "foo",                                               // no newline
        ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:foo",      // no newline
        "x acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:foo\n",    // stream name
        ". 0:3:foo\n",                                       // no locator
        ". acbd18db4cc2f85cedef654fccc4a4d8+3\n",            // no file
        ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:4:foo\n",    // beyond stream
        ". acbd18db4cc2f85cedef654fccc4a4d8+3  0:3:foo\n",   // double space
        ". ACBD18DB4CC2F85CEDEF654FCCC4A4D8+3 0:3:foo\n",    // upper-case hash
        ". acbd18db4cc2f85cedef654fccc4a4d8+3+a1 0:3:foo\n", // hint must be [A-Z]
        ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:foo\n\n",  // empty line
    ] {
        assert!(parse_manifest(bad).is_err(), "accepted {bad:?}");
    }
    let ok = parse_manifest(
        ". acbd18db4cc2f85cedef654fccc4a4d8+3 37b51d194a7513e45b56f6524f2d51f2+3 0:3:foo 3:3:a\\040b\n./d d41d8cd98f00b204e9800998ecf8427e+0 0:0:\\056\n",
    )
    .unwrap();
    assert_eq!(ok[0].files[1], (3, 3, "a b".to_string()));
    assert_eq!(ok[1].name, "./d");
}

fn create_collection(c: &Client, token: &str, attrs: Value, unique: bool) -> Resp {
    c.call(
        "POST",
        "/arvados/v1/collections",
        Some(&bearer(token)),
        Body::Json(json!({
            "collection": attrs,
            "ensure_unique_name": unique,
            "select": ["uuid", "portable_data_hash"],
        })),
    )
}

#[test]
fn collection_create_requires_signed_existing_blocks() {
    let fake = FakeArvados::start();
    let c = Client::new(&fake);
    let tok = fake.token().to_string();
    // unsigned locator → refused even though the PDH would be fine
    let r = create_collection(
        &c,
        &tok,
        json!({"name": "x", "manifest_text": FOO_MANIFEST}),
        true,
    );
    assert_eq!(r.status, 422);
    assert!(
        first_error(&r).contains("signature missing"),
        "{}",
        r.text()
    );

    let url = &fake.keep_service_urls()[0];
    let signed = keep_put(&c, url, &tok, "acbd18db4cc2f85cedef654fccc4a4d8", b"foo")
        .text()
        .trim_end()
        .to_string();
    let manifest = format!(". {signed} 0:3:foo\n");
    // a wrong signature is refused
    let bad_sig = format!(
        ". acbd18db4cc2f85cedef654fccc4a4d8+3+A{}@{} 0:3:foo\n",
        "0".repeat(40),
        signed.rsplit('@').next().unwrap()
    );
    let r = create_collection(
        &c,
        &tok,
        json!({"name": "x", "manifest_text": bad_sig}),
        true,
    );
    assert_eq!(r.status, 422);
    assert!(first_error(&r).contains("signature invalid"));
    // signed for the admin token, presented with the container token → refused
    fake.add_container(json!({"uuid": CUUID}));
    let ctok = fake.container_token(CUUID);
    let r = create_collection(
        &c,
        &ctok,
        json!({"name": "x", "manifest_text": manifest}),
        true,
    );
    assert_eq!(r.status, 422);
    assert!(first_error(&r).contains("signature invalid"));
    // a block that is in no keep service is refused even if validly signed
    let ghost = fake.sign_locator("37b51d194a7513e45b56f6524f2d51f2+3", &tok);
    let r = create_collection(
        &c,
        &tok,
        json!({"name": "x", "manifest_text": format!(". {ghost} 0:3:bar\n")}),
        true,
    );
    assert_eq!(r.status, 422);
    assert!(
        first_error(&r).contains("not found in keep"),
        "{}",
        r.text()
    );

    let r = create_collection(
        &c,
        &tok,
        json!({"name": "logs", "manifest_text": manifest}),
        true,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["portable_data_hash"], FOO_PDH);
    let uuid = v["uuid"].as_str().unwrap().to_string();
    assert!(
        uuid.starts_with("zzzzz-4zz18-") && uuid.len() == 27,
        "{uuid}"
    );
    assert_eq!(fake.collection_manifest(&uuid).unwrap(), FOO_MANIFEST);
    assert_eq!(fake.read_file(&uuid, "foo").unwrap(), b"foo");
    let created = fake.collections_created();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["name"], "logs");

    // same name again: refused without ensure_unique_name, renamed with it
    let r = create_collection(
        &c,
        &tok,
        json!({"name": "logs", "manifest_text": manifest}),
        false,
    );
    assert_eq!(r.status, 422);
    let r = create_collection(
        &c,
        &tok,
        json!({"name": "logs", "manifest_text": manifest}),
        true,
    );
    assert_eq!(r.status, 200);
    let second = fake.collection(r.json()["uuid"].as_str().unwrap()).unwrap();
    assert!(
        second["name"].as_str().unwrap().starts_with("logs ("),
        "{second}"
    );
    // a trashed output collection may reuse any name
    let r = create_collection(
        &c,
        &tok,
        json!({"name": "logs", "manifest_text": manifest, "is_trashed": true}),
        false,
    );
    assert_eq!(r.status, 200);
    // a claimed PDH must match
    let r = create_collection(
        &c,
        &tok,
        json!({"manifest_text": manifest, "portable_data_hash": "00000000000000000000000000000000+45"}),
        true,
    );
    assert_eq!(r.status, 422);

    // GET returns a manifest signed for the caller, usable in keep
    let r = c.call(
        "GET",
        &format!("/arvados/v1/collections/{FOO_PDH}"),
        Some(&bearer(&tok)),
        Body::None,
    );
    assert_eq!(r.status, 200);
    let mt = r.json()["manifest_text"].as_str().unwrap().to_string();
    assert_eq!(portable_data_hash(&mt), FOO_PDH);
    let loc = mt.split(' ').nth(1).unwrap();
    assert!(loc.contains("+A"));
    let r = c.call(
        "GET",
        &format!("{url}/{loc}"),
        Some(&bearer(&tok)),
        Body::None,
    );
    assert_eq!(r.body, b"foo");

    // update (interim log collection → final)
    let r = c.call(
        "PUT",
        &format!("/arvados/v1/collections/{uuid}"),
        Some(&bearer(&tok)),
        Body::Json(json!({"collection": {"manifest_text": "", "trash_at": "2030-01-02T03:04:05.123456789-04:00"}})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["portable_data_hash"],
        "d41d8cd98f00b204e9800998ecf8427e+0"
    );
    assert_eq!(fake.collections_updated().len(), 1);
}

#[test]
fn logs_and_keep_services_endpoints() {
    let fake = FakeArvados::start();
    let c = Client::new(&fake);
    let tok = bearer(fake.token());
    let form = [(
        "log",
        json!({"object_uuid": CUUID, "event_type": "stdout",
               "properties": {"text": "2016-06-30T12:00:00.000000001Z hello\n"}})
        .to_string(),
    )];
    let r = c.call("POST", "/arvados/v1/logs", Some(&tok), Body::Form(&form));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["uuid"]
            .as_str()
            .unwrap()
            .starts_with("zzzzz-57u5n-")
    );
    let logs = fake.logs();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].object_uuid, CUUID);
    assert_eq!(logs[0].event_type, "stdout");
    assert_eq!(logs[0].text, "2016-06-30T12:00:00.000000001Z hello\n");
    let reqs = fake.requests();
    assert_eq!(reqs.last().unwrap().body["log"]["event_type"], "stdout");

    let r = c.call(
        "GET",
        "/arvados/v1/keep_services/accessible",
        Some(&tok),
        Body::None,
    );
    let items = r.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 2);
    let urls: Vec<String> = items
        .iter()
        .map(|i| {
            format!(
                "https://{}:{}",
                i["service_host"].as_str().unwrap(),
                i["service_port"]
            )
        })
        .collect();
    assert_eq!(urls, fake.keep_service_urls());
}

// -------------------------------------------------------- fault injection

#[test]
fn api_faults_and_delays() {
    let fake = FakeArvados::start();
    fake.add_container(json!({"uuid": CUUID}));
    let c = Client::new(&fake);
    fake.fail_api("PUT", "/arvados/v1/containers/", 503, Times::Next(2));
    let statuses: Vec<u16> = (0..3)
        .map(|_| put_container(&c, &fake, json!({"priority": 2})).status)
        .collect();
    assert_eq!(statuses, [503, 503, 200]);
    assert_eq!(fake.container_updates(CUUID).len(), 1);
    assert!(
        fake.rejected().is_empty(),
        "injected faults are not rejections"
    );
    // GETs were not affected
    let tok = bearer(fake.token());
    assert_eq!(
        c.call("GET", &container_path(CUUID), Some(&tok), Body::None)
            .status,
        200
    );

    fake.fail_api("*", "/arvados/v1/collections", 500, Times::Always);
    for _ in 0..3 {
        let r = c.call(
            "GET",
            &format!("/arvados/v1/collections/{FOO_PDH}"),
            Some(&tok),
            Body::None,
        );
        assert_eq!(r.status, 500);
    }

    // a slow logs endpoint does not hold up other requests
    fake.delay_api("/arvados/v1/logs", Duration::from_millis(1500));
    let slow = {
        let agent = common::https_agent(&fake);
        let url = format!("https://{}/arvados/v1/logs", fake.api_host());
        let tok = tok.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let body = json!({"log": {"object_uuid": CUUID, "event_type": "stderr",
                                      "properties": {"text": "x\n"}}});
            let r = agent
                .post(&url)
                .header("Authorization", &tok)
                .header("Content-Type", "application/json")
                .send(serde_json::to_vec(&body).unwrap())
                .unwrap();
            (r.status().as_u16(), t.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    assert_eq!(
        c.call("GET", &container_path(CUUID), Some(&tok), Body::None)
            .status,
        200
    );
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    let (status, took) = slow.join().unwrap();
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(1400), "{took:?}");

    fake.clear_faults();
    let r = c.call(
        "GET",
        &format!("/arvados/v1/collections/{FOO_PDH}"),
        Some(&tok),
        Body::None,
    );
    assert_eq!(r.status, 404, "fault cleared; collection simply absent");

    fake.set_api_down(true);
    assert!(
        c.try_call("GET", &container_path(CUUID), Some(&tok), Body::None)
            .is_err()
    );
    fake.set_api_down(false);
    assert_eq!(
        c.call("GET", &container_path(CUUID), Some(&tok), Body::None)
            .status,
        200
    );
}

#[test]
fn keep_faults_and_down_services() {
    let fake = FakeArvados::start();
    let c = Client::new(&fake);
    let urls = fake.keep_service_urls();
    let tok = fake.token().to_string();
    let hash = "acbd18db4cc2f85cedef654fccc4a4d8";

    fake.fail_keep("PUT", &[0], 500, Times::Always);
    assert_eq!(keep_put(&c, &urls[0], &tok, hash, b"foo").status, 500);
    assert_eq!(keep_put(&c, &urls[0], &tok, hash, b"foo").status, 500);
    let r = keep_put(&c, &urls[1], &tok, hash, b"foo");
    assert_eq!(r.status, 200);
    let signed = r.text().trim_end().to_string();
    assert_eq!(fake.keep_puts(), 1);

    fake.fail_keep("GET", &[0, 1], 503, Times::Next(1));
    let get = |i: usize| {
        c.call(
            "GET",
            &format!("{}/{signed}", urls[i]),
            Some(&bearer(&tok)),
            Body::None,
        )
        .status
    };
    assert_eq!(get(1), 503);
    assert_eq!(get(1), 200);

    // down: connections refused (also on a pooled keep-alive connection)
    fake.set_keep_down(1, true);
    let e = c.try_call(
        "GET",
        &format!("{}/{signed}", urls[1]),
        Some(&bearer(&tok)),
        Body::None,
    );
    assert!(e.is_err(), "service 1 should be unreachable");
    // service 0 still answers (PUT still failing there)
    assert_eq!(keep_put(&c, &urls[0], &tok, hash, b"foo").status, 500);
    fake.set_keep_down(1, false);
    assert_eq!(get(1), 200);

    fake.clear_faults();
    assert_eq!(keep_put(&c, &urls[0], &tok, hash, b"foo").status, 200);
    let kr = fake.keep_requests();
    assert!(
        kr.iter()
            .any(|r| r.service == 0 && r.method == "PUT" && r.status == 500)
    );
}

// ------------------------------------------------------------ python SDK

#[test]
fn python_sdk_reads_collection_bytes_exactly() {
    let fake = FakeArvados::start();
    // > 1 block: 64 MiB + a bit, with bytes that are not valid UTF-8
    let mut big = vec![0u8; 64 * 1024 * 1024 + 1000];
    let mut x: u32 = 12345;
    for b in big.iter_mut() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *b = (x >> 16) as u8;
    }
    let small: &[u8] = b"\xff\xfe\x00binary\x80\n";
    let pdh = fake.add_collection(&[
        ("big.bin", &big),
        ("dir/with space.bin", small),
        ("empty.txt", b""),
    ]);
    let m = fake.collection_manifest(&pdh).unwrap();
    assert_eq!(
        m.lines()
            .next()
            .unwrap()
            .split(' ')
            .filter(|t| t.contains('+'))
            .count(),
        2
    );
    assert_eq!(fake.read_file(&pdh, "big.bin").unwrap(), big);

    let got = common::python_reads_collection(&fake, &pdh, "dir/with space.bin");
    assert_eq!(got, small);
    let got = common::python_reads_collection(&fake, &pdh, "empty.txt");
    assert!(got.is_empty());
    let got = common::python_reads_collection(&fake, &pdh, "big.bin");
    // a collection written the way crunch-run writes one: block PUT to one
    // keep service, then POST collections with the signed locator
    let c = Client::new(&fake);
    let data: &[u8] = b"out\xc3\x28put\n";
    let hash = common::fake_support::md5_hex(data);
    let url = &fake.keep_service_urls()[1];
    let signed = keep_put(&c, url, fake.token(), &hash, data)
        .text()
        .trim_end()
        .to_string();
    let r = create_collection(
        &c,
        fake.token(),
        json!({"name": "output", "manifest_text": format!("./sub {signed} 0:{}:out.bin\n", data.len())}),
        true,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let out_pdh = r.json()["portable_data_hash"].as_str().unwrap().to_string();
    assert_eq!(
        common::python_reads_collection(&fake, &out_pdh, "sub/out.bin"),
        data
    );

    // what the SDK needed: discovery, config, the collection, keep services
    let paths: Vec<String> = fake.requests().iter().map(|r| r.path.clone()).collect();
    for p in [
        "/discovery/v1/apis/arvados/v1/rest",
        "/arvados/v1/config",
        "/arvados/v1/keep_services/accessible",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} not requested: {paths:?}");
    }
    assert!(fake.requests().iter().all(|r| r.status == 200));
    let gets = fake.keep_requests();
    let reads: Vec<_> = gets.iter().filter(|r| r.method == "GET").collect();
    // two blocks of big.bin, one for the small file, one for out.bin (which
    // only service 1 has, so service 0 may answer 404 first)
    assert_eq!(
        reads.iter().filter(|r| r.status == 200).count(),
        4,
        "{gets:?}"
    );
    assert!(
        reads
            .iter()
            .all(|r| r.status == 200 || (r.status == 404 && r.service == 0))
    );
    assert!(
        got == big,
        "big.bin differs (len {} vs {})",
        got.len(),
        big.len()
    );
}

// ---------------------------------------------------------------- helpers

#[test]
fn hmac_sha1_and_time_helpers() {
    assert_eq!(
        hex(&sha1(b"abc")),
        "a9993e364706816aba3e25717850c26c9cd0d89d"
    );
    assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    // RFC 2202 test cases 1, 2 and 6
    assert_eq!(
        hex(&hmac_sha1(&[0x0b; 20], b"Hi There")),
        "b617318655057264e28bc0b6fb378c8ef146be00"
    );
    assert_eq!(
        hex(&hmac_sha1(b"Jefe", b"what do ya want for nothing?")),
        "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
    );
    assert_eq!(
        hex(&hmac_sha1(
            &[0xaa; 80],
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        )),
        "aa4ae5e15272d00e95705637ce8a3b55ed402112"
    );
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(
        parse_rfc3339("2024-05-15T09:39:29.123456789-04:00"),
        Some(1715780369)
    );
    assert_eq!(parse_rfc3339("2024-05-15"), None);
}

// ------------------------------------------- latency, request times, connections

const FOO_HASH: &str = "acbd18db4cc2f85cedef654fccc4a4d8";

#[test]
fn latency_delays_every_request_and_the_log_has_its_times_and_connection() {
    let fake = FakeArvados::start();
    fake.add_container(json!({"uuid": CUUID}));
    let c = Client::new(&fake);
    let tok = bearer(fake.token());
    let latency = Duration::from_millis(80);
    fake.set_latency(latency);
    let t = Instant::now();
    assert_eq!(
        c.call("GET", &container_path(CUUID), Some(&tok), Body::None)
            .status,
        200
    );
    assert!(t.elapsed() >= latency, "{:?}", t.elapsed());
    // Keep waits too.
    let t = Instant::now();
    let r = keep_put(
        &c,
        &fake.keep_service_urls()[1],
        fake.token(),
        FOO_HASH,
        b"foo",
    );
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= latency, "{:?}", t.elapsed());
    fake.set_latency(Duration::ZERO);
    assert_eq!(
        c.call("GET", &container_path(CUUID), Some(&tok), Body::None)
            .status,
        200
    );

    let log = fake.timeline();
    let shown: Vec<(&str, &str, &str, u64)> = log
        .iter()
        .map(|t| {
            (
                t.server.as_str(),
                t.method.as_str(),
                t.path.as_str(),
                t.conn,
            )
        })
        .collect();
    let container = container_path(CUUID);
    let block = format!("/{FOO_HASH}");
    assert_eq!(
        shown,
        [
            ("api", "GET", container.as_str(), 0),
            ("keep1", "PUT", block.as_str(), 0),
            ("api", "GET", container.as_str(), 0),
        ],
        "one connection per server, kept alive"
    );
    assert!(log[0].end - log[0].start >= latency);
    assert!(log[0].end <= log[1].start && log[1].end <= log[2].start);
    assert_eq!(
        fake.connections(),
        [("api".to_string(), 1), ("keep1".to_string(), 1)]
    );
    // A second client is a second connection (and TLS handshake).
    let other = Client::new(&fake);
    other.call("GET", &container_path(CUUID), Some(&tok), Body::None);
    assert_eq!(fake.connections()[0], ("api".to_string(), 2));
    assert_eq!(fake.timeline().last().map(|t| t.conn), Some(1));
    fake.reset_timing();
    assert!(fake.timeline().is_empty() && fake.connections().is_empty());
}

#[test]
fn the_critical_path_counts_stretches_of_requests_in_flight() {
    use common::fake_timing::{Timed, summarize};
    let at = |name: &str, start: u64, end: u64| Timed {
        server: "api".into(),
        method: "GET".into(),
        path: name.into(),
        conn: 0,
        conn_opened: Duration::ZERO,
        start: Duration::from_millis(start),
        end: Duration::from_millis(end),
    };
    // a; then b, c, d together (d overlaps c only); then e; f runs alone after a gap.
    let log = [
        at("a", 0, 10),
        at("b", 10, 20),
        at("c", 12, 30),
        at("d", 25, 40),
        at("e", 40, 50),
        at("f", 70, 80),
    ];
    let s = summarize(&log);
    assert_eq!(s.requests, 6);
    assert_eq!(s.critical_path, 4);
    assert_eq!(
        s.stretches,
        [
            vec!["GET api a"],
            vec!["GET api b", "GET api c", "GET api d"],
            vec!["GET api e"],
            vec!["GET api f"]
        ]
    );
    // The longest chain of requests one after another: a b d e f (d ends as e starts).
    assert_eq!(s.longest_chain, 5);
    // A background request across everything makes one stretch; the chain still sees 5.
    let mut with_background = log.to_vec();
    with_background.push(at("background", 5, 75));
    let s = summarize(&with_background);
    assert_eq!((s.critical_path, s.longest_chain), (1, 5));
}

/// Many keep-alive connections left open must not keep new ones from being served: a
/// thread pool that queued the new connection's TLS handshake behind idle ones made runs
/// wait out a 30 s connect timeout.
#[test]
fn new_connections_are_served_while_many_stay_open() {
    let fake = FakeArvados::start();
    fake.add_container(json!({"uuid": CUUID}));
    let tok = bearer(fake.token());
    let idle: Vec<Client> = (0..12).map(|_| Client::new(&fake)).collect();
    for c in &idle {
        assert_eq!(
            c.call("GET", &container_path(CUUID), Some(&tok), Body::None)
                .status,
            200
        );
    }
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..12 {
        let (client, tok, tx) = (Client::new(&fake), tok.clone(), tx.clone());
        std::thread::spawn(move || {
            let r = client.try_call("GET", &container_path(CUUID), Some(&tok), Body::None);
            let _ = tx.send(r.map(|r| r.status).map_err(|e| e.to_string()));
        });
    }
    for _ in 0..12 {
        // A liveness bound, not a speed figure: the starved connections never finished.
        let status = rx.recv_timeout(std::time::Duration::from_secs(60));
        assert_eq!(status, Ok(Ok(200)));
    }
    assert_eq!(fake.connections(), [("api".to_string(), 24)]);
    drop(idle);
}
