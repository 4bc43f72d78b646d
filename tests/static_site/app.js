// Reports example: request PDF reports as kvern jobs and watch them run.
// Plain JavaScript, no build step, no external resources.
"use strict";

(() => {
  const TASK = "tasks.generate_heavy_report";
  const API = (document.body.dataset.api || "/api/v1").replace(/\/+$/, "");
  const JOBS_URL = `${API}/jobs`;
  const POLL_MS = 500;
  // Consecutive failed polls (network errors, 5xx) before a job is given up on.
  const MAX_POLL_FAILURES = 20;
  const TERMINAL = new Set(["succeeded", "failed", "dead", "cancelled"]);
  const STATUS_TEXT = {
    queued: "Queued",
    running: "Running",
    succeeded: "Succeeded",
    failed: "Failed",
    dead: "Dead",
    cancelled: "Cancelled",
  };

  const form = document.getElementById("report-form");
  const input = document.getElementById("user-id");
  const button = document.getElementById("generate");
  const formError = document.getElementById("form-error");
  const list = document.getElementById("jobs");
  const empty = document.getElementById("empty");
  const clearButton = document.getElementById("clear-finished");

  /** An API failure: HTTP status (0: no response), error code and message. */
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** fetch + JSON; non-2xx responses become ApiError with the API's error body. */
  async function requestJSON(url, options = {}) {
    let response;
    try {
      response = await fetch(url, {
        cache: "no-store",
        ...options,
        headers: { Accept: "application/json", ...(options.headers || {}) },
      });
    } catch (err) {
      throw new ApiError(0, "network_error", `Could not reach the server (${err.message}).`);
    }
    let body = null;
    const text = await response.text();
    if (text) {
      try {
        body = JSON.parse(text);
      } catch {
        body = null;
      }
    }
    if (!response.ok) {
      const error = body && typeof body === "object" ? body.error : null;
      const code = (error && error.code) || `http_${response.status}`;
      const message =
        (error && error.message) ||
        `The server answered ${response.status} ${response.statusText}`.trim() + ".";
      throw new ApiError(response.status, code, message);
    }
    if (!body || typeof body !== "object") {
      throw new ApiError(response.status, "bad_response", "The server sent an unexpected response.");
    }
    return { body, response };
  }

  function errorText(err) {
    if (err instanceof ApiError) {
      if (!err.status) return err.message;
      const synthetic = err.code === `http_${err.status}`;
      return `${err.message} (${synthetic ? "" : `${err.code}, `}HTTP ${err.status})`;
    }
    return String((err && err.message) || err);
  }

  /** A job's `error` field may be a string or an object; make it readable. */
  function describeJobError(error) {
    if (error === null || error === undefined || error === "") return "";
    if (typeof error === "string") return error;
    if (typeof error === "object") {
      const kind = error.type || error.code || error.exc_type || "";
      const message = error.message || error.detail || error.exc_message || "";
      if (kind || message) return [kind, message].filter(Boolean).join(": ");
    }
    return JSON.stringify(error);
  }

  /** Only http(s) links (relative ones resolved against the page). */
  function safeUrl(url) {
    if (typeof url !== "string" || !url) return null;
    try {
      const parsed = new URL(url, window.location.href);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch {
      return null;
    }
  }

  function formatSize(bytes) {
    if (typeof bytes !== "number" || !Number.isFinite(bytes)) return "";
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} kB`;
    return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
  }

  function seconds(from, to) {
    const a = Date.parse(from);
    const b = Date.parse(to);
    return Number.isFinite(a) && Number.isFinite(b) && b >= a ? (b - a) / 1000 : null;
  }

  function clampProgress(value) {
    const n = Number(value);
    return Number.isFinite(n) ? Math.min(100, Math.max(0, Math.round(n))) : 0;
  }

  function el(tag, props = {}, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "className") node.className = value;
      else if (key === "testid") node.dataset.testid = value;
      else node.setAttribute(key, value);
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function updateEmpty() {
    empty.hidden = list.children.length > 0;
  }

  /** One watched job: its list entry and its polling loop. */
  class JobView {
    constructor(job, userId, pollUrl) {
      this.id = String(job.id);
      this.userId = userId;
      this.pollUrl = pollUrl;
      this.failures = 0;
      this.timer = null;
      this.stopped = false;

      this.root = el("li", { className: "job", testid: "job" });
      this.root.dataset.jobId = this.id;
      const head = el("div", { className: "job-head" });
      head.append(
        el("span", { className: "job-title" }, `Report for user ${userId}`),
        (this.statusEl = el("span", { className: "status", testid: "job-status" })),
      );
      const bar = el("div", { className: "job-bar" });
      this.progressEl = el("progress", {
        max: "100",
        value: "0",
        testid: "job-progress",
        "aria-label": `Progress of the report for user ${userId}`,
      });
      this.pctEl = el("span", { className: "pct", testid: "job-pct" }, "0%");
      bar.append(this.progressEl, this.pctEl);
      this.metaEl = el("div", { className: "job-meta muted", testid: "job-meta" });
      this.noticeEl = el("p", { className: "job-notice muted", testid: "job-notice" });
      this.noticeEl.hidden = true;
      this.errorEl = el("p", { className: "job-error error", testid: "job-error", role: "alert" });
      this.errorEl.hidden = true;
      this.artifactsEl = el("div", { className: "artifacts", testid: "job-artifacts" });
      this.root.append(head, bar, this.metaEl, this.noticeEl, this.errorEl, this.artifactsEl);
      this.render(job);
    }

    get finished() {
      return this.stopped;
    }

    render(job) {
      const status = String(job.status || "queued");
      this.root.dataset.status = status;
      this.statusEl.textContent = STATUS_TEXT[status] || status;
      this.statusEl.dataset.status = status;

      const pct = status === "succeeded" ? 100 : clampProgress(job.progress);
      this.progressEl.value = pct;
      this.progressEl.setAttribute("value", String(pct));
      this.pctEl.textContent = `${pct}%`;

      const meta = [`Job ${this.id}`];
      if (typeof job.attempts === "number" && job.attempts > 1) meta.push(`attempt ${job.attempts}`);
      const took = seconds(job.started_at, job.finished_at);
      if (took !== null) meta.push(`took ${took.toFixed(1)} s`);
      const result = job.result;
      if (status === "succeeded" && result && typeof result === "object" && result.pages) {
        meta.push(`${result.pages} pages`);
      }
      this.metaEl.textContent = meta.join(" · ");

      const error = describeJobError(job.error);
      this.errorEl.hidden = !error;
      this.errorEl.textContent = error;

      this.renderArtifacts(status, Array.isArray(job.artifacts) ? job.artifacts : []);
    }

    renderArtifacts(status, artifacts) {
      this.artifactsEl.replaceChildren();
      if (status !== "succeeded") return;
      for (const artifact of artifacts) {
        const href = safeUrl(artifact && artifact.url);
        if (!href) continue;
        const name = String(artifact.name || "download");
        const size = formatSize(artifact.size);
        const link = el(
          "a",
          { className: "download", testid: "download", href, download: name },
          `Download ${name}${size ? ` (${size})` : ""}`,
        );
        if (artifact.content_type) link.type = String(artifact.content_type);
        this.artifactsEl.append(link);
      }
      if (!this.artifactsEl.children.length) {
        this.artifactsEl.append(el("span", { className: "muted" }, "No file was stored."));
      }
    }

    notice(text) {
      this.noticeEl.hidden = !text;
      this.noticeEl.textContent = text || "";
    }

    start() {
      if (!TERMINAL.has(this.root.dataset.status)) this.schedule();
      else this.stopped = true;
    }

    schedule() {
      if (!this.stopped) this.timer = window.setTimeout(() => this.poll(), POLL_MS);
    }

    stop() {
      this.stopped = true;
      if (this.timer !== null) window.clearTimeout(this.timer);
      this.timer = null;
    }

    async poll() {
      this.timer = null;
      try {
        const { body } = await requestJSON(this.pollUrl);
        if (this.stopped) return;
        this.failures = 0;
        this.notice("");
        this.render(body);
        if (TERMINAL.has(String(body.status))) {
          this.stop();
          return;
        }
      } catch (err) {
        if (this.stopped) return;
        const retryable = err instanceof ApiError && (err.status === 0 || err.status >= 500 || err.status === 429);
        this.failures += 1;
        if (!retryable || this.failures >= MAX_POLL_FAILURES) {
          this.stop();
          this.root.dataset.status = "unknown";
          this.statusEl.textContent = "Unknown";
          this.statusEl.dataset.status = "unknown";
          this.notice("");
          this.errorEl.hidden = false;
          this.errorEl.textContent = `Stopped watching this job: ${errorText(err)}`;
          return;
        }
        this.notice(`Connection problem, retrying… (${errorText(err)})`);
      }
      this.schedule();
    }
  }

  const views = new Map();

  function showFormError(text) {
    formError.hidden = !text;
    formError.textContent = text || "";
  }

  function parseUserId(raw) {
    const text = raw.trim();
    if (!/^\d+$/.test(text)) return null;
    const value = Number(text);
    return Number.isSafeInteger(value) ? value : null;
  }

  async function submit(event) {
    event.preventDefault();
    const userId = parseUserId(input.value);
    if (userId === null) {
      showFormError("Please enter a user id: a whole number, 0 or more.");
      input.focus();
      return;
    }
    showFormError("");
    button.disabled = true;
    try {
      const { body, response } = await requestJSON(JOBS_URL, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ task: TASK, args: [userId], kwargs: {} }),
      });
      if (body.id === undefined || body.id === null) {
        throw new ApiError(response.status, "bad_response", "The server did not return a job id.");
      }
      const location = response.headers.get("Location");
      const pollUrl =
        (location && safeUrl(location)) || `${JOBS_URL}/${encodeURIComponent(String(body.id))}`;
      const view = new JobView(body, userId, pollUrl);
      views.set(view.id, view);
      list.prepend(view.root);
      updateEmpty();
      view.start();
    } catch (err) {
      showFormError(`Could not start the report: ${errorText(err)}`);
    } finally {
      button.disabled = false;
    }
  }

  function clearFinished() {
    for (const [id, view] of views) {
      if (view.finished) {
        view.root.remove();
        views.delete(id);
      }
    }
    updateEmpty();
  }

  form.addEventListener("submit", submit);
  clearButton.addEventListener("click", clearFinished);
  updateEmpty();
})();
