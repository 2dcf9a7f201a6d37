//! Unit tests of `gateway.toml` parsing and validation.

use super::*;

#[test]
fn empty_file_gives_defaults() {
    let c = Config::parse("", None).unwrap();
    assert_eq!(c.server.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(c.keys.prefix, "sk_kg");
    assert_eq!(c.upstreams.len(), 1);
    assert_eq!(c.limits.burst, c.limits.requests_per_minute);
}

#[test]
fn unknown_key_names_line() {
    let err = Config::parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n", None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 3") && err.contains("lisen"), "{err}");
}

#[test]
fn upstream_health_check_is_parsed_under_the_base_path() {
    let c = Config::parse(
        "[[upstream]]\nurl = \"http://h:1/vllm\"\nhealth = \"/health\"\nhealth_interval = \"2s\"\n",
        None,
    )
    .unwrap();
    let h = c.upstreams[0].health.as_ref().unwrap();
    assert_eq!(h.path.as_str(), "/vllm/health");
    assert_eq!(h.interval, Duration::from_secs(2));
    assert!(Config::parse("", None).unwrap().upstreams[0]
        .health
        .is_none());
    assert!(!Config::parse("", None).unwrap().log.probes);
    let err = Config::parse(
        "[[upstream]]\nurl = \"http://h:1\"\nhealth = \"health\"\n",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("upstream[1].health"), "{err}");
    let err = Config::parse(
        "[[upstream]]\nurl = \"http://h:1\"\nhealth = \"/h\"\nhealth_interval = \"1ms\"\n",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("upstream[1].health_interval"), "{err}");
}

#[test]
fn bad_values_name_the_field() {
    let err = Config::parse("[[upstream]]\nurl = \"ftp://x\"\n", None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("upstream[1].url"), "{err}");
    // Found by a probe: a URL's password went out as the upstream's `Host`, its query was
    // dropped, and `keygate check` printed it. Refused, and never repeated.
    for (url, says) in [
        ("http://user:hunter2pass@127.0.0.1:9000/v1", "credentials"),
        ("http://:hunter2pass@h", "credentials"),
        ("http://h/base?token=hunter2pass", "query"),
        ("http://h/b#hunter2pass", "fragment"),
        ("http://h:hunter2pass", "port"),
    ] {
        let err = Config::parse(&format!("[[upstream]]\nurl = \"{url}\"\n"), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("upstream[1].url") && err.contains(says),
            "{url}: {err}"
        );
        assert!(!err.contains("hunter2pass"), "{err}");
    }
    let err = Config::parse("[limits]\nrequests_per_minute = 0\n", None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("limits.requests_per_minute"), "{err}");
    let err = Config::parse(
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"nope\"]\n",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("server.trusted_proxies") && err.contains("`nope`"),
        "{err}"
    );
}

#[test]
fn trusted_proxies() {
    assert!(Config::parse("", None)
        .unwrap()
        .server
        .trusted_proxies
        .is_empty());
    let c = Config::parse(
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.168.1.7\", \"fd00::/8\"]\n",
        None,
    )
    .unwrap();
    let t = &c.server.trusted_proxies;
    for ip in ["10.9.8.7", "192.168.1.7", "fd00::1", "::ffff:10.1.1.1"] {
        assert!(t.contains(ip.parse().unwrap()), "{ip}");
    }
    for ip in ["11.0.0.1", "192.168.1.8", "fe80::1"] {
        assert!(!t.contains(ip.parse().unwrap()), "{ip}");
    }
}

#[test]
fn cluster_backend_is_built_at_load() {
    let cluster = |url: &str, extra: &str| {
        Config::parse(
            &format!("[cluster]\nbackend = \"redis\"\nredis_url = \"{url}\"\n{extra}"),
            None,
        )
    };
    let c = cluster("rediss://127.0.0.1:6380/", "")
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(c.lease, Duration::from_secs(30));
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("ca.pem");
    std::fs::write(&garbage, "not PEM").unwrap();
    let ca = format!("ca_file = \"{}\"\n", garbage.display());
    for (url, extra, field) in [
        ("redis://127.0.0.1:port/", "", "cluster.redis_url"),
        ("rediss://127.0.0.1:6380/#insecure", "", "cluster.redis_url"),
        ("rediss://127.0.0.1:6380/", ca.as_str(), "cluster.ca_file"),
        ("redis://127.0.0.1:6380/", ca.as_str(), "cluster.redis_url"),
        (
            "rediss://h/",
            "client_cert_file = \"c.pem\"\n",
            "cluster.client_key_file",
        ),
        ("redis://h/", "lease = \"500ms\"\n", "cluster.lease"),
    ] {
        let err = cluster(url, extra).unwrap_err().to_string();
        assert!(err.contains(field), "{url} {extra}: {err}");
    }
}

