"use strict";
const tokenBox = document.getElementById("token");
tokenBox.value = sessionStorage.getItem("dbsplice-token") || "";
tokenBox.addEventListener("change", () => { sessionStorage.setItem("dbsplice-token", tokenBox.value); refresh(); });

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

function render(status) {
  document.getElementById("generation").textContent = status.generation;
  document.getElementById("ready").textContent = status.ready ? "ready" : "not ready";
  document.getElementById("refreshed").textContent = new Date().toLocaleTimeString();
  const pools = document.getElementById("pools");
  pools.replaceChildren();
  for (const pool of status.pools) {
    const h = document.createElement("h2");
    h.textContent = "pool " + pool.name + " (" + pool.role + ", " + pool.balance + ")" + (pool.writer ? " · writer " + pool.writer : "");
    pools.appendChild(h);
    const table = document.createElement("table");
    const head = table.createTHead().insertRow();
    for (const t of ["backend", "address", "tier", "state", "role", "lag", "sessions", "reason", ""]) { cell(head, t); }
    const body = table.createTBody();
    for (const b of pool.backends) {
      const row = body.insertRow();
      row.dataset.backend = b.name;
      row.dataset.health = b.health;
      const state = b.admin ? b.admin.state : (b.health === "up" && !b.eligible ? "held" : b.health);
      const cls = b.admin ? "admin" : (b.health === "up" && !b.eligible ? "held" : b.health);
      cell(row, b.name); cell(row, b.address); cell(row, b.tier);
      cell(row, state, "state " + cls);
      cell(row, b.role); cell(row, b.lag_seconds === null ? "-" : b.lag_seconds + "s");
      cell(row, b.active_sessions + " / " + b.total_sessions); cell(row, b.reason);
      const actions = row.insertCell();
      if (tokenBox.value) {
        for (const a of (b.admin ? ["enable"] : ["drain"])) {
          const button = document.createElement("button");
          button.textContent = a; button.onclick = () => act(b.name, a);
          actions.appendChild(button);
        }
      }
    }
    pools.appendChild(table);
  }
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
