// smsgw admin page: the admin websocket's live stream, the board, and message look-up.
// Plain JavaScript, no build step. The token comes from the login form or the URL fragment
// (#token=...), which browsers never send to the server; it is kept in sessionStorage.
"use strict";

const MAX_ROWS = 200;          // rows kept in the live traffic table
const SPARK_POINTS = 60;       // seconds of history in each sparkline
const RECONNECT_DELAY = 3000;  // ms before reconnecting after a drop
const SERIES = ["accepted", "submitted", "delivered", "failed", "undeliverable", "mo"];

const $ = (sel) => document.querySelector(sel);
const state = { ws: null, token: "", privileged: false, dropped: 0, history: {}, lastSeq: 0, closing: false };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

function fmtTime(epoch) {
  const d = new Date(epoch * 1000);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function wsUrl(token) {
  const port = document.querySelector('meta[name="smsgw-admin-ws-port"]').content;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.hostname}:${port}/?token=${encodeURIComponent(token)}`;
}

function setConn(text, up) {
  const c = $("#conn");
  c.textContent = text;
  c.className = "pill " + (up ? "up" : "down");
}

function connect(token) {
  state.token = token;
  sessionStorage.setItem("smsgw-admin-token", token);
  if (state.ws) { state.closing = true; state.ws.close(); }
  state.closing = false;
  setConn("connecting…", false);
  const ws = new WebSocket(wsUrl(token));
  state.ws = ws;
  ws.onopen = () => setConn("live", true);
  ws.onmessage = (msg) => onFrame(JSON.parse(msg.data));
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    setConn(ev.code === 1006 && !ev.wasClean ? "refused or dropped; retrying" : "closed; retrying", false);
    if (!state.closing) setTimeout(() => { if (state.ws === ws) connect(state.token); }, RECONNECT_DELAY);
  };
}

function onFrame(f) {
  state.lastSeq = f.seq;
  if (f.dropped) {
    state.dropped += f.dropped;
    $("#dropped").textContent = `${state.dropped} events missed (viewer behind)`;
  }
  switch (f.type) {
    case "snapshot":
      state.privileged = f.privileged;
      $("#privilege").textContent = f.privileged ? "privileged: full numbers and texts" : "numbers masked";
      showBoard(f.board);
      break;
    case "stats": showBoard(f.board); break;
    case "mt": case "mo": case "link": case "webhook": case "limit": addRow(f); break;
    case "filter": $("#filter-state").textContent = Object.keys(f.filter).length ? "filter: " + JSON.stringify(f.filter) : "no filter"; break;
    case "error": $("#filter-state").innerHTML = ""; $("#filter-state").append(el("span", { class: "error" }, `${f.code}: ${f.message}`)); break;
  }
}

function addRow(f) {
  if ($("#pause").checked) return;
  let id = "", number = "", what = "", channel = f.channel || "", account = "";
  if (f.type === "mt") {
    id = f.id; number = f.to; what = f.status + (f.error_code ? ` (${f.error_code})` : "") + (f.detail ? ` · ${f.detail}` : "");
    account = f.account;
  } else if (f.type === "mo") {
    id = f.id; number = f.from; what = `→ ${f.service_number}` + (f.command ? ` [${f.command}]` : "") + (f.text != null ? ` “${f.text}”` : ` (${f.length} chars)`);
    account = f.merchant == null ? "" : `merchant ${f.merchant}`;
  } else if (f.type === "link") {
    what = (f.up ? "up" : "down") + (f.detail ? ` · ${f.detail}` : "");
  } else if (f.type === "webhook") {
    id = f.message_id || ""; what = `${f.kind} #${f.attempt} ${f.ok ? "ok" : "failed"} ${f.status_code || ""} ${f.detail || ""}`;
  } else if (f.type === "limit") {
    number = f.name; what = `${f.scope} limit: waited ${f.wait_s}s ×${f.count}`;
  }
  const cls = f.type === "mt" && ["undeliverable", "expired", "rejected", "failed"].includes(f.status) ? "bad"
    : (f.type === "link" && !f.up) || (f.type === "webhook" && !f.ok) ? "bad" : "";
  const row = el("tr", { class: cls, "data-id": id, "data-type": f.type },
    el("td", {}, fmtTime(f.at)), el("td", {}, f.type), el("td", { class: "mid" }, id), el("td", {}, number),
    el("td", {}, what), el("td", {}, channel), el("td", {}, account));
  const body = $("#traffic tbody");
  body.prepend(row);
  while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
}

