use super::*;

fn rewrite(body: &str) -> String {
    String::from_utf8(with_stream_usage(body.as_bytes()).unwrap().to_vec()).unwrap()
}

#[test]
fn reads_the_model_and_the_budget() {
    let f = body_facts(br#"{"messages":[],"model":"llama-3","max_tokens":10}"#).unwrap();
    assert_eq!(f.model.as_deref(), Some("llama-3"));
    assert_eq!(f.summary().completion_budget, Some(10));
    assert_eq!(
        body_facts(br#"{"messages":[]}"#).unwrap_err(),
        BodyError::NoModel
    );
    assert_eq!(
        body_facts(br#"{"model":null}"#).unwrap_err(),
        BodyError::NoModel
    );
    assert!(matches!(body_facts(b"{nope"), Err(BodyError::NotJson(_))));
    assert!(matches!(body_facts(b"[1]"), Err(BodyError::NotJson(_))));
}

/// `{"model":5}` was refused with serde's "invalid type: integer `5`, expected a string" and
/// `param: null`; `{"model":""}` and no `model` with `param: null` too. Each is now its own
/// error, which the refusal names `model` by (`error::convert`).
#[test]
fn a_model_that_is_no_string_is_told_apart_from_none() {
    for body in [
        r#"{"messages":[]}"#,
        r#"{"model":""}"#,
        r#"{"model":null,"messages":[]}"#,
    ] {
        assert_eq!(
            body_facts(body.as_bytes()).unwrap_err(),
            BodyError::NoModel,
            "{body}"
        );
    }
    for body in [
        r#"{"model":5}"#,
        r#"{"model":-1.5,"messages":[]}"#,
        r#"{"model":true}"#,
        r#"{"model":["llama-3"],"messages":[]}"#,
        r#"{"model":{"name":"llama-3","x":[1,{"y":2}]},"messages":[]}"#,
        r#"{"messages":[],"model":[]}"#,
    ] {
        assert_eq!(
            body_facts(body.as_bytes()).unwrap_err(),
            BodyError::ModelNotString,
            "{body}"
        );
    }
    // The rest of the body is still parsed: broken JSON after it is not JSON.
    assert!(matches!(
        body_facts(br#"{"model":{"a":1},"messages":[}"#),
        Err(BodyError::NotJson(_))
    ));
    // A string with escapes is a string.
    let f = body_facts(br#"{"model":"llama\u002d3"}"#).unwrap();
    assert_eq!(f.model.as_deref(), Some("llama-3"));
}

/// Go's `encoding/json` (Ollama) takes `Model` or `MODEL` for `model`, the last one winning,
/// and folds `ſ` to `s` and the Kelvin sign to `k`; .NET's case-insensitive option folds `ı`.
/// The gateway read only the exact `model`: `{"model":"llama-3","Model":"gpt-4"}` passed an
/// allowlist of `llama-*` and reached an upstream that served `gpt-4`.
#[test]
fn a_field_spelled_like_a_read_one_is_refused() {
    for (body, field) in [
        (r#"{"model":"llama-3","Model":"gpt-4"}"#, "model"),
        (r#"{"MODEL":"gpt-4","model":"llama-3"}"#, "model"),
        (r#"{"model":"llama-3","mod\u0045l":"gpt-4"}"#, "model"),
        (r#"{"model":"m","Stream":true}"#, "stream"),
        (r#"{"model":"m","ſtream":true}"#, "stream"),
        (r#"{"model":"m","max_to\u212Aens":9}"#, "max_tokens"),
        (
            r#"{"model":"m","max_completıon_tokens":9}"#,
            "max_completion_tokens",
        ),
        (r#"{"model":"m","STREAM_OPTIONS":{}}"#, "stream_options"),
        (
            r#"{"model":"m","max_completİon_tokens":9}"#,
            "max_completion_tokens",
        ),
        (r#"{"model":"m","max_tokens":9,"N":100}"#, "n"),
        (r#"{"model":"m","beſt_of":100}"#, "best_of"),
        (r#"{"model":"m","Best_Of":100}"#, "best_of"),
        (r#"{"model":"m","Prompt":["a","b"]}"#, "prompt"),
    ] {
        match body_facts(body.as_bytes()) {
            Err(BodyError::SpelledLike { field: f, .. }) => assert_eq!(f, field, "{body}"),
            other => panic!("{body}: {other:?}"),
        }
    }
    // Names that fold to nothing the gateway reads are the upstream's business.
    assert!(body_facts(br#"{"model":"m","Messages":[],"models":1,"model_":2}"#).is_ok());
}

#[test]
fn a_read_field_twice_is_refused() {
    for (body, field) in [
        (r#"{"model":"llama-3","model":"gpt-4"}"#, "model"),
        (r#"{"model":"llama-3","mod\u0065l":"gpt-4"}"#, "model"),
        (r#"{"model":"m","stream":false,"stream":true}"#, "stream"),
        (
            r#"{"model":"m","max_tokens":1,"max_tokens":100000}"#,
            "max_tokens",
        ),
        (r#"{"model":"m","n":1,"n":100}"#, "n"),
        (r#"{"model":"m","best_of":1,"best_of":100}"#, "best_of"),
        (r#"{"model":"m","prompt":"a","prompt":["a","b"]}"#, "prompt"),
    ] {
        assert_eq!(
            body_facts(body.as_bytes()).unwrap_err(),
            BodyError::Twice(field),
            "{body}"
        );
    }
}

/// `max_completion_tokens: 0` beside `max_tokens: 100000` made the estimate 0 where vLLM
/// (`max_completion_tokens or max_tokens`) generates 100,000: the largest given wins now.
#[test]
fn the_budget_is_the_largest_count_given() {
    let budget = |b: &str| {
        body_facts(b.as_bytes())
            .unwrap()
            .summary()
            .completion_budget
    };
    assert_eq!(
        budget(r#"{"model":"m","max_completion_tokens":0,"max_tokens":100000}"#),
        Some(100000)
    );
    assert_eq!(
        budget(r#"{"model":"m","max_completion_tokens":50,"max_tokens":10}"#),
        Some(50)
    );
    assert_eq!(budget(r#"{"model":"m","max_output_tokens":7}"#), Some(7));
    assert_eq!(budget(r#"{"model":"m","max_tokens":"300"}"#), Some(300));
    assert_eq!(budget(r#"{"model":"m","max_tokens":2.5}"#), Some(3));
    assert_eq!(budget(r#"{"model":"m","max_tokens":0}"#), None);
    assert_eq!(budget(r#"{"model":"m","max_tokens":-4}"#), None);
    assert_eq!(budget(r#"{"model":"m","max_tokens":null}"#), None);
}

/// `max_tokens: 100, n: 100` held 100 tokens where vLLM generates 100 choices of up to 100
/// each: eight such requests at once passed a quota of 1,000 and used 80,000.
#[test]
fn the_hold_counts_every_sequence() {
    let summary = |b: &str| body_facts(b.as_bytes()).unwrap().summary();
    let tokens = |b: &str| summary(b).completion_tokens(256);
    assert_eq!(tokens(r#"{"model":"m","max_tokens":100}"#), 100);
    assert_eq!(tokens(r#"{"model":"m","max_tokens":100,"n":100}"#), 10_000);
    assert_eq!(tokens(r#"{"model":"m","max_tokens":100,"n":"8"}"#), 800);
    assert_eq!(tokens(r#"{"model":"m","max_tokens":100,"n":2.5}"#), 300);
    // `best_of` sequences are generated to return `n` of them: the larger counts.
    assert_eq!(
        tokens(r#"{"model":"m","max_tokens":10,"n":2,"best_of":5}"#),
        50
    );
    assert_eq!(tokens(r#"{"model":"m","max_tokens":10,"best_of":3}"#), 30);
    // Each prompt of an array of prompts is generated on its own (vLLM, OpenAI's
    // completions): twenty prompts on the hold of one overshot the quota twentyfold.
    assert_eq!(
        tokens(r#"{"model":"m","max_tokens":10,"prompt":["a","b","c"]}"#),
        30
    );
    assert_eq!(
        tokens(r#"{"model":"m","max_tokens":10,"prompt":[[1,2],[3]]}"#),
        20
    );
    assert_eq!(
        tokens(r#"{"model":"m","max_tokens":10,"n":2,"prompt":["a","b","c"]}"#),
        60
    );
    // One prompt: a string, token ids, an empty array, the Responses API's template object.
    for p in [
        r#""a""#,
        "[1,2,3]",
        "[]",
        r#"{"id":"p","variables":{"x":["a","b"]}}"#,
    ] {
        let body = format!(r#"{{"model":"m","max_tokens":10,"prompt":{p}}}"#);
        assert_eq!(tokens(&body), 10, "{p}");
    }
    // No budget given: the default, for each sequence.
    assert_eq!(tokens(r#"{"model":"m","n":4}"#), 1024);
    // What no upstream reads as a count is one sequence (the upstream judges it).
    for n in ["0", "-3", "null", "true", r#""many""#, "[5]"] {
        let body = format!(r#"{{"model":"m","max_tokens":100,"n":{n}}}"#);
        assert_eq!(summary(&body).sequences, 1, "{n}");
        assert_eq!(tokens(&body), 100, "{n}");
    }
    // The client's numbers, up to u64::MAX: the product saturates at `MAX_COUNT`.
    let max = u64::MAX;
    for body in [
        format!(r#"{{"model":"m","max_tokens":{max},"n":{max}}}"#),
        format!(r#"{{"model":"m","max_tokens":{max},"best_of":2}}"#),
        format!(
            r#"{{"model":"m","max_tokens":{},"n":{}}}"#,
            1 << 20,
            (1 << 20) + 1
        ),
        format!(r#"{{"model":"m","n":{max}}}"#),
    ] {
        assert_eq!(tokens(&body), MAX_COUNT, "{body}");
    }
}

#[test]
fn the_rewrite_asks_for_usage_and_keeps_the_rest_as_written() {
    assert_eq!(
        rewrite(r#"{"model":"m","stream":true}"#),
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
    );
    // Order, numbers past f64 and u64, and spacing inside values stay as the client wrote them
    // (a round trip through `serde_json::Value` sorted the members and rounded the numbers).
    assert_eq!(
        rewrite(
            r#"{"z":1,"seed":12345678901234567890123,"t":0.1000000000000000055,"a":[ 1, 2 ],"model":"m"}"#
        ),
        r#"{"z":1,"seed":12345678901234567890123,"t":0.1000000000000000055,"a":[ 1, 2 ],"model":"m","stream_options":{"include_usage":true}}"#
    );
    assert_eq!(
        rewrite(
            r#"{"stream_options":{"include_usage":false,"continuous_usage_stats":true},"model":"m"}"#
        ),
        r#"{"stream_options":{"continuous_usage_stats":true,"include_usage":true},"model":"m"}"#
    );
    assert_eq!(
        rewrite(r#"{"stream_options":null,"model":"m"}"#),
        r#"{"stream_options":{"include_usage":true},"model":"m"}"#
    );
    assert_eq!(
        rewrite(r#"{"model":"m","x":1e400}"#),
        r#"{"model":"m","x":1e400,"stream_options":{"include_usage":true}}"#
    );
}

/// A body the facts reader took but a rewrite through `serde_json::Value` could not (a number
/// past f64, nesting past its depth limit) went upstream unrewritten: the upstream sent no
/// usage, and the key was charged next to nothing for a whole stream.
#[test]
fn what_the_facts_reader_takes_the_rewrite_takes() {
    let deep = format!(
        r#"{{"model":"m","stream":true,"x":{}1{}}}"#,
        "[".repeat(120),
        "]".repeat(120)
    );
    for body in [r#"{"model":"m","stream":true,"x":1e400}"#.to_string(), deep] {
        assert!(body_facts(body.as_bytes()).is_ok());
        let out = with_stream_usage(body.as_bytes()).unwrap();
        assert!(body_facts(&out).unwrap().summary().wants_usage);
    }
    assert!(matches!(
        with_stream_usage(b"{nope"),
        Err(BodyError::Unrewritable(_))
    ));
    // Past serde_json's depth limit both refuse.
    for depth in [126, 127, 128, 129, 200] {
        let body = format!(
            r#"{{"model":"m","x":{}1{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert_eq!(
            body_facts(body.as_bytes()).is_ok(),
            with_stream_usage(body.as_bytes()).is_ok(),
            "depth {depth}"
        );
    }
}

/// `"stream_options":[true]` was read as asking for usage (serde's derive takes a sequence
/// for a struct), so the body went upstream without the rewrite; only one exact `true` asks.
#[test]
fn only_a_plain_include_usage_true_asks_for_usage() {
    let asks = |opts: &str| {
        let body = format!(r#"{{"model":"m","stream":true,"stream_options":{opts}}}"#);
        body_facts(body.as_bytes()).unwrap().summary().wants_usage
    };
    assert!(asks(r#"{"include_usage":true}"#));
    assert!(asks(
        r#"{"continuous_usage_stats":true,"include_usage":true}"#
    ));
    for not in [
        "[true]",
        "[]",
        "true",
        "1",
        r#""yes""#,
        "null",
        r#"{"include_usage":1}"#,
        r#"{"include_usage":"true"}"#,
        r#"{"include_usage":false}"#,
        r#"{"Include_Usage":true}"#,
        r#"{"include_usage":true,"include_usage":false}"#,
        r#"{"include_usage":true,"include_uſage":false}"#,
    ] {
        assert!(!asks(not), "{not}");
        let body = format!(r#"{{"model":"m","stream":true,"stream_options":{not}}}"#);
        let out = rewrite(&body);
        assert!(out.ends_with(r#""include_usage":true}}"#), "{not}: {out}");
        assert!(
            serde_json::from_str::<serde_json::Value>(&out).is_ok(),
            "{out}"
        );
    }
}