#[test]
fn connection_limits_have_defaults_and_name_the_field() {
    let c = Config::parse("", None).unwrap().server;
    assert_eq!(c.idle_timeout, Duration::from_secs(75));
    assert_eq!(c.write_timeout, Duration::from_secs(60));
    assert_eq!(c.max_connections_per_ip, None);
    let c = Config::parse(
        "[server]\nidle_timeout = \"5s\"\nwrite_timeout = \"2s\"\nmax_connections_per_ip = 3\n",
        None,
    )
    .unwrap()
    .server;
    assert_eq!(c.idle_timeout, Duration::from_secs(5));
    assert_eq!(c.write_timeout, Duration::from_secs(2));
    assert_eq!(c.max_connections_per_ip, Some(3));
    for (text, field) in [
        ("idle_timeout = \"0s\"", "server.idle_timeout"),
        ("write_timeout = \"0s\"", "server.write_timeout"),
        ("write_timeout = \"soon\"", "server.write_timeout"),
        (
            "max_connections_per_ip = 0",
            "server.max_connections_per_ip",
        ),
    ] {
        let err = Config::parse(&format!("[server]\n{text}\n"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{err}");
    }
}

#[test]
fn usage_retention_has_a_default_and_names_the_field() {
    let c = Config::parse("", None).unwrap();
    assert_eq!(c.usage.retention, Duration::from_secs(90 * 86_400));
    let c = Config::parse("[usage]\nretention = \"7d\"\n", None).unwrap();
    assert_eq!(c.usage.retention, Duration::from_secs(7 * 86_400));
    for text in [
        "retention = \"30m\"",
        "retention = \"forever\"",
        "retention = \"11y\"",
    ] {
        let err = Config::parse(&format!("[usage]\n{text}\n"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("usage.retention"), "{err}");
    }
    let err = Config::parse("[usage]\nkeep = \"7d\"\n", None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("keep"), "{err}");
}

#[test]
fn notify_is_off_by_default_and_its_fields_are_checked_by_name() {
    assert!(Config::parse("", None).unwrap().notify.is_none());
    let c = Config::parse(
        "[notify]\nwebhook_url = \"https://hooks.example.com/services/T0/B0/SECRET\"\n",
        None,
    )
    .unwrap();
    let n = c.notify.unwrap();
    assert_eq!(n.format, notify::Format::Json);
    assert_eq!(n.expiry_days, [1, 3, 7]);
    assert_eq!(n.timeout, Duration::from_secs(5));
    assert_eq!(n.url.port, 443);
    assert_eq!(n.url.path.as_str(), "/services/T0/B0/SECRET");
    assert!(n.tls.is_some() && n.authorization.is_none());
    assert!(
        !format!("{n:?}").contains("SECRET"),
        "Debug shows no path: {n:?}"
    );
    std::env::set_var("KEYGATE_TEST_NOTIFY_TOKEN", "Bearer s3cret-token");
    let c = Config::parse(
        "[notify]\nwebhook_url = \"http://127.0.0.1:9/hook?x=1\"\nformat = \"slack\"\nexpiry_days = [14, 1, 14]\ntimeout = \"2s\"\nheader_env = \"KEYGATE_TEST_NOTIFY_TOKEN\"\n",
        None,
    )
    .unwrap();
    let n = c.notify.unwrap();
    assert_eq!(n.format, notify::Format::Slack);
    assert_eq!(n.expiry_days, [1, 14]);
    assert_eq!(n.timeout, Duration::from_secs(2));
    assert_eq!(n.url.path.as_str(), "/hook?x=1");
    assert!(n.tls.is_none());
    assert_eq!(n.authorization.as_ref().unwrap(), "Bearer s3cret-token");
    assert!(!format!("{n:?}").contains("s3cret"), "{n:?}");
    for (text, field) in [
        ("format = \"json\"", "notify.webhook_url"),
        ("webhook_url = \"ftp://h/x\"", "notify.webhook_url"),
        ("webhook_url = \"redis://h:1\"", "notify.webhook_url"),
        ("webhook_url = \"/just/a/path\"", "notify.webhook_url"),
        ("webhook_url = \"https://u:p@h/x\"", "notify.webhook_url"),
        (
            "webhook_url = \"http://h/\"\nformat = \"xml\"",
            "notify.format",
        ),
        (
            "webhook_url = \"http://h/\"\nexpiry_days = [0]",
            "notify.expiry_days",
        ),
        (
            "webhook_url = \"http://h/\"\nexpiry_days = [400]",
            "notify.expiry_days",
        ),
        (
            "webhook_url = \"http://h/\"\ntimeout = \"0s\"",
            "notify.timeout",
        ),
        (
            "webhook_url = \"http://h/\"\ntimeout = \"soon\"",
            "notify.timeout",
        ),
        (
            "webhook_url = \"http://h/\"\nheader_env = \"KEYGATE_TEST_NOTIFY_UNSET\"",
            "notify.header_env",
        ),
        (
            "webhook_url = \"http://h/\"\nca_file = \"ca.pem\"",
            "notify.ca_file",
        ),
        (
            "webhook_url = \"https://h/\"\nca_file = \"/no/such/ca.pem\"",
            "notify.ca_file",
        ),
    ] {
        let err = Config::parse(&format!("[notify]\n{text}\n"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{text}: {err}");
        assert!(!err.contains("u:p@"), "the URL is not repeated: {err}");
    }
    let err = Config::parse("[notify]\nwebhook = \"http://h/\"\n", None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("webhook"), "{err}");
}
