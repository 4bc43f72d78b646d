// The report page: follow the job as kvern pushes its changes (Server-Sent Events from the job API, opened with
// the grant the site put in the page), then show the PDF link. Without EventSource, or when the stream cannot be
// kept, it falls back to polling the site's status view.
// Loaded from the static folder (the front door's CSP allows no inline script). No build step.
"use strict";

(() => {
  const POLL_MS = 500;
  // Consecutive failed polls (network errors, 5xx) before the page gives up and says so.
  const MAX_FAILURES = 20;

  const report = document.getElementById("report");
  if (!report || !report.dataset.statusUrl) return;
  const statusUrl = report.dataset.statusUrl;
  const statusEl = document.getElementById("status");
  const progressEl = document.getElementById("progress");
  const pctEl = document.getElementById("pct");
  const messageEl = document.getElementById("message");
  const failedEl = document.getElementById("failed");
  const lostEl = document.getElementById("lost");
  const readyEl = document.getElementById("ready");
  const linkEl = document.getElementById("pdf-link");
  let failures = 0;

  function clamp(value) {
    const n = Number(value);
    return Number.isFinite(n) ? Math.min(100, Math.max(0, Math.round(n))) : 0;
  }

  function render(state) {
    const pct = clamp(state.progress);
    report.dataset.status = String(state.status);
    statusEl.textContent = String(state.status_text || state.status);
    progressEl.value = pct;
    pctEl.textContent = `${pct}%`;
    messageEl.textContent = String(state.message || "");
    failedEl.hidden = !state.failed;
    if (typeof state.pdf_url === "string" && state.pdf_url.startsWith("/")) {
      linkEl.href = state.pdf_url;
      readyEl.hidden = false;
    }
  }

  function giveUp() {
    report.dataset.status = "lost";
    lostEl.hidden = false;
  }

  async function poll({ once = false } = {}) {
    try {
      const response = await fetch(statusUrl, { headers: { Accept: "application/json" }, cache: "no-store" });
      if (response.status === 404) return giveUp();
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const state = await response.json();
      failures = 0;
      render(state);
      if (state.done || once) return;
    } catch (err) {
      failures += 1;
      if (failures >= MAX_FAILURES) return giveUp();
    }
    window.setTimeout(poll, POLL_MS);
  }

  // A pushed event carries the job API's view: progress and its message are shown as they come; a new status or
  // the end asks the site once for its wording and the PDF link.
  function follow(eventsUrl) {
    const stream = new EventSource(eventsUrl);
    report.dataset.following = "events";
    const refresh = () => poll({ once: true });
    stream.addEventListener("status", refresh);
    stream.addEventListener("progress", (event) => {
      const job = JSON.parse(event.data);
      const pct = clamp(job.progress);
      progressEl.value = pct;
      pctEl.textContent = `${pct}%`;
      messageEl.textContent = String(job.progress_message || "");
    });
    const stop = () => {
      stream.close();
      refresh();
    };
    stream.addEventListener("end", stop);
    stream.addEventListener("gone", stop);
    stream.onerror = () => {
      // The browser reconnects by itself (with Last-Event-ID); a stream it gave up on is replaced by polling.
      if (stream.readyState === EventSource.CLOSED) {
        report.dataset.following = "polling";
        window.setTimeout(poll, POLL_MS);
      }
    };
  }

  const finished = new Set(["succeeded", "failed", "dead", "cancelled"]);
  if (finished.has(report.dataset.status)) return;
  if (report.dataset.eventsUrl && "EventSource" in window) follow(report.dataset.eventsUrl);
  else window.setTimeout(poll, POLL_MS);
})();