function showBoard(b) {
  const counters = $("#counters");
  for (const name of SERIES) {
    const total = b.totals[name] || 0, rate = b.rates[name] || 0;
    const h = (state.history[name] = state.history[name] || []);
    h.push(rate);
    if (h.length > SPARK_POINTS) h.shift();
    let box = counters.querySelector(`[data-series="${name}"]`);
    if (!box) {
      box = el("div", { class: "counter", "data-series": name }, el("div", { class: "name" }, name),
        el("div", { class: "value" }), el("div", { class: "rate" }), el("canvas", { width: 160, height: 32 }));
      counters.append(box);
    }
    box.querySelector(".value").textContent = Math.round(total).toLocaleString();
    box.querySelector(".rate").textContent = `${rate.toFixed(1)} /s`;
    spark(box.querySelector("canvas"), h);
  }
  const tbody = $("#board tbody");
  tbody.innerHTML = "";
  for (const ch of b.channels) {
    if (!ch.links.length && !ch.modems.length) {
      tbody.append(el("tr", {}, el("td", {}, ch.name), el("td", {}, ""), el("td", { class: ch.up ? "up" : "down" }, ch.up ? "up" : "down"),
        el("td", {}, ""), el("td", {}, ""), el("td", {}, ""), el("td", {}, "")));
    }
    for (const l of ch.links) {
      tbody.append(el("tr", {}, el("td", {}, ch.name), el("td", {}, l.name), el("td", { class: l.up ? "up" : "down" }, l.up ? "up" : "down"),
        el("td", {}, "—"), el("td", {}, `${l.window_used}/${l.window}`), el("td", {}, l.queued), el("td", {}, l.rate.toFixed(1))));
    }
    for (const m of ch.modems) {
      const sig = m.rssi == null ? "?" : `${m.rssi}/31 (${-113 + 2 * m.rssi} dBm)`;
      tbody.append(el("tr", {}, el("td", {}, ch.name), el("td", {}, m.name), el("td", { class: m.up ? "up" : "down" }, m.state + (m.registered ? "" : " · not registered")),
        el("td", { class: m.rssi != null && m.rssi < 10 ? "warn" : "" }, sig), el("td", {}, `${m.sent_today} today`), el("td", {}, m.queued), el("td", {}, m.rate.toFixed(2))));
    }
  }
  const q = Object.entries(b.queue).map(([k, v]) => `${k}: ${v.depth} queued, oldest ${v.oldest_age_s.toFixed(1)} s`);
  $("#queue").textContent = `Queue — ${q.join(" · ") || "empty"} · ${b.viewers} viewer(s)`;
}

function spark(canvas, values) {
  const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1, ...values);
  ctx.strokeStyle = "#3461c1";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  values.forEach((v, i) => {
    const x = (i / (SPARK_POINTS - 1)) * w, y = h - 2 - (v / max) * (h - 4);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

function sendFilter(ev) {
  if (ev) ev.preventDefault();
  const f = { type: "filter" };
  for (const key of ["channel", "account", "merchant", "status", "prefix"]) {
    const v = $(`#f-${key}`).value.trim();
    if (v) f[key] = v;
  }
  const t = $("#f-types").value;
  if (t) f.types = [t];
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(f));
}

async function lookup(ev) {
  ev.preventDefault();
  const q = $("#lookup-q").value.trim(), out = $("#lookup-result");
  out.innerHTML = "";
  if (!q) return;
  const param = /^\d{1,18}$/.test(q) && !/^1\d{10}$/.test(q) ? "id" : "to";
  const r = await fetch(`/v1/admin/messages?${param}=${encodeURIComponent(q)}`, { headers: { Authorization: `Bearer ${state.token}` } });
  const body = await r.json();
  if (!r.ok) { out.append(el("p", { class: "error" }, `${body.error.code}: ${body.error.message}`)); return; }
  if (!body.messages.length) { out.append(el("p", { class: "muted" }, "no messages")); return; }
  for (const m of body.messages) {
    const hist = el("table", { class: "history" }, el("tr", {}, el("th", {}, "status"), el("th", {}, "at"), el("th", {}, "detail")));
    for (const e of m.events) hist.append(el("tr", {}, el("td", {}, e.status), el("td", {}, new Date(e.at).toLocaleString()), el("td", {}, e.detail)));
    out.append(el("div", { class: "msg", "data-id": m.id },
      el("div", {}, el("b", {}, `#${m.id}`), ` to ${m.to} · ${m.status} · ${m.channel || "no channel yet"} · ${m.parts} part(s) · account ${m.account}`),
      el("div", { class: "muted" }, m.text == null ? "(text hidden)" : m.text), hist));
  }
}

function init() {
  $("#login").addEventListener("submit", (ev) => { ev.preventDefault(); const t = $("#token").value.trim(); if (t) connect(t); });
  $("#filter").addEventListener("submit", sendFilter);
  $("#f-clear").addEventListener("click", () => { for (const i of document.querySelectorAll("#filter input:not([type=checkbox]), #filter select")) i.value = ""; sendFilter(); });
  $("#lookup").addEventListener("submit", lookup);
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  const token = m ? decodeURIComponent(m[1]) : sessionStorage.getItem("smsgw-admin-token");
  if (m) history.replaceState(null, "", location.pathname);  // keep the token out of the address bar
  if (token) { $("#token").value = token; connect(token); }
}

init();
