// The dashboard: the overview follows the head's live feed (Server-Sent Events); the job pages read the
// dashboard's JSON routes. Routing by the URL's hash (#/, #/jobs, #/jobs/<id>): every URL is relative, so the
// same files work under any [web] dashboard_prefix. No framework, no build step.
"use strict";

(() => {
  const COLORS = { submitted: "#6b7280", started: "#2563eb", succeeded: "#16a34a", failed: "#d97706", dead: "#dc2626" };
  const STATUSES = ["queued", "running", "succeeded", "failed", "dead", "cancelled"];
  const $ = (id) => document.getElementById(id);

  function node(tag, attrs = {}, ...children) {
    const made = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") made.textContent = String(value);
      else if (key.startsWith("on")) made.addEventListener(key.slice(2), value);
      else made.setAttribute(key, value === true ? "" : String(value));
    }
    made.append(...children.filter((child) => child !== null && child !== undefined));
    return made;
  }

  const seconds = (value) => (value === null || value === undefined ? "–" : value < 1 ? `${Math.round(value * 1000)} ms` : `${value.toFixed(1)} s`);
  const when = (epoch) => new Date(epoch * 1000).toLocaleString();
  const known = (value) => (value === null || value === undefined ? "?" : String(value));

  async function api(path, options = {}) {
    const response = await fetch(path, { credentials: "same-origin", cache: "no-store", ...options });
    if (response.status === 401) window.location.reload(); // the session ended: back to the sign-in page
    return response;
  }

  // ---- overview --------------------------------------------------------------------------------------------

  function renderHealth(snapshot) {
    const health = snapshot.health || {};
    const pill = (id, ok, text) => {
      const el = $(id);
      el.textContent = text;
      el.className = `pill ${ok ? "ok" : "bad"}`;
    };
    pill("health-broker", health.broker, health.broker ? "broker up" : "broker down");
    pill("health-store", health.store, health.store ? "store up" : "store down");
    const heads = snapshot.web_heads;
    if (heads) pill("health-heads", heads.running === heads.serving, `web heads ${known(heads.running)}/${heads.serving}`);
  }

  function renderCounts(jobs) {
    $("counts").replaceChildren(
      ...STATUSES.map((status) =>
        node("a", { class: `count ${status}`, href: `#/jobs?status=${status}` }, node("b", { text: jobs[status] ?? 0 }), node("span", { text: status })),
      ),
    );
  }

  function renderActivity(activity) {
    const series = Object.entries(activity.series).map(([name, values]) => ({ name, values, color: COLORS[name], note: ` ${values[values.length - 1] ?? 0}/s` }));
    window.kvernCharts.line($("chart-activity"), series, "−60 min");
    window.kvernCharts.legend($("legend-activity"), series);
  }

  // Queue wait and run time per task: p95 solid, p50 dashed, one color per task.
  const TASK_COLORS = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#0891b2", "#db2777"];

  function renderLatency(latency) {
    const tasks = Object.entries(latency.tasks);
    for (const what of ["wait", "run"]) {
      const series = tasks.flatMap(([task, lines], n) => [
        { name: `${task} p95`, values: lines[`${what}_p95`], color: TASK_COLORS[n % TASK_COLORS.length] },
        { name: `${task} p50`, values: lines[`${what}_p50`], color: TASK_COLORS[n % TASK_COLORS.length], dashed: true },
      ]);
      window.kvernCharts.line($(`chart-${what}`), series, "−60 min", " s");
      window.kvernCharts.legend($(`legend-${what}`), series.filter((s) => !s.dashed).map((s) => ({ ...s, name: s.name.replace(/ p95$/, "") })));
    }
  }

  function renderPools(pools) {
    $("pools").replaceChildren(
      ...pools.map((pool) => {
        const decisions = pool.decisions.map((d) =>
          node("li", { class: "decision" }, node("time", { text: new Date(d.at * 1000).toLocaleTimeString() }), ` ${d.from} → ${d.to}: `, node("span", { class: "reason", text: d.reason })),
        );
        return node(
          "div",
          { class: "pool", "data-pool": pool.name },
          node("h3", { text: pool.name }),
          node(
            "p",
            { class: "sizes" },
            node("b", { class: "processes", text: known(pool.processes) }),
            ` ${pool.processes === 1 ? "process" : "processes"} · desired ${known(pool.desired)} · min ${pool.min} · max ${pool.max} · ${pool.concurrency} per process`,
          ),
          decisions.length ? node("ul", { class: "decisions" }, ...decisions) : node("p", { class: "muted small", text: "No scaling decision yet." }),
        );
      }),
    );
  }

  function renderTable(id, rows) {
    $(id).tBodies[0].replaceChildren(...rows.map((cells) => node("tr", {}, ...cells.map((cell) => node("td", { text: cell })))));
  }

  let lastSnapshot = null;

  function renderOverview(snapshot) {
    lastSnapshot = snapshot;
    renderHealth(snapshot);
    if (!snapshot.jobs) return; // the store is down: only the health changed
    renderCounts(snapshot.jobs);
    renderActivity(snapshot.activity);
    renderLatency(snapshot.latency);
    renderPools(snapshot.pools);
    renderTable("queues", snapshot.queues.map((q) => [q.name, known(q.ready), known(q.unacked), known(q.consumers), known(q.in_per_s), known(q.out_per_s)]));
    renderTable("tasks", snapshot.tasks.map((t) => [t.task, String(t.started), seconds(t.wait_p50), seconds(t.wait_p95), seconds(t.run_p50), seconds(t.run_p95)]));
    document.body.dataset.updated = String(snapshot.at);
  }

  function followOverview() {
    const stream = new EventSource("api/live");
    stream.addEventListener("overview", (event) => {
      renderOverview(JSON.parse(event.data));
      // A job page showing a job still queued or running is read again with the overview's rhythm.
      if (following) showJob(following);
    });
    stream.onerror = () => {
      if (stream.readyState === EventSource.CLOSED) window.setTimeout(followOverview, 5000);
    };
  }

  // ---- jobs ------------------------------------------------------------------------------------------------

  let olderThan = null;

  function jobQuery(before) {
    const form = new FormData($("filters"));
    const query = new URLSearchParams();
    for (const name of ["status", "task", "q"]) if (form.get(name)) query.set(name, String(form.get(name)));
    const since = Number(form.get("since"));
    if (since) query.set("after", String(Date.now() / 1000 - since));
    if (before) query.set("before", String(before));
    return query;
  }

  async function loadJobs(append = false) {
    const response = await api(`api/jobs?${jobQuery(append ? olderThan : null)}`);
    if (!response.ok) return;
    const page = await response.json();
    const tasks = $("f-task");
    if (tasks.options.length === 1) for (const task of page.tasks) tasks.append(node("option", { text: task }));
    const rows = page.jobs.map((job) =>
      node(
        "tr",
        { "data-job": job.id },
        node("td", {}, node("a", { href: `#/jobs/${job.id}`, class: "mono", text: job.id.slice(0, 8) })),
        node("td", { text: job.task }),
        node("td", {}, node("span", { class: `status ${job.status}`, text: job.status })),
        node("td", { text: `${job.progress}%` }),
        node("td", { text: when(job.created) }),
      ),
    );
    const body = $("jobs").tBodies[0];
    if (append) body.append(...rows);
    else body.replaceChildren(...rows);
    olderThan = page.next_before;
    $("older").hidden = olderThan === null;
  }

  // ---- one job ---------------------------------------------------------------------------------------------

  const ACTIONS = [
    { name: "replay", when: ["failed", "dead"], method: "POST", path: (id) => `api/jobs/${id}/replay`, ask: "Replay this job? It is queued again with a fresh round of attempts." },
    { name: "cancel", when: ["queued", "running"], method: "POST", path: (id) => `api/jobs/${id}/cancel`, ask: "Cancel this job?" },
    { name: "delete", when: STATUSES, method: "DELETE", path: (id) => `api/jobs/${id}`, ask: "Delete this job, its history and its artifacts? This cannot be undone." },
  ];

  function field(label, value) {
    return [node("dt", { text: label }), node("dd", {}, value instanceof Node ? value : document.createTextNode(value ?? "–"))];
  }

  function attemptRow(attempt) {
    const error = attempt.error
      ? node("details", {}, node("summary", { text: attempt.error }), attempt.traceback ? node("pre", { text: attempt.traceback }) : null)
      : "–";
    return node(
      "tr",
      {},
      node("td", { text: attempt.attempt }),
      node("td", { text: attempt.worker ?? "–" }),
      node("td", { text: attempt.started_at ? new Date(attempt.started_at).toLocaleString() : "–" }),
      node("td", { text: attempt.finished_at ? new Date(attempt.finished_at).toLocaleString() : "–" }),
      node("td", { text: attempt.outcome ?? "running" }),
      node("td", {}, error),
    );
  }

  async function act(action, job) {
    if (!window.confirm(action.ask)) return;
    const response = await api(action.path(job.id), { method: action.method });
    const note = $("job-note");
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      note.textContent = body.error ? body.error.message : `Error ${response.status}`;
      return;
    }
    if (action.name === "delete") window.location.hash = "#/jobs";
    else showJob(job.id);
  }

  let following = null;

  async function showJob(id) {
    const response = await api(`api/jobs/${encodeURIComponent(id)}`);
    const card = $("job");
    if (!response.ok) {
      card.replaceChildren(node("h2", { text: "No such job" }), node("p", { class: "muted", text: id }));
      return;
    }
    const job = await response.json();
    const progress = node("div", { class: "bar" }, node("progress", { max: 100, value: job.progress }), node("span", { text: ` ${job.progress}% ${job.progress_message ?? ""}` }));
    const actions = ACTIONS.filter((a) => a.when.includes(job.status)).map((a) =>
      node("button", { type: "button", class: `action ${a.name}`, "data-action": a.name, onclick: () => act(a, job), text: a.name[0].toUpperCase() + a.name.slice(1) }),
    );
    const artifacts = job.artifacts.length
      ? node("ul", {}, ...job.artifacts.map((a) => node("li", {}, node("a", { href: `api/jobs/${job.id}/artifacts/${encodeURIComponent(a.name)}`, text: a.name }), ` ${a.content_type}, ${a.size} bytes`)))
      : "none";
    card.replaceChildren(
      node("h2", {}, node("span", { class: "mono", text: job.id }), " ", node("span", { class: `status ${job.status}`, id: "job-status", text: job.status })),
      node("div", { class: "actions" }, ...actions, node("span", { class: "muted", id: "job-note" })),
      node(
        "dl",
        {},
        ...field("Task", job.task),
        ...field("Queue", job.queue),
        ...field("Progress", progress),
        ...field("Attempts", `${job.attempts} of ${job.max_attempts}`),
        ...field("Created", job.created_at),
        ...field("Started", job.started_at),
        ...field("Finished", job.finished_at),
        ...field("Error", job.error),
        ...field("Args", node("pre", { text: JSON.stringify(job.args, null, 2) })),
        ...field("Kwargs", node("pre", { text: JSON.stringify(job.kwargs, null, 2) })),
        ...field("Result", node("pre", { text: JSON.stringify(job.result, null, 2) })),
        ...field("Artifacts", artifacts),
      ),
      node("h3", { text: "Attempts" }),
      node("div", { class: "scroll" }, node("table", {}, node("thead", {}, node("tr", {}, ...["#", "Worker", "Started", "Finished", "Outcome", "Error"].map((h) => node("th", { text: h })))), node("tbody", {}, ...job.history.map(attemptRow)))),
    );
    // A job still moving is shown again when the overview's next snapshot arrives (no poll of its own).
    following = ["queued", "running"].includes(job.status) ? job.id : null;
  }

  // ---- routing ---------------------------------------------------------------------------------------------

  function route() {
    const hash = window.location.hash || "#/";
    const [path, query] = hash.slice(1).split("?");
    const parts = path.split("/").filter(Boolean);
    const view = parts[0] === "jobs" ? (parts[1] ? "job" : "jobs") : "overview";
    for (const section of document.querySelectorAll("[data-view]")) section.hidden = section.dataset.view !== view;
    for (const link of document.querySelectorAll("[data-nav]")) link.classList.toggle("here", link.dataset.nav === (view === "job" ? "jobs" : view));
    following = null;
    if (view === "jobs") {
      const params = new URLSearchParams(query || "");
      if (params.has("status")) $("f-status").value = params.get("status");
      loadJobs();
    }
    if (view === "job") showJob(decodeURIComponent(parts[1]));
  }

  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    loadJobs();
  });
  $("older").addEventListener("click", () => loadJobs(true));
  $("logout").addEventListener("click", async () => {
    await api("logout", { method: "POST" });
    window.location.reload();
  });
  window.addEventListener("hashchange", route);
  // The charts are drawn at their on-screen width: a turned phone or a resized window redraws them at once.
  let resizing = 0;
  window.addEventListener("resize", () => {
    window.clearTimeout(resizing);
    resizing = window.setTimeout(() => lastSnapshot && renderOverview(lastSnapshot), 100);
  });
  route();
  followOverview();
})();
