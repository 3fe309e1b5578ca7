"use strict";
const tokenBox = document.getElementById("token");
tokenBox.value = sessionStorage.getItem("dbsplice-token") || "";
tokenBox.addEventListener("change", () => { sessionStorage.setItem("dbsplice-token", tokenBox.value); refresh(); });

// The colour of each state label; the legend in page.html lists them all.
const STATE_CLASS = {
  "writer": "in", "in rotation": "in", "standby, serving": "in", "writer, taking reads": "in",
  "not writer": "out", "writer, not a replica": "out", "lagging": "out", "lag unknown": "out",
  "standby": "out", "out": "out",
  "held down: flapping": "held", "held: fail-back": "held", "full": "held",
  "drained": "admin", "disabled": "admin", "down": "down", "not probed": "unknown",
};

// The previous refresh's counters, per pool and backend, for the rates.
let previous = { at: 0, counts: new Map() };

function cell(row, text, cls) {
  const td = row.insertCell();
  if (cls) { const span = document.createElement("span"); span.className = cls; span.textContent = text; td.appendChild(span); }
  else { td.textContent = text; }
  return td;
}

async function act(name, action) {
  const r = await fetch("/api/backends/" + encodeURIComponent(name) + "/" + action,
    { method: "POST", headers: { "Authorization": "Bearer " + tokenBox.value } });
  if (!r.ok) { document.getElementById("error").textContent = action + " " + name + ": " + (await r.text()); }
  refresh();
}

function rate(now, key, value, seconds) {
  const before = previous.counts.get(key);
  if (before === undefined || seconds <= 0 || value < before) { return "-"; }
  return ((value - before) / seconds).toFixed(1);
}

function backendRow(body, pool, b, now, seconds, counts) {
  const row = body.insertRow();
  row.dataset.backend = b.name;
  row.dataset.health = b.health;
  row.dataset.state = b.state;
  const key = pool.name + "/" + b.name;
  counts.set(key + "/sessions", b.total_sessions);
  counts.set(key + "/bytes", b.bytes_to_backend + b.bytes_to_client);
  cell(row, b.name);
  // Where it is reached now, when that is not the address as written, and
  // where it came from when not the file.
  let where = b.address;
  if (b.ip && b.ip !== b.address) { where += " (" + b.ip + ")"; }
  if (b.origin && b.origin !== "file") { where += " [" + b.origin + "]"; }
  const at = cell(row, where);
  if (b.unresolved) { at.title = "its name does not resolve: " + b.unresolved; at.classList.add("why"); }
  cell(row, b.tier);
  const state = cell(row, b.state, "state " + (STATE_CLASS[b.state] || "out"));
  state.title = b.why;
  state.classList.add("why");
  cell(row, b.role); cell(row, b.lag_seconds === null ? "-" : b.lag_seconds + "s");
  cell(row, String(b.active_sessions));
  cell(row, rate(now, key + "/sessions", b.total_sessions, seconds));
  const bytes = rate(now, key + "/bytes", b.bytes_to_backend + b.bytes_to_client, seconds);
  cell(row, bytes === "-" ? "-" : (Number(bytes) / 1024).toFixed(1));
  cell(row, b.last_probe_ms ? b.last_probe_ms.toFixed(1) + " ms" : "-");
  cell(row, b.reason);
  const actions = row.insertCell();
  if (tokenBox.value) {
    for (const a of (b.admin ? ["enable"] : ["drain"])) {
      const button = document.createElement("button");
      button.textContent = a; button.onclick = () => act(b.name, a);
      actions.appendChild(button);
    }
  }
  // Click the state for why, in words, under the row.
  state.onclick = () => {
    const next = row.nextElementSibling;
    if (next && next.classList.contains("explain")) { next.remove(); return; }
    const line = body.insertRow(row.sectionRowIndex + 1);
    line.className = "explain";
    const td = line.insertCell();
    td.colSpan = 13;
    td.textContent = b.name + ": " + b.why;
  };
}

