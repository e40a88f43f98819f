//! The pure parts of webhooks, table by table: signatures per provider, push payloads, ref
//! filters, event matching, the retry schedule and the delivery log's bound.

use super::*;

const SECRET: &[u8] = b"It's a Secret to Everybody";
const BODY: &[u8] = b"Hello, World!";
/// GitHub's documented example: HMAC-SHA256 of "Hello, World!" under "It's a Secret to Everybody".
const GITHUB_EXAMPLE: &str = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

#[test]
fn signatures_are_checked_as_each_provider_sends_them() {
    use HookProvider::*;
    let good = format!("sha256={GITHUB_EXAMPLE}");
    let upper = format!("sha256={}", GITHUB_EXAMPLE.to_uppercase());
    let secret = std::str::from_utf8(SECRET).unwrap();
    // (provider, header value, body, accepted?, what the error says)
    type Case<'a> = (HookProvider, Option<&'a str>, &'a [u8], bool, &'a str);
    let cases: &[Case] = &[
        (Github, Some(&good), BODY, true, ""),
        (Github, Some(&upper), BODY, true, ""),
        (
            Github,
            Some(&good),
            b"Hello, World?",
            false,
            "does not match",
        ),
        (
            Github,
            Some(GITHUB_EXAMPLE),
            BODY,
            false,
            "does not start with sha256=",
        ),
        (Github, Some("sha256=zz"), BODY, false, "does not match"),
        (Github, None, BODY, false, "no x-hub-signature-256 header"),
        (Gitea, Some(GITHUB_EXAMPLE), BODY, true, ""),
        (Gitea, Some(&good), BODY, false, "does not match"),
        (Gitea, None, BODY, false, "no x-gitea-signature header"),
        (Gitlab, Some(secret), BODY, true, ""),
        (
            Gitlab,
            Some("It's a Secret to Everybodx"),
            BODY,
            false,
            "does not match",
        ),
        (Gitlab, Some("It's a Secret"), BODY, false, "does not match"),
        (Gitlab, None, BODY, false, "no x-gitlab-token header"),
    ];
    for (p, header, body, ok, says) in cases {
        let got = verify(*p, SECRET, *header, body);
        assert_eq!(got.is_ok(), *ok, "{p:?} {header:?}: {got:?}");
        if let Err(e) = got {
            assert!(
                e.contains(says),
                "{p:?} {header:?}: {e:?} should say {says:?}"
            );
            assert!(!e.contains(secret), "the error shows the secret: {e}");
        }
    }
    assert_eq!(sign(SECRET, BODY), good, "Wharf signs as GitHub does");
}

