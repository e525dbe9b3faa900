//! What `s2uc` prints: SciStream's parseable lines, its own summaries, and
//! JSON for workflow tools.

use scistream_client::Tunnel;
use serde_json::json;

/// The lines SciStream's client prints for a request, which scripts parse:
/// its `uid; s2cs; access_token; role` header and the line after it (the
/// token is never printed: `INVALID_TOKEN` when there is none, `REDACTED`
/// when there is one), its progress lines, the gateway's answer in protobuf
/// text form, and the listeners as a Python list.
pub(crate) fn print_scistream_lines(t: &Tunnel, s2cs: &str, has_token: bool, hello_sent: bool) {
    let role = t.role.as_str();
    let token = if has_token {
        "REDACTED"
    } else {
        "INVALID_TOKEN"
    };
    println!("uid; s2cs; access_token; role");
    println!("{} {s2cs} {token} {role}", t.uid);
    println!("sending client request message");
    println!("started client request");
    println!("waiting for hello message");
    if hello_sent {
        println!("Hello message sent successfully");
    }
    print!("{}", protobuf_text(&t.requested));
    println!();
    println!("Listeners: {}", python_list(&t.listeners));
}

/// A `Response` as Python's `print(message)` shows it (protobuf text format).
pub(crate) fn protobuf_text(r: &scistream_protocol::pb::Response) -> String {
    let mut out = String::new();
    for l in &r.listeners {
        out.push_str(&format!("listeners: \"{l}\"\n"));
    }
    for l in &r.prod_listeners {
        out.push_str(&format!("prod_listeners: \"{l}\"\n"));
    }
    out
}

/// A list of strings as Python prints one: `['a', 'b']`.
pub(crate) fn python_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("'{i}'")).collect();
    format!("[{}]", quoted.join(", "))
}

pub(crate) fn print_tunnel(t: &Tunnel, json: bool, s2cs: &str) {
    if json {
        println!(
            "{}",
            json!({"uid": t.uid, "role": t.role, "listeners": t.listeners, "targets": t.targets, "rate_kbps": t.rate_kbps, "s2cs": s2cs})
        );
        return;
    }
    let cap = if t.rate_kbps == 0 {
        "none".to_string()
    } else {
        format!("{} kbit/s", t.rate_kbps)
    };
    match t.role {
        scistream_protocol::Role::Prod => {
            println!("Inbound tunnel ready on {s2cs}.");
            println!("  uid:        {}", t.uid);
            println!("  listeners:  {}", t.listeners.join(","));
            println!("  forwarding to receivers: {}", t.targets.join(","));
            println!("  rate cap:   {cap}");
            println!("Next, on the instrument side:");
            println!(
                "  s2uc outbound_request --s2cs INSTRUMENT_S2CS:PORT --server_cert INSTRUMENT.crt {} {}",
                t.uid,
                t.listeners.join(",")
            );
        }
        scistream_protocol::Role::Cons => {
            println!("Outbound tunnel ready on {s2cs}.");
            println!("  uid:        {}", t.uid);
            println!(
                "  listeners:  {}   <- point the instrument's software here",
                t.listeners.join(",")
            );
            println!("  forwarding to inbound gateway: {}", t.targets.join(","));
            println!("  rate cap:   {cap}");
        }
    }
}
