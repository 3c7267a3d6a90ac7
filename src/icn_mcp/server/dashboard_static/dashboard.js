// icn-mcp dashboard: vanilla JS, no build step, no third-party code.
//
// The maintainer token is taken once (from the form, or from the URL fragment
// "#token=..." which browsers never send to the server), kept in sessionStorage and
// sent only in the Authorization header. Without a token the page asks for one and
// shows public health only. Every id is an opaque string: the server may send
// 42 or "42", so ids go through String() and are never used as numbers.
"use strict";

(function () {
  const REFRESH_MS = 2000;        // how often the page polls the server
  const REQUEST_TIMEOUT_MS = 5000; // a request slower than this counts as no answer
  const PAGE_SIZE = 15;
  const TOKEN_KEY = "icn-mcp.maintainer-token";
  const STATUSES = ["open", "claimed", "completed", "failed"];
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = {
    token: null,
    filter: "",
    cursors: [null],      // cursor of each page seen so far; the last is the current page
    nextCursor: null,
    selected: null,       // id (string) of the selected task, or null
    agentsById: new Map(),
    clockOffsetMs: 0,     // server clock minus browser clock
    lastOk: null,
    failing: false,
    timer: null,
    generation: 0,        // bumps when the view changes, so late answers are dropped
    graphKey: null,       // what the graph on screen was drawn from
  };

  const $ = (id) => document.getElementById(id);

  // -- small helpers ------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    return node;
  }

  const idOf = (value) => (value === null || value === undefined ? null : String(value));
  const byId = (a, b) => String(a).localeCompare(String(b), "en", { numeric: true });

  function parseTime(stamp) {
    if (!stamp) return null;
    // Stored timestamps have microseconds; keep milliseconds for Date.
    const ms = Date.parse(String(stamp).replace(/(\.\d{3})\d*Z$/, "$1Z"));
    return Number.isNaN(ms) ? null : ms;
  }

  const serverNow = () => Date.now() + state.clockOffsetMs;

  function duration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  function ago(stamp) {
    const t = parseTime(stamp);
    return t === null ? "never" : duration((serverNow() - t) / 1000) + " ago";
  }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = Number(n);
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return (unit === 0 ? value : value.toFixed(1)) + " " + units[unit];
  }

  function badge(status) {
    return el("span", { class: "badge st-" + status, text: status });
  }

  function agentName(id) {
    if (id === null || id === undefined) return null;
    const agent = state.agentsById.get(String(id));
    return agent ? agent.name : String(id).slice(0, 8);
  }

  function setFacts(dl, facts) {
    dl.replaceChildren();
    for (const [term, value] of facts) {
      dl.append(el("div", {}, el("dt", { text: term }), el("dd", {}, value)));
    }
  }

  // -- talking to the server ----------------------------------------------------

  class HttpError extends Error {
    constructor(status, body) {
      super("HTTP " + status);
      this.status = status;
      this.body = body;
    }
  }

  async function request(path, { auth = true } = {}) {
    const headers = { Accept: "application/json" };
    if (auth && state.token) headers.Authorization = "Bearer " + state.token;
    const controller = new AbortController();
    const timeout = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    let response;
    try {
      response = await fetch(path, { headers, cache: "no-store", signal: controller.signal, referrerPolicy: "no-referrer" });
    } finally {
      clearTimeout(timeout);
    }
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (!response.ok) throw new HttpError(response.status, body);
    if (body && typeof body.now === "string") {
      const t = parseTime(body.now);
      if (t !== null) state.clockOffsetMs = t - Date.now();
    }
    return { body, headers: response.headers };
  }

  // -- token --------------------------------------------------------------------

  function readToken() {
    const hash = window.location.hash;
    if (hash.startsWith("#token=")) {
      const token = decodeURIComponent(hash.slice("#token=".length)).trim();
      // Out of the address bar and the history at once.
      history.replaceState(null, "", window.location.pathname + window.location.search);
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.agentsById = new Map();
    state.generation += 1;
    showSignedIn(false);
    $("login-error").textContent = message || "";
    clearBoard();
  }

  function showSignedIn(signedIn) {
    $("board").hidden = !signedIn;
    $("login").hidden = signedIn;
    $("sign-out").hidden = !signedIn;
  }

  function clearBoard() {
    state.graphKey = null;
    for (const id of ["count-list", "task-rows", "agent-rows", "db-facts", "backup-list", "graph-box", "runs", "graph-caption", "page-label"]) {
      $(id).replaceChildren();
    }
  }

  // -- rendering: counts and tasks ---------------------------------------------

  function renderCounts(stats) {
    const list = $("count-list");
    list.replaceChildren();
    const entries = [["all", stats.tasks_total, ""]].concat(STATUSES.map((s) => [s, stats["tasks_" + s], s]));
    for (const [label, count, value] of entries) {
      const button = el(
        "button",
        {
          type: "button",
          class: value ? "st-" + value : "",
          "data-key": "count:" + label,
          "aria-pressed": state.filter === value ? "true" : "false",
          "aria-label": label + ": " + count + " tasks" + (value ? ", show only " + label : ", show all"),
          onclick: () => setFilter(value),
        },
        el("span", { class: "n", text: count }),
        el("span", { class: "label", text: label }),
      );
      list.append(el("li", {}, button));
    }
  }

  function leaseLeft(task) {
    if (task.status !== "claimed" || !task.lease_expires_at) return "–";
    const left = (parseTime(task.lease_expires_at) - serverNow()) / 1000;
    return left >= 0 ? duration(left) : "expired " + duration(-left) + " ago";
  }

  function renderTasks(tasks) {
    const rows = $("task-rows");
    rows.replaceChildren();
    if (!tasks.length) {
      rows.append(el("tr", {}, el("td", { colspan: 8, class: "muted", text: state.filter ? "No " + state.filter + " tasks." : "No tasks yet." })));
    }
    for (const task of tasks) {
      const id = idOf(task.id);
      const row = el(
        "tr",
        { class: id === state.selected ? "selected" : "", "data-task-id": id },
        el("td", { class: "num", text: id }),
        el("td", { class: "title" }, el("button", {
          type: "button",
          class: "linkish",
          "data-key": "title:" + id,
          "aria-label": "Show dependencies and runs of task " + id + ": " + task.title,
          onclick: () => selectTask(id),
        }, task.title)),
        el("td", {}, badge(task.status)),
        el("td", { class: "num", text: task.priority }),
        el("td", { text: task.claimed_by ? agentName(task.claimed_by) : "–" }),
        el("td", { class: "num", text: task.attempt + " / " + task.max_attempts }),
        el("td", { class: "num", text: leaseLeft(task) }),
        el("td", { class: "num", text: duration((serverNow() - parseTime(task.created_at)) / 1000) }),
      );
      rows.append(row);
    }
    const page = state.cursors.length;
    $("page-label").textContent = "Page " + page + (state.filter ? " of " + state.filter + " tasks" : "");
    $("prev-page").disabled = page <= 1;
    $("next-page").disabled = !state.nextCursor;
  }

  function setFilter(value) {
    state.filter = value;
    $("status-filter").value = value;
    state.cursors = [null];
    state.generation += 1;
    refresh();
  }

  // -- rendering: agents and database ------------------------------------------

  function renderAgents(agents) {
    state.agentsById = new Map(agents.map((a) => [String(a.id), a]));
    const rows = $("agent-rows");
    rows.replaceChildren();
    if (!agents.length) rows.append(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "No agents registered." })));
    for (const agent of agents) {
      const held = (agent.tasks_held || []).map(idOf);
      const heldCell = el("td", {});
      if (!held.length) heldCell.textContent = "–";
      held.forEach((id, i) => {
        if (i) heldCell.append(", ");
        heldCell.append(el("button", { type: "button", class: "linkish", "data-key": "held:" + agent.id + ":" + id, "aria-label": "Show task " + id, onclick: () => selectTask(id) }, "#" + id));
      });
      rows.append(el(
        "tr", {},
        el("td", {}, agent.name, agent.revoked_at ? el("span", { class: "muted", text: " (revoked)" }) : null, agent.local ? el("span", { class: "muted", text: " (local)" }) : null),
        el("td", { text: agent.kind }),
        el("td", { class: "num", text: agent.local ? "–" : agent.tokens_active }),
        el("td", { class: "num", text: ago(agent.last_active_at) }),
        heldCell,
      ));
    }
  }

  function renderDatabase(db, backups) {
    const migrations = db.migrations_applied + " applied" + (db.last_migration ? ", latest " + db.last_migration : "") +
      (db.failed_migrations ? ", " + db.failed_migrations + " failed" : "");
    const last = db.last_backup;
    const backupText = last ? ago(last.created_at) + " (" + bytes(last.size_bytes) + ")" : "none yet";
    let replication = "not configured";
    if (db.replication) {
      const lag = db.replication.lag_s;
      const r = db.replication;
      const state = r.running ? "running" : r.standby ? (r.active ? "running (in worker pid " + r.pid + ")" : "standby") : "stopped";
      replication = state + (lag === null || lag === undefined ? "" : ", lag " + duration(lag)) +
        (db.replication.last_error ? " (last error: " + db.replication.last_error + ")" : "");
    }
    setFacts($("db-facts"), [
      ["Health", db.health && db.health.ok ? "ok (" + db.health.latency_ms + " ms)" : "failing"],
      ["Size", bytes(db.size_bytes)],
      db.backend === "postgresql"
        ? ["Server", "PostgreSQL " + db.server_version]
        : ["WAL", bytes(db.wal_size_bytes) + " (" + db.journal_mode + ")"],
      ["Migrations", migrations],
      ["Last backup", backupText],
      ["Replication", replication],
      ["Busy retries", db.busy_retries + (db.busy_exhausted ? " (" + db.busy_exhausted + " gave up)" : "") + " since start"],
    ]);
    const list = $("backup-list");
    list.replaceChildren();
    if (!backups.length) list.append(el("li", { class: "muted", text: "No backups in the backup directory." }));
    for (const b of backups.slice(0, 5)) {
      list.append(el("li", {}, el("code", { text: b.name }), " · " + bytes(b.size_bytes) + " · " + ago(b.created_at)));
    }
  }

  function renderPublic(health, healthDb) {
    const facts = [["Server", health ? "answering" : "not answering"]];
    if (healthDb) {
      facts.push(["Database", healthDb.ok ? "ok (" + healthDb.latency_ms + " ms)" : "unavailable"]);
      if (healthDb.database) facts.push(["Size", bytes(healthDb.database.size_bytes)]);
    }
    setFacts($("public-health"), facts);
  }

  // -- the dependency graph: a small layered layout ----------------------------

  // Layers by longest path from the tasks that wait for nothing in view (so a
  // dependency is always in an earlier layer than its dependents); order inside a
  // layer by a few barycentre sweeps to keep edges short and crossings few.
  function layout(nodes, edges) {
    const ids = nodes.map((n) => idOf(n.id)).sort(byId);
    const preds = new Map(ids.map((id) => [id, []]));
    const succs = new Map(ids.map((id) => [id, []]));
    for (const e of edges) {
      const from = idOf(e.from), to = idOf(e.to);
      if (preds.has(to) && succs.has(from)) { preds.get(to).push(from); succs.get(from).push(to); }
    }
    const layerOf = new Map();
    const visiting = new Set();
    function depth(id) {
      if (layerOf.has(id)) return layerOf.get(id);
      if (visiting.has(id)) return 0; // a cycle cannot be stored, but never loop on one
      visiting.add(id);
      let d = 0;
      for (const p of preds.get(id)) d = Math.max(d, depth(p) + 1);
      visiting.delete(id);
      layerOf.set(id, d);
      return d;
    }
    ids.forEach(depth);
    const layers = [];
    for (const id of ids) {
      const d = layerOf.get(id);
      (layers[d] = layers[d] || []).push(id);
    }
    const position = new Map();
    const index = () => layers.forEach((layer) => layer.forEach((id, i) => position.set(id, i)));
    index();
    const mean = (list, fallback) => (list.length ? list.reduce((s, id) => s + position.get(id), 0) / list.length : fallback);
    for (let sweep = 0; sweep < 4; sweep += 1) {
      const down = sweep % 2 === 0;
      const order = down ? layers.slice(1) : layers.slice(0, -1).reverse();
      for (const layer of order) {
        const weight = new Map(layer.map((id) => [id, mean(down ? preds.get(id) : succs.get(id), position.get(id))]));
        layer.sort((a, b) => weight.get(a) - weight.get(b) || byId(a, b));
        layer.forEach((id, i) => position.set(id, i));
      }
    }
    return { layers, position, preds };
  }

  function renderGraph(graph) {
    const box = $("graph-box");
    const caption = $("graph-caption");
    // Nothing in the graph depends on the clock: redraw only when it changed, so a
    // pointer or a keyboard user is not disturbed every refresh.
    const key = JSON.stringify([graph, graph.nodes.map((n) => agentName(n.claimed_by))]);
    if (key === state.graphKey && box.firstChild) return;
    state.graphKey = key;
    box.replaceChildren();
    if (graph.too_large) {
      caption.textContent = graph.open_count + " open or claimed tasks: too many to draw. Choose a task to see its neighbourhood.";
      return;
    }
    const focus = idOf(graph.focus);
    caption.textContent = focus
      ? "Task " + focus + " and the tasks within two dependency steps of it" + (graph.truncated ? " (cut short: too many)" : "") + ". Arrows point from a dependency to the task that waits for it."
      : "All open work (" + graph.open_count + " open or claimed tasks) and what it waits for.";
    if (!graph.nodes.length) {
      box.append(el("p", { class: "empty", text: "No open work." }));
      return;
    }
    const nodeById = new Map(graph.nodes.map((n) => [idOf(n.id), n]));
    const { layers, position } = layout(graph.nodes, graph.edges);
    // Top to bottom: a dependency sits above the tasks that wait for it. Each layer
    // is centred on the widest one.
    const W = 136, H = 44, GAP_X = 12, GAP_Y = 40, PAD = 10;
    const layerIndex = new Map();
    layers.forEach((layer, i) => layer.forEach((id) => layerIndex.set(id, i)));
    const widest = Math.max(...layers.map((l) => l.length));
    const x = (id) => PAD + ((widest - layers[layerIndex.get(id)].length) * (W + GAP_X)) / 2 + position.get(id) * (W + GAP_X);
    const y = (id) => PAD + layerIndex.get(id) * (H + GAP_Y);
    const width = PAD * 2 + widest * W + (widest - 1) * GAP_X;
    const height = PAD * 2 + layers.length * H + (layers.length - 1) * GAP_Y;
    const root = svg("svg", { width, height, viewBox: "0 0 " + width + " " + height, role: "group", "aria-labelledby": "graph-title graph-caption" });
    box.append(root); // attached first: labels are measured as they are added
    const defs = svg("defs");
    const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
    const tip = svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" });
    marker.append(tip);
    defs.append(marker);
    root.append(defs);
    for (const e of graph.edges) {
      const from = idOf(e.from), to = idOf(e.to);
      if (!nodeById.has(from) || !nodeById.has(to)) continue;
      const x1 = x(from) + W / 2, y1 = y(from) + H, x2 = x(to) + W / 2, y2 = y(to) - 2;
      const mid = (y1 + y2) / 2;
      root.append(svg("path", { class: "edge", d: `M${x1},${y1} C${x1},${mid} ${x2},${mid} ${x2},${y2}`, "marker-end": "url(#arrow)" }));
    }
    const order = layers.flat();
    for (const id of order) {
      const node = nodeById.get(id);
      const claimer = node.claimed_by && node.status === "claimed" ? " · " + agentName(node.claimed_by) : "";
      const g = svg("g", {
        class: "node st-" + node.status + (id === focus ? " focus" : ""),
        transform: `translate(${x(id)},${y(id)})`,
        tabindex: 0,
        role: "button",
        "data-task-id": id,
        "data-key": "node:" + id,
        "aria-label": "Task " + id + ": " + node.title + ", " + node.status + (id === focus ? ", selected" : ""),
      });
      const title = svg("title");
      title.textContent = "#" + id + " " + node.title + " (" + node.status + ")";
      g.append(title, svg("rect", { width: W, height: H, rx: 6 }));
      const name = svg("text", { x: 8, y: 17 });
      name.textContent = node.title;
      const meta = svg("text", { x: 8, y: 34, class: "meta" });
      meta.textContent = "#" + id + " · " + node.status + claimer;
      g.append(name, meta);
      root.append(g);
      fitText(name, W - 14);
      fitText(meta, W - 14);
      g.addEventListener("click", () => selectTask(id));
      g.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); selectTask(id); }
      });
    }
  }

  // Shorten an SVG label with an ellipsis until it fits (measured, so any font
  // works; a binary search, so a long title costs a few measurements).
  function fitText(text, maxWidth) {
    const full = text.textContent;
    if (text.getComputedTextLength() <= maxWidth) return;
    let lo = 0, hi = full.length - 1; // the longest prefix that fits is in [lo, hi]
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      text.textContent = full.slice(0, mid) + "…";
      if (text.getComputedTextLength() <= maxWidth) lo = mid; else hi = mid - 1;
    }
    text.textContent = full.slice(0, lo) + "…";
  }

  function renderRuns(taskId, runs) {
    const box = $("runs");
    box.replaceChildren();
    if (taskId === null) return;
    box.append(el("h3", { text: "Runs of task " + taskId }));
    if (!runs.length) {
      box.append(el("p", { class: "muted", text: "No runs reported yet." }));
      return;
    }
    const body = el("tbody");
    for (const run of runs) {
      body.append(el("tr", {},
        el("td", { class: "num", text: run.attempt }),
        el("td", {}, badge(run.status === "expired" ? "failed" : run.status === "in_progress" ? "claimed" : run.status), run.status === "expired" || run.status === "in_progress" ? " " + run.status : ""),
        el("td", { text: agentName(run.agent_id) }),
        el("td", { text: run.notes || "" }),
        el("td", { class: "num", text: ago(run.created_at) }),
      ));
    }
    const head = el("thead", {}, el("tr", {}, ...["Attempt", "Status", "Agent", "Notes", "When"].map((h) => el("th", { scope: "col", text: h }))));
    box.append(el("div", { class: "table-wrap" }, el("table", {}, head, body)));
  }

  function selectTask(id) {
    state.selected = id === null ? null : String(id);
    state.generation += 1;
    refresh().then(() => {
      const node = state.selected && document.querySelector('#graph-box [data-task-id="' + CSS.escape(state.selected) + '"]');
      if (node) node.focus();
    });
  }

  // -- the polling loop ---------------------------------------------------------

  function markLive() {
    // A counter for tests and scripts that wait for the next refresh.
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
    state.lastOk = new Date();
    state.failing = false;
    document.body.classList.remove("stale");
    $("stale").hidden = true;
    $("live").textContent = "Live · updated " + state.lastOk.toLocaleTimeString();
  }

  function markStale() {
    state.failing = true;
    document.body.classList.add("stale");
    const since = state.lastOk ? state.lastOk.toLocaleTimeString() : "the page was opened";
    const text = "Stale: the server has not answered since " + since + ". Showing the last data received; retrying every " + REFRESH_MS / 1000 + " s.";
    const banner = $("stale");
    if (banner.hidden || banner.textContent !== text) banner.textContent = text;
    banner.hidden = false;
    $("live").textContent = "Stale · no answer since " + since;
  }

  async function refreshPublic() {
    const [health, healthDb] = await Promise.all([
      request("/healthz", { auth: false }).then((r) => r.body),
      request("/healthz/db", { auth: false }).then((r) => r.body, (err) => {
        if (err instanceof HttpError && err.status === 503) return err.body;
        throw err;
      }),
    ]);
    renderPublic(health, healthDb);
  }

  async function refreshBoard() {
    const generation = state.generation;
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (state.filter) params.set("status", state.filter);
    const cursor = state.cursors[state.cursors.length - 1];
    if (cursor) params.set("cursor", cursor);
    const graphPath = "/api/admin/graph" + (state.selected ? "?task_id=" + encodeURIComponent(state.selected) : "");
    const selected = state.selected;
    const [stats, agents, list, database, backups, graph, runs] = await Promise.all([
      request("/api/admin/stats"),
      request("/api/admin/agents"),
      request("/api/task/list?" + params.toString()),
      request("/api/admin/database"),
      request("/api/admin/backups"),
      request(graphPath),
      selected ? request("/api/admin/runs?task_id=" + encodeURIComponent(selected)) : Promise.resolve(null),
    ]);
    if (generation !== state.generation || !state.token) return; // the view changed meanwhile
    // Everything below is drawn anew: keep the keyboard focus on the same control.
    const focusKey = document.activeElement && document.activeElement.getAttribute("data-key");
    renderAgents(agents.body.agents);
    renderCounts(stats.body.stats);
    state.nextCursor = list.headers.get("X-Next-Cursor");
    renderTasks(list.body);
    renderGraph(graph.body.graph);
    renderRuns(selected, runs ? runs.body.runs : []);
    renderDatabase(database.body.database, backups.body.backups);
    const now = document.activeElement;
    if (focusKey && (!now || now === document.body || now.getAttribute("data-key") !== focusKey)) {
      const again = document.querySelector('[data-key="' + CSS.escape(focusKey) + '"]');
      if (again) again.focus({ preventScroll: true });
    }
  }

  async function refresh() {
    clearTimeout(state.timer);
    try {
      await refreshPublic();
      if (state.token) await refreshBoard();
      markLive();
    } catch (err) {
      if (err instanceof HttpError && (err.status === 401 || err.status === 403)) {
        markLive();
        signOut(err.status === 403
          ? "That token belongs to an agent, not a maintainer (403). Use a maintainer token."
          : "The server refused this token (401). Enter a maintainer token.");
        $("token-input").focus();
      } else if (err instanceof HttpError && err.status === 404 && state.selected) {
        state.selected = null; // the selected task is gone (a restore, say)
      } else {
        markStale();
      }
    } finally {
      clearTimeout(state.timer);
      state.timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  // -- wiring -------------------------------------------------------------------

  function start() {
    state.token = readToken();
    showSignedIn(Boolean(state.token));
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) {
        $("login-error").textContent = "Enter a maintainer token.";
        $("token-input").focus();
        return;
      }
      $("token-input").value = "";
      $("login-error").textContent = "";
      sessionStorage.setItem(TOKEN_KEY, token);
      state.token = token;
      state.generation += 1;
      showSignedIn(true);
      refresh().then(() => { if (state.token) $("tasks-title").focus(); });
    });
    $("sign-out").addEventListener("click", () => {
      signOut("");
      $("token-input").focus();
    });
    $("status-filter").addEventListener("change", (event) => setFilter(event.target.value));
    $("prev-page").addEventListener("click", () => {
      if (state.cursors.length > 1) { state.cursors.pop(); state.generation += 1; refresh(); }
    });
    $("next-page").addEventListener("click", () => {
      if (state.nextCursor) { state.cursors.push(state.nextCursor); state.generation += 1; refresh(); }
    });
    $("show-open-work").addEventListener("click", () => selectTask(null));
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && state.selected) selectTask(null);
    });
    $("tasks-title").setAttribute("tabindex", "-1");
    refresh();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
