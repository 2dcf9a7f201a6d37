//! Unit tests of `account::scanner`: usage found wherever the chunks split.

use super::*;
use crate::account::relayed::ContentCounter;

#[test]
fn plain_json_usage() {
    let mut s = Structured::default();
    s.feed(br#"{"choices":[{"text":"\"prompt_tokens\": 99"}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#);
    assert_eq!(
        s.tokens(),
        Some(Tokens {
            prompt: 12,
            completion: 7
        })
    );
}

#[test]
fn split_across_chunks_at_every_point() {
    let body = br#"data: {"choices":[],"usage":{"prompt_tokens":123,"completion_tokens":4567}}

data: [DONE]

"#;
    assert_at_every_cut(body, 123, 4567);
}

#[test]
fn split_into_chunks_shorter_than_the_field() {
    let body = br#"data: {"choices":[],"usage":{"prompt_tokens":123,"completion_tokens":4567}}

data: [DONE]

"#;
    for size in [1, 2, 3, 7, 20] {
        let mut s = Structured::default();
        for chunk in body.chunks(size) {
            s.feed(chunk);
        }
        assert_eq!(
            s.tokens(),
            Some(Tokens {
                prompt: 123,
                completion: 4567
            }),
            "chunks of {size} bytes"
        );
    }
}

fn count(chunks: &[&[u8]]) -> u64 {
    let mut c = ContentCounter::default();
    for ch in chunks {
        c.feed(ch);
    }
    c.tokens()
}

#[test]
fn content_counter_counts_relayed_text_wherever_the_chunks_split() {
    let stream: &[u8] = concat!(
        "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\n",
        ": keep-alive \"stray quote\n",
        "data: {\"choices\":[{\"delta\": {\"content\" : \" wonderful\"}}]}\n\n",
        "data: {\"choices\":[{\"text\":\"a\\\"b\\\\c\",\"type\":\"text\"}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"\u{65e5}\u{672c}\u{8a9e}\u{3067}\u{3059}\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":null,\"tool_calls\":[{\"function\":{\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}}]}}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\n",
        "data: [DONE]\n\n",
    )
    .as_bytes();
    // "Hello" 1; " wonderful" (10 chars) 2; `a\"b\\c` (5 chars, escapes as one) 1;
    // five CJK characters 1; `{\"city\":\"Paris\"}` (16 chars) 4; empty and null: 0.
    let want = 1 + 2 + 1 + 1 + 4;
    assert_eq!(count(&[stream]), want);
    for cut in 1..stream.len() {
        assert_eq!(
            count(&[&stream[..cut], &stream[cut..]]),
            want,
            "cut at {cut}"
        );
    }
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(count(&bytes), want, "byte by byte");
}

#[test]
fn content_counter_edge_cases() {
    // A value cut off mid-string counts what arrived.
    assert_eq!(count(&[b"data: {\"content\":\"abcdefghij"]), 2);
    // Only string values of content fields, not names, other fields or array members.
    assert_eq!(
        count(&[br#"{"type":"content","content":["abcdefgh"],"x":"content"}"#]),
        0
    );
    // A name longer than any content field is skipped, not overflowed.
    assert_eq!(
        count(&[br#"{"an_extremely_long_field_name_here":"content","text":"abcd"}"#]),
        1
    );
    // A whole plain JSON answer: one value, 4 characters a token.
    assert_eq!(
        count(&[
            br#"{"choices":[{"message":{"role":"assistant","content":"0123456789abcdefghij"}}]}"#
        ]),
        5
    );
}

#[test]
fn no_usage() {
    let mut s = Structured::default();
    s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n");
    assert_eq!(s.tokens(), None);
}

#[test]
fn only_the_two_counts_are_taken_among_the_other_token_fields() {
    // vLLM's and OpenAI's usage objects carry more `*_tokens` fields, details nested after
    // the counts: only `prompt_tokens` and `completion_tokens` themselves count.
    let body = br#"{"usage":{"prompt_tokens":12,"total_tokens":49,"completion_tokens":37,"prompt_tokens_details":{"cached_tokens":8},"completion_tokens_details":{"reasoning_tokens":30,"accepted_prediction_tokens":2},"xprompt_tokens":5,"completion_tokens_total":6}}"#;
    assert_at_every_cut(body, 12, 37);
}

/// Feeds `body` in two chunks cut at every point: the counts are found wherever the cut falls.
fn assert_at_every_cut(body: &[u8], prompt: u64, completion: u64) {
    for echoes in [true, false] {
        for cut in 1..body.len() {
            let mut s = UsageScanner::for_answer(echoes);
            s.feed(&body[..cut]);
            s.feed(&body[cut..]);
            assert_eq!(
                s.tokens(),
                Some(Tokens { prompt, completion }),
                "cut at {cut}, {s:?}"
            );
        }
    }
}

#[test]
fn the_responses_apis_input_and_output_counts_are_taken() {
    let body = br#"{"type":"response.completed","response":{"usage":{"input_tokens":1200,"input_tokens_details":{"cached_tokens":3},"output_tokens":1000,"output_tokens_details":{"reasoning_tokens":20},"total_tokens":2200}}}"#;
    assert_at_every_cut(body, 1200, 1000);
}

#[test]
fn counts_past_any_real_request_are_not_believed_past_the_cap() {
    let mut s = Structured::default();
    s.feed(br#"{"usage":{"prompt_tokens":9999999999999999999,"completion_tokens":8446744073709551627}}"#);
    let t = s.tokens().unwrap();
    assert_eq!((t.prompt, t.completion), (1 << 40, 1 << 40));
    assert_eq!(t.total(), 1 << 41, "the sum does not wrap");
}

/// Feeds `body` in two chunks cut at every point: no counts are found wherever the cut falls.
fn assert_none_at_every_cut(body: &[u8]) {
    for cut in 1..body.len() {
        let mut s = Structured::default();
        s.feed(&body[..cut]);
        s.feed(&body[cut..]);
        assert_eq!(s.tokens(), None, "cut at {cut}");
    }
}

#[test]
fn counts_a_client_had_echoed_back_are_not_usage() {
    // vLLM's `response.created` carries the request's tools, JSON schemas and all, with a
    // `usage` of null: a client's members named like counts are not the upstream's report.
    assert_none_at_every_cut(
        br#"data: {"type":"response.created","response":{"id":"r","tools":[{"type":"function","name":"f","parameters":{"type":"object","input_tokens":0,"output_tokens":0}}],"text":{"format":{"schema":{"prompt_tokens":0}}},"usage":null},"sequence_number":0}"#,
    );
    // Nor when the client names its own object `usage`, at any depth it can reach.
    assert_none_at_every_cut(
        br#"{"response":{"tools":[{"parameters":{"usage":{"input_tokens":0,"output_tokens":0}}}]}}"#,
    );
    assert_none_at_every_cut(
        br#"{"id":"c","kv_transfer_params":{"usage":{"prompt_tokens":0,"completion_tokens":0}},"choices":[]}"#,
    );
}

#[test]
fn the_upstreams_usage_stands_whatever_a_client_echo_says_around_it() {
    // Planted counts after the real ones, in the same answer, do not replace them.
    assert_structured_at_every_cut(
        br#"{"usage":{"prompt_tokens":12,"completion_tokens":7},"kv_transfer_params":{"prompt_tokens":0,"completion_tokens":0,"usage":{"prompt_tokens":0}}}"#,
        12,
        7,
    );
    // A stream's planted first event and its real last one.
    assert_structured_at_every_cut(
        b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"tools\":[{\"parameters\":{\"input_tokens\":0,\"output_tokens\":0}}],\"usage\":null}}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"tools\":[{\"parameters\":{\"input_tokens\":0,\"output_tokens\":0}}],\"usage\":{\"input_tokens\":31,\"output_tokens\":250,\"total_tokens\":281}}}\n\n",
        31,
        250,
    );
}

#[test]
fn a_pretty_printed_answer_is_read_as_a_compact_one() {
    assert_at_every_cut(
        b"{\n  \"choices\": [],\n  \"usage\": {\n    \"prompt_tokens\" : 5,\n    \"completion_tokens\":\t6\n  }\n}\n",
        5,
        6,
    );
}

fn assert_structured_at_every_cut(body: &[u8], prompt: u64, completion: u64) {
    for cut in 1..body.len() {
        let mut s = Structured::default();
        s.feed(&body[..cut]);
        s.feed(&body[cut..]);
        assert_eq!(
            s.tokens(),
            Some(Tokens { prompt, completion }),
            "cut at {cut}"
        );
    }
}