function renderPools(status, now, seconds, counts) {
  const pools = document.getElementById("pools");
  pools.replaceChildren();
  for (const pool of status.pools) {
    const h = document.createElement("h2");
    h.textContent = "pool " + pool.name + " (" + pool.role + ", " + pool.balance + ")" + (pool.writer ? " · writer " + pool.writer : "")
      + (pool.paused_for_seconds ? " · paused, " + Math.ceil(pool.paused_for_seconds) + "s left" : "")
      + (pool.held_clients ? " · holding " + pool.held_clients + " new clients until a backend can take them" : "");
    pools.appendChild(h);
    const table = document.createElement("table");
    const head = table.createTHead().insertRow();
    for (const t of ["backend", "address", "tier", "state", "role", "lag", "open", "new/s", "KiB/s", "probe", "reason", ""]) { cell(head, t); }
    const body = table.createTBody();
    for (const b of pool.backends) { backendRow(body, pool, b, now, seconds, counts); }
    pools.appendChild(table);
    if (pool.replication) { pools.appendChild(renderReplication(pool.replication)); }
  }
}

// A [replication] pool: who replicates from whom, GTID positions, threads,
// why a failover is blocked, and the last switchover or failover's steps.
function renderReplication(r) {
  const box = document.createElement("div");
  box.className = "replication";
  const title = document.createElement("h3");
  title.textContent = "replication · failover " + r.failover + " · " + r.switchovers + " switchover(s), "
    + r.failovers + " failover(s)" + (r.promoting ? " · promoting now" : "");
  box.appendChild(title);
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const t of ["server", "role", "replicates from", "IO", "SQL", "received", "at"]) { cell(head, t); }
  const body = table.createTBody();
  for (const s of r.topology) {
    const row = body.insertRow();
    cell(row, s.name);
    if (!s.reachable) { cell(row, "unreachable: " + s.error, "state down"); continue; }
    if (s.error) { cell(row, "replication cannot be read: " + s.error, "state out"); continue; }
    cell(row, s.read_only ? "read-only" : "writable");
    const src = s.replicates_from;
    cell(row, src ? src.host + ":" + src.port : "no one");
    cell(row, src ? (src.io_running ? "running" : "not connected") : "-");
    cell(row, src ? (src.sql_running ? "running" : "stopped") : "-");
    cell(row, src ? src.gtid_io_pos : "-");
    cell(row, s.gtid_current_pos);
  }
  box.appendChild(table);
  const lines = [];
  if (r.failover_blocked) { lines.push("no failover: " + r.failover_blocked); }
  for (const [name, extra] of Object.entries(r.manual_repair || {})) {
    lines.push(name + " needs a manual repair: " + extra + " transaction(s) the primary lacks");
  }
  const last = r.last_promotion;
  if (last) {
    lines.push("last " + last.kind + " (" + new Date(last.started_unix * 1000).toLocaleTimeString() + "): " + last.summary);
    for (const step of last.steps) {
      lines.push("  " + (step.ok ? "ok " : "FAIL ") + step.took_ms + " ms  " + step.step + (step.detail ? ": " + step.detail : ""));
    }
  }
  if (lines.length) {
    const pre = document.createElement("pre");
    pre.textContent = lines.join("\n");
    box.appendChild(pre);
  }
  return box;
}

function renderTimeline(timeline) {
  const body = document.querySelector("#timeline tbody");
  body.replaceChildren();
  for (const note of timeline) {
    const row = body.insertRow();
    row.dataset.kind = note.kind;
    cell(row, new Date(note.unix_ms).toLocaleTimeString());
    cell(row, note.kind, "kind " + note.kind);
    cell(row, note.text);
  }
  if (timeline.length === 0) { cell(body.insertRow(), "nothing yet"); }
}

function render(status) {
  document.getElementById("generation").textContent = status.generation;
  document.getElementById("version").textContent = status.version + " (" + status.commit + "), pid " + status.pid;
  document.getElementById("ready").textContent = status.ready ? "ready" : "not ready";
  const now = Date.now();
  document.getElementById("refreshed").textContent = new Date(now).toLocaleTimeString();
  const seconds = previous.at ? (now - previous.at) / 1000 : 0;
  const counts = new Map();
  renderPools(status, now, seconds, counts);
  renderTimeline(status.timeline || []);
  previous = { at: now, counts };
}

async function refresh() {
  try {
    const r = await fetch("/api/status");
    render(await r.json());
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "cannot reach dbsplice: " + e;
  }
}
refresh();
setInterval(refresh, 2000);
