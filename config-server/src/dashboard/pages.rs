//! The dashboard's pages as plain functions from views to HTML: what the
//! compiler checks is the Rust that builds them, and every value from the
//! store goes through [`esc`]. No template engine, no script needed to
//! read a page; `app.js` only swaps in fresh content when something
//! changes.

use fogswarm_protocol::api::{DeviceState, DeviceView, Event, FleetStatus, SwarmView};
use fogswarm_protocol::service::{ServiceView, TaskObserved};
use fogswarm_protocol::telemetry::TelemetryView;
use std::fmt::Write;

/// HTML-escapes text for element content and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value.
pub fn url(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn ago(at: i64) -> String {
    let s = (crate::store::now() - at).max(0);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// The whole page around `main` (signed in: with the navigation).
pub fn layout(title: &str, main: &str, signed_in: bool) -> String {
    let nav = if signed_in {
        r#"<nav aria-label="Main"><a href="/">Fleet</a><a href="/devices">Devices</a><a href="/events">Events</a></nav>
<span id="live" class="muted" aria-live="polite"></span>
<form class="inline" method="post" action="/logout"><button type="submit">Sign out</button></form>"#
    } else {
        ""
    };
    let script = if signed_in {
        r#"<script src="/assets/app.js" defer></script>"#
    } else {
        ""
    };
    format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · fogswarm</title>
<link rel="stylesheet" href="/assets/style.css">
{script}
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header><span class="brand">fogswarm</span>{nav}</header>
<main id="main" tabindex="-1">{main}</main>
</body>
</html>
"##,
        title = esc(title),
    )
}

pub fn login(problem: Option<&str>) -> String {
    let flash = problem
        .map(|p| format!(r#"<p class="flash" role="alert">{}</p>"#, esc(p)))
        .unwrap_or_default();
    format!(
        r#"<h1>Sign in</h1>
{flash}
<form method="post" action="/login">
<p><label for="user">User</label> <span class="muted">(empty for a token)</span><br>
<input type="text" id="user" name="user" autocomplete="username" size="40"></p>
<p><label for="token">Password, or a token</label><br>
<input type="password" id="token" name="token" autocomplete="current-password" required autofocus size="40"></p>
<p><button type="submit">Sign in</button></p>
</form>
<p class="muted">A user signs in with their name and password. Without a name: the admin token the server wrote to its data directory (<code>admin.token</code>) at first start, or a user's API token (<code>fogswarm token create</code>).</p>"#
    )
}

fn state_badge(d: &DeviceView) -> String {
    let mut out = format!(
        r#"<span class="{}">{}</span>"#,
        match d.state {
            DeviceState::Active => "active",
            DeviceState::Pending => "pending",
            DeviceState::Error => "error",
            _ => "",
        },
        esc(d.state.as_str())
    );
    if d.offline_since.is_some() {
        out.push_str(r#" <span class="badge offline">offline</span>"#);
    }
    out
}

fn labels_text(d: &DeviceView) -> String {
    d.labels
        .iter()
        .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn fact<'a>(d: &'a DeviceView, key: &str) -> &'a str {
    d.facts.get(key).map(String::as_str).unwrap_or("-")
}

/// The fleet at a glance: problems first.
/// `may_change` says of a swarm whether the signed-in user may change it:
/// no action is offered where it would be refused.
pub fn fleet(
    status: &FleetStatus,
    swarms: &[SwarmView],
    pending: &[DeviceView],
    may_change: &dyn Fn(&str) -> bool,
) -> String {
    let mut out = String::from("<h1>Fleet</h1>");
    let _ = write!(
        out,
        r#"<div class="cards"><div class="card"><b>{}</b>devices</div><div class="card"><b>{}</b>swarms</div><div class="card"><b class="{}">{}</b>offline</div><div class="card"><b>{}</b>with an error</div><div class="card"><b>{}</b>pending approval</div></div>"#,
        status.devices,
        status.swarms.len(),
        if status.offline.is_empty() {
            ""
        } else {
            "error"
        },
        status.offline.len(),
        status.problems.len(),
        pending.len()
    );
    if !status.offline.is_empty() {
        out.push_str(r#"<h2>Offline</h2><div class="scroll"><table><thead><tr><th>Device</th><th>Swarm</th><th>Offline since</th><th>Last seen</th></tr></thead><tbody>"#);
        for o in &status.offline {
            let _ = write!(
                out,
                r#"<tr><td><a href="/devices/{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                url(&o.device),
                esc(&o.device),
                esc(&o.swarm),
                ago(o.since),
                o.last_seen.map(ago).unwrap_or_else(|| "never".into())
            );
        }
        out.push_str("</tbody></table></div>");
    }
    if !status.problems.is_empty() {
        out.push_str(r#"<h2>Errors</h2><div class="scroll"><table><thead><tr><th>Device</th><th>Swarm</th><th>Error</th></tr></thead><tbody>"#);
        for p in &status.problems {
            let _ = write!(
                out,
                r#"<tr><td><a href="/devices/{}">{}</a></td><td>{}</td><td class="wrap error">{}</td></tr>"#,
                url(&p.device),
                esc(&p.device),
                esc(&p.swarm),
                esc(&p.error)
            );
        }
        out.push_str("</tbody></table></div>");
    }
    if !pending.is_empty() {
        out.push_str(r#"<h2>Waiting for approval</h2><div class="scroll"><table><thead><tr><th>Device</th><th>Swarm</th><th>Arch</th><th></th></tr></thead><tbody>"#);
        for d in pending {
            let _ = write!(
                out,
                r#"<tr><td><a href="/devices/{id}">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                esc(d.id.as_str()),
                esc(&d.swarm),
                esc(fact(d, "arch")),
                if may_change(&d.swarm) {
                    format!(
                        r#"<form class="inline" method="post" action="/devices/{}/approve"><button type="submit">Approve</button></form>"#,
                        url(d.id.as_str())
                    )
                } else {
                    String::new()
                },
                id = url(d.id.as_str()),
            );
        }
        out.push_str("</tbody></table></div>");
    }
    out.push_str(r#"<h2>Swarms</h2><div class="scroll"><table><thead><tr><th>Swarm</th><th>Initialized</th><th>Devices</th><th>By state</th><th>Managers</th></tr></thead><tbody>"#);
    for s in &status.swarms {
        let managers = swarms
            .iter()
            .find(|v| v.name == s.name)
            .map(|v| v.managers.len())
            .unwrap_or(0);
        let _ = write!(
            out,
            r#"<tr><td><a href="/swarms/{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{managers}</td></tr>"#,
            url(&s.name),
            esc(&s.name),
            if s.initialized { "yes" } else { "no" },
            s.devices,
            esc(&s
                .by_state
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")),
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

/// The search form's values, kept on the page.
pub struct DeviceFilter<'a> {
    pub q: &'a str,
    pub label: &'a str,
    pub page: u64,
    pub per_page: u64,
}

/// One page of devices, problems first.
pub fn devices(
    devices: &[DeviceView],
    cpu: &std::collections::HashMap<String, Vec<Option<f64>>>,
    total: u64,
    f: &DeviceFilter<'_>,
) -> String {
    let mut out = format!(
        r#"<h1>Devices</h1>
<form method="get" action="/devices" role="search">
<label for="q">Search</label> <input type="search" id="q" name="q" value="{}" placeholder="id, fact or label">
<label for="label">Label</label> <input type="text" id="label" name="label" value="{}" placeholder="KEY=VALUE">
<button type="submit">Filter</button>
</form>
<p class="muted" id="count">{total} device{} match</p>
<div class="scroll"><table><thead><tr><th>ID</th><th>Host name</th><th>Swarm</th><th>Arch</th><th>Role</th><th>State</th><th>Last seen</th><th>CPU</th><th>CPU, last hour</th><th>Memory</th><th>Temp</th><th>Labels</th></tr></thead><tbody>"#,
        esc(f.q),
        esc(f.label),
        if total == 1 { "" } else { "s" },
    );
    for d in devices {
        let t = d.telemetry.as_ref();
        let _ = write!(
            out,
            r#"<tr data-device="{id}"><td><a href="/devices/{link}">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="wrap">{}</td></tr>"#,
            esc(fact(d, "hostname")),
            esc(&d.swarm),
            esc(fact(d, "arch")),
            esc(&d.role.to_string()),
            state_badge(d),
            d.last_seen.map(ago).unwrap_or_else(|| "never".into()),
            t.and_then(|t| t.cpu_percent)
                .map(|c| format!("{c:.0}%"))
                .unwrap_or_else(|| "-".into()),
            cpu.get(d.id.as_str())
                .map(|line| sparkline_sized(line, "CPU, last hour", 90, 20))
                .unwrap_or_default(),
            t.and_then(|t| Some(format!("{}/{} MiB", t.memory_used_mb?, t.memory_total_mb?)))
                .unwrap_or_else(|| "-".into()),
            t.and_then(|t| t.temperature_c)
                .map(|c| format!("{c:.1} °C"))
                .unwrap_or_else(|| "-".into()),
            labels_text(d),
            id = esc(d.id.as_str()),
            link = url(d.id.as_str()),
        );
    }
    out.push_str("</tbody></table></div>");
    let pages = total.div_ceil(f.per_page).max(1);
    let link = |page: u64| {
        format!(
            "/devices?q={}&amp;label={}&amp;page={page}",
            url(f.q),
            url(f.label)
        )
    };
    let _ = write!(
        out,
        r#"<nav aria-label="Pages"><p>Page {} of {pages} "#,
        f.page
    );
    if f.page > 1 {
        let _ = write!(
            out,
            r#"<a href="{}" rel="prev">previous</a> "#,
            link(f.page - 1)
        );
    }
    if f.page < pages {
        let _ = write!(out, r#"<a href="{}" rel="next">next</a>"#, link(f.page + 1));
    }
    out.push_str("</p></nav>");
    out
}

/// A line of values as an inline SVG polyline (no script, no library).
fn sparkline(values: &[Option<f64>], label: &str) -> String {
    sparkline_sized(values, label, 240, 36)
}

fn sparkline_sized(values: &[Option<f64>], label: &str, width: u32, height: u32) -> String {
    let known: Vec<(usize, f64)> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| Some((i, (*v)?)))
        .collect();
    if known.len() < 2 {
        return r#"<span class="muted">-</span>"#.into();
    }
    let (lo, hi) = known.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (_, v)| {
        (lo.min(*v), hi.max(*v))
    });
    let span = if hi > lo { hi - lo } else { 1.0 };
    let (w, h) = (f64::from(width), f64::from(height));
    let step = w / (values.len().max(2) - 1) as f64;
    let points: Vec<String> = known
        .iter()
        .map(|(i, v)| {
            format!(
                "{:.1},{:.1}",
                *i as f64 * step,
                h - 2.0 - (v - lo) / span * (h - 4.0)
            )
        })
        .collect();
    format!(
        r#"<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{}"><polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{}"/></svg>"#,
        esc(label),
        points.join(" ")
    )
}

/// One device: what it is, what it measures, its labels (editable), its
/// events, and what can be done to it.
pub fn device(
    d: &DeviceView,
    telemetry: &TelemetryView,
    events: &[Event],
    problem: Option<&str>,
    can_change: bool,
) -> String {
    let id = esc(d.id.as_str());
    let link = url(d.id.as_str());
    let mut out = format!(r#"<h1>Device {id}</h1>"#);
    if let Some(p) = problem {
        let _ = write!(out, r#"<p class="flash" role="alert">{}</p>"#, esc(p));
    }
    let _ = write!(
        out,
        r#"<dl><dt>Host name</dt><dd>{}</dd><dt>Swarm</dt><dd><a href="/swarms/{}">{}</a></dd><dt>Role</dt><dd>{}{}</dd><dt>State</dt><dd id="state">{}</dd><dt>Last seen</dt><dd>{}</dd><dt>Node</dt><dd>{}</dd><dt>Engine</dt><dd>{}</dd><dt>Agent</dt><dd>{}</dd></dl>"#,
        esc(fact(d, "hostname")),
        url(&d.swarm),
        esc(&d.swarm),
        esc(&d.role.to_string()),
        match d.manager {
            Some(true) if d.raft_leader => " (swarm manager, raft leader)",
            Some(true) => " (swarm manager)",
            Some(false) => " (swarm worker)",
            None => "",
        },
        state_badge(d),
        d.last_seen.map(ago).unwrap_or_else(|| "never".into()),
        esc(d.node_id.as_deref().unwrap_or("-")),
        esc(d.engine_version.as_deref().unwrap_or("-")),
        esc(d.agent_version.as_deref().unwrap_or("-")),
    );
    if let Some(e) = &d.last_error {
        let _ = write!(out, r#"<p class="error">Error: {}</p>"#, esc(e));
    }
    out.push_str("<h2>Telemetry</h2>");
    match &telemetry.latest {
        None => out.push_str(r#"<p class="muted">No telemetry yet.</p>"#),
        Some(t) => {
            let hour: Vec<_> = telemetry.history.iter().rev().take(60).rev().collect();
            let dash = || "-".to_string();
            let _ = write!(
                out,
                r#"<div class="scroll"><table><thead><tr><th>Measure</th><th>Now</th><th>Last hour</th></tr></thead><tbody>
<tr><td>CPU</td><td id="cpu">{}</td><td>{}</td></tr>
<tr><td>Memory</td><td id="memory">{}</td><td>{}</td></tr>
<tr><td>Temperature</td><td id="temperature">{}</td><td>{}</td></tr>
<tr><td>Load</td><td>{}</td><td>{}</td></tr>
<tr><td>Disk free (engine data)</td><td>{}</td><td>{}</td></tr>
<tr><td>Uptime</td><td>{}</td><td></td></tr>
<tr><td>Containers running</td><td>{}</td><td></td></tr>
</tbody></table></div>"#,
                t.cpu_percent
                    .map(|c| format!("{c:.1}%"))
                    .unwrap_or_else(dash),
                sparkline(
                    &hour.iter().map(|p| p.cpu_percent).collect::<Vec<_>>(),
                    "CPU, last hour"
                ),
                match (t.memory_used_mb, t.memory_total_mb) {
                    (Some(u), Some(tot)) => format!("{u} of {tot} MiB"),
                    _ => dash(),
                },
                sparkline(
                    &hour
                        .iter()
                        .map(|p| p.memory_used_mb.map(|m| m as f64))
                        .collect::<Vec<_>>(),
                    "memory, last hour"
                ),
                t.temperature_c
                    .map(|c| format!("{c:.1} °C"))
                    .unwrap_or_else(dash),
                sparkline(
                    &hour.iter().map(|p| p.temperature_c).collect::<Vec<_>>(),
                    "temperature, last hour"
                ),
                t.load
                    .map(|l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
                    .unwrap_or_else(dash),
                sparkline(
                    &hour.iter().map(|p| p.load1).collect::<Vec<_>>(),
                    "load, last hour"
                ),
                match (t.disk_free_mb, t.disk_total_mb) {
                    (Some(f), Some(tot)) => format!("{f} of {tot} MiB"),
                    _ => dash(),
                },
                sparkline(
                    &hour
                        .iter()
                        .map(|p| p.disk_free_mb.map(|m| m as f64))
                        .collect::<Vec<_>>(),
                    "disk free, last hour"
                ),
                t.uptime_secs
                    .map(|u| format!("{}h{:02}m", u / 3600, u / 60 % 60))
                    .unwrap_or_else(dash),
                t.containers_running
                    .map(|c| c.to_string())
                    .unwrap_or_else(dash),
            );
        }
    }
    let labels: String = d.labels.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    if !can_change {
        let _ = write!(
            out,
            r#"<p class="muted">Read only: your role does not let you change swarm {}.</p>
<h2>Labels</h2><p class="wrap">{}</p><h2>Facts</h2><p class="wrap">{}</p>
<p><a href="/devices/{link}/log">Agent log</a></p>"#,
            esc(&d.swarm),
            esc(&labels),
            d.facts
                .iter()
                .map(|(k, v)| format!("fog.{}={}", esc(k), esc(v)))
                .collect::<Vec<_>>()
                .join(" "),
        );
        out.push_str(&events_table(events, "Events"));
        return out;
    }
    let _ = write!(
        out,
        r#"<h2>Labels</h2>
<form method="post" action="/devices/{link}/labels" data-keep="1">
<p><label for="labels">One KEY=VALUE a line; the swarm node gets them as node labels.</label>
<textarea id="labels" name="labels" rows="5">{}</textarea></p>
<p><button type="submit">Save labels</button></p>
</form>
<h2>Facts</h2><p class="wrap">{}</p>"#,
        esc(&labels),
        d.facts
            .iter()
            .map(|(k, v)| format!("fog.{}={}", esc(k), esc(v)))
            .collect::<Vec<_>>()
            .join(" "),
    );
    out.push_str("<h2>Actions</h2><p>");
    if d.state == DeviceState::Pending {
        let _ = write!(
            out,
            r#"<form class="inline" method="post" action="/devices/{link}/approve"><button type="submit">Approve</button></form> "#
        );
    }
    let _ = write!(
        out,
        r#"<form class="inline" method="post" action="/devices/{link}/decommission"><button class="danger" type="submit">Decommission</button></form></p>
<p><a href="/devices/{link}/log">Agent log</a> <span class="muted">(its last lines, asked of the device at its next report; to follow: <code>fogswarm device logs {id} --follow</code>)</span></p>"#
    );
    out.push_str(&events_table(events, "Events"));
    out
}

/// Log lines collected for a page (an agent's or a service's).
pub fn log_lines(title: &str, back: &str, lines: &[String], note: Option<&str>) -> String {
    let mut out = format!(
        r#"<h1>{}</h1><p><a href="{}">back</a></p>"#,
        esc(title),
        esc(back)
    );
    if let Some(n) = note {
        let _ = write!(out, r#"<p class="muted" role="status">{}</p>"#, esc(n));
    }
    out.push_str(r#"<pre id="log">"#);
    for line in lines {
        out.push_str(&esc(line));
        out.push('\n');
    }
    out.push_str("</pre>");
    out
}

pub fn events_table(events: &[Event], title: &str) -> String {
    let mut out = format!(
        r#"<h2>{}</h2><div class="scroll"><table><thead><tr><th>When</th><th>Actor</th><th>Action</th><th>Subject</th><th>Detail</th></tr></thead><tbody>"#,
        esc(title)
    );
    for e in events.iter().rev() {
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="wrap">{}</td></tr>"#,
            ago(e.at),
            esc(&e.actor),
            esc(&e.action),
            esc(&e.subject),
            esc(&e.detail)
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

/// A swarm's services, each with its tasks per device, and the forms to
/// deploy or remove a stack.
pub fn swarm(
    view: &SwarmView,
    services: &[ServiceView],
    problem: Option<&str>,
    can_change: bool,
) -> String {
    let mut out = format!(
        r#"<h1>Swarm {}</h1><p>{} devices; managers: {}</p>"#,
        esc(&view.name),
        view.devices,
        esc(&view.managers.join(", "))
    );
    if let Some(p) = problem {
        let _ = write!(out, r#"<p class="flash" role="alert">{}</p>"#, esc(p));
    }
    out.push_str("<h2>Services</h2>");
    if services.is_empty() {
        out.push_str(r#"<p class="muted">No services.</p>"#);
    }
    for s in services {
        let observed = s.observed.as_ref();
        let _ = write!(
            out,
            r#"<h3>{}</h3><p>{} · {} · {}/{} running{} · <a href="/swarms/{}/services/{}/log">recent log lines</a></p>"#,
            esc(&s.spec.name),
            esc(&s.spec.image),
            esc(s.status.as_str()),
            observed.map_or(0, |o| o.running_tasks),
            observed.map_or(0, |o| o.desired_tasks),
            observed
                .and_then(|o| o.error.as_deref())
                .map(|e| format!(r#" · <span class="error">{}</span>"#, esc(e)))
                .unwrap_or_default(),
            url(&view.name),
            url(&s.spec.name),
        );
        let tasks: &[TaskObserved] = observed.map(|o| o.tasks.as_slice()).unwrap_or(&[]);
        if !tasks.is_empty() {
            out.push_str(r#"<div class="scroll"><table><thead><tr><th>Task</th><th>Device</th><th>Host name</th><th>State</th><th>Desired</th><th>Error</th></tr></thead><tbody>"#);
            for t in tasks {
                let device = t.device.as_ref().map(|d| d.to_string()).unwrap_or_default();
                let _ = write!(
                    out,
                    r#"<tr><td>{}</td><td><a href="/devices/{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td class="wrap">{}</td></tr>"#,
                    esc(&t.id.chars().take(12).collect::<String>()),
                    url(&device),
                    esc(&device),
                    esc(t.hostname.as_deref().unwrap_or("-")),
                    esc(&t.state),
                    esc(&t.desired_state),
                    esc(t.error.as_deref().unwrap_or("")),
                );
            }
            out.push_str("</tbody></table></div>");
        }
    }
    if !can_change {
        let _ = write!(
            out,
            r#"<p class="muted">Read only: your role does not let you change swarm {}.</p>"#,
            esc(&view.name)
        );
        return out;
    }
    let link = url(&view.name);
    let _ = write!(
        out,
        r#"<h2>Deploy a stack</h2>
<form method="post" action="/swarms/{link}/stacks" data-keep="1">
<p><label for="stack">Stack name</label><br><input type="text" id="stack" name="stack" required pattern="[a-z0-9][a-z0-9_-]*"></p>
<p><label for="compose">Compose file (as for <code>docker stack deploy</code>; secrets and configs from files need the CLI)</label>
<textarea id="compose" name="compose" rows="12" required></textarea></p>
<p><button type="submit">Deploy</button></p>
</form>
<h2>Remove a stack</h2>
<form method="post" action="/swarms/{link}/stacks/remove" data-keep="1">
<p><label for="remove-stack">Stack name</label> <input type="text" id="remove-stack" name="stack" required>
<button class="danger" type="submit">Remove</button></p>
</form>"#
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_store_cannot_become_markup() {
        assert_eq!(esc(r#"<b a="x">'&"#), "&lt;b a=&quot;x&quot;&gt;&#39;&amp;");
        assert_eq!(url("02:fb:00 x/y"), "02%3Afb%3A00%20x%2Fy");
    }

    #[test]
    fn a_sparkline_needs_two_points_and_spans_its_range() {
        assert!(sparkline(&[Some(1.0)], "x").contains("-"));
        let svg = sparkline(&[Some(0.0), None, Some(10.0)], "cpu");
        assert!(svg.contains("points=\"0.0,34.0 240.0,2.0\""), "{svg}");
    }
}