#[test]
fn push_payloads_of_each_provider_give_ref_commit_and_pusher() {
    use HookProvider::*;
    let github = r#"{"ref":"refs/heads/main","before":"0000","after":"6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        "pusher":{"name":"octocat","email":"o@example.com"},"sender":{"login":"octocat-bot"}}"#;
    let gitlab = r#"{"object_kind":"push","ref":"refs/heads/main","before":"95790bf8","after":"da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "checkout_sha":"da1560886d4f094c3e6c9ef40349f7d38b5d27d7","user_name":"John Smith","user_username":"jsmith"}"#;
    let gitea = r#"{"ref":"refs/heads/develop","before":"28e1879d","after":"bffeb74224043ba2feb48d137756c8a9331c449a",
        "pusher":{"id":1,"login":"gitea","username":"gitea"},"sender":{"login":"other"}}"#;
    let no_pusher = r#"{"ref":"refs/tags/v1.2","after":"abc"}"#;
    // (provider, body, Ok((ref, commit, pusher)) or Err(what the error says))
    type Case<'a> = (
        HookProvider,
        &'a str,
        Result<(&'a str, &'a str, &'a str), &'a str>,
    );
    let cases: &[Case] = &[
        (
            Github,
            github,
            Ok((
                "refs/heads/main",
                "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
                "octocat",
            )),
        ),
        (
            Gitlab,
            gitlab,
            Ok((
                "refs/heads/main",
                "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
                "jsmith",
            )),
        ),
        (
            Gitea,
            gitea,
            Ok((
                "refs/heads/develop",
                "bffeb74224043ba2feb48d137756c8a9331c449a",
                "gitea",
            )),
        ),
        (Github, no_pusher, Ok(("refs/tags/v1.2", "abc", "unknown"))),
        (
            Github,
            r#"{"zen":"Keep it logically awesome.","hook_id":1}"#,
            Err("no `ref`"),
        ),
        (Github, r#"{"ref":"refs/heads/main"}"#, Err("no `after`")),
        (Gitea, "not json", Err("not JSON")),
    ];
    for (p, body, want) in cases {
        let got = parse_push(*p, body.as_bytes());
        match (want, got) {
            (Ok((r, c, u)), Ok(push)) => assert_eq!(
                (
                    push.git_ref.as_str(),
                    push.commit.as_str(),
                    push.pusher.as_str()
                ),
                (*r, *c, *u),
                "{p:?} {body}"
            ),
            (Err(says), Err(e)) => assert!(e.contains(says), "{p:?}: {e:?} should say {says:?}"),
            (want, got) => panic!("{p:?} {body}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn event_headers_tell_a_push_from_the_rest() {
    use HookProvider::*;
    for (p, header, push) in [
        (Github, Some("push"), true),
        (Github, Some("ping"), false),
        (Github, None, true),
        (Gitlab, Some("Push Hook"), true),
        (Gitlab, Some("Tag Push Hook"), false),
        (Gitea, Some("push"), true),
        (Gitea, Some("issues"), false),
    ] {
        assert_eq!(is_push(p, header), push, "{p:?} {header:?}");
    }
}

#[test]
fn ref_filters_match_whole_refs_with_stars() {
    for (filter, git_ref, want) in [
        ("refs/heads/main", "refs/heads/main", true),
        ("refs/heads/main", "refs/heads/main2", false),
        ("refs/heads/main", "refs/heads/feature", false),
        ("refs/tags/v*", "refs/tags/v1.0", true),
        ("refs/tags/v*", "refs/heads/v1", false),
        ("*", "refs/heads/anything", true),
    ] {
        assert_eq!(ref_matches(filter, git_ref), want, "{filter} ~ {git_ref}");
    }
}

fn outgoing(events: &[&str], created_at: u64) -> HookRecord {
    HookRecord {
        id: "h-1".into(),
        kind: HookKind::Outgoing {
            url: "http://127.0.0.1:9/".into(),
            events: events.iter().map(|e| e.to_string()).collect(),
        },
        secret: Sealed {
            nonce: String::new(),
            ciphertext: String::new(),
        },
        created_at,
        created_by: "t".into(),
    }
}

fn event(kind: &str, time: u64) -> Event {
    Event {
        kind: kind.into(),
        time,
        ..Event::default()
    }
}

#[test]
fn an_outgoing_hook_wants_the_kinds_it_names_told_after_it_was_made() {
    let hook = outgoing(&["deploy.succeeded", "deploy.failed"], 100);
    for (kind, time, want) in [
        ("deploy.succeeded", 100, true),
        ("deploy.failed", 500, true),
        ("deploy.started", 500, false),
        ("instance.started", 500, false),
        ("deploy.succeeded", 99, false), // before the hook existed
    ] {
        assert_eq!(wants(&hook, &event(kind, time)), want, "{kind} at {time}");
    }
    let mut incoming = hook.clone();
    incoming.kind = HookKind::Incoming {
        stack: "shop".into(),
        git_ref: DEFAULT_REF.into(),
        provider: HookProvider::Github,
    };
    assert!(!wants(&incoming, &event("deploy.succeeded", 500)));
}

#[test]
fn events_and_urls_are_checked() {
    let ev = |v: &[&str]| check_events(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert!(ev(&["deploy.succeeded", "image.pushed", "scan.found"]).is_ok());
    assert!(ev(&[]).unwrap_err().contains("needs --events"));
    assert!(
        ev(&["deploy.done"])
            .unwrap_err()
            .contains("not an event kind")
    );
    for (url, says) in [
        ("http://127.0.0.1:8080/hook", ""),
        ("https://ci.example.com/wharf?x=1", ""),
        ("ftp://example.com/", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("not a url", "not a URL"),
        ("https://user:pw@example.com/", "must not carry a user"),
    ] {
        match check_url(url) {
            Ok(()) => assert!(says.is_empty(), "{url} accepted"),
            Err(e) => assert!(!says.is_empty() && e.contains(says), "{url}: {e}"),
        }
    }
}

#[test]
fn a_failed_delivery_is_tried_again_on_the_backoff_until_it_runs_out() {
    let mut d = new_delivery("h-1", "42.0", &event("deploy.succeeded", 1), 1_000);
    assert_eq!(d.delivery.id, "h-1-42.0", "stable: hook and cursor");
    assert!(due(&d.delivery, 1_000));
    // Each failed try at `now` is due again after 1 s, 2 s, 4 s, ... (capped at 5 minutes).
    let mut now = 1_000;
    let mut waits = Vec::new();
    for _ in 0..MAX_ATTEMPTS - 1 {
        d = after_attempt(d, now, Some(500), None);
        let next = d.delivery.next_at.expect("still pending");
        assert!(!due(&d.delivery, next - 1) && due(&d.delivery, next));
        waits.push((next - now) / 1000);
        now = next;
    }
    assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64]);
    d = after_attempt(d, now, None, Some("connection refused".into()));
    assert_eq!(d.delivery.state, "failed");
    assert_eq!(d.delivery.attempts.len(), MAX_ATTEMPTS);
    assert_eq!(
        d.delivery.attempts[0].error.as_deref(),
        Some("the receiver answered 500")
    );
    assert!(!due(&d.delivery, u64::MAX));

    let d = after_attempt(
        new_delivery("h-1", "43.0", &event("x", 1), 0),
        5,
        Some(204),
        None,
    );
    assert_eq!(
        (d.delivery.state.as_str(), d.delivery.next_at),
        ("delivered", None)
    );
    assert_eq!(RETRY.delay(20).as_secs(), 300, "capped at 5 minutes");
}

#[test]
fn the_delivery_log_keeps_the_newest_and_every_pending_one() {
    let mk = |state: &str| HookDelivery {
        id: String::new(),
        hook: "h".into(),
        event: "e".into(),
        state: state.into(),
        attempts: vec![],
        next_at: None,
        created_at: 0,
    };
    let keys: Vec<String> = (0..KEEP_DELIVERIES + 3)
        .map(|i| format!("k{i:03}"))
        .collect();
    let mut ds: Vec<HookDelivery> = (0..KEEP_DELIVERIES + 3).map(|_| mk("delivered")).collect();
    ds[0] = mk("pending"); // the oldest still waits: kept
    let pairs: Vec<(&str, &HookDelivery)> =
        keys.iter().map(String::as_str).zip(ds.iter()).collect();
    assert_eq!(to_trim(&pairs), ["k001", "k002", "k003"]);
    assert!(to_trim(&pairs[..KEEP_DELIVERIES]).is_empty());
}
