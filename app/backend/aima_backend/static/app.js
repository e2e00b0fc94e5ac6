// AIMA web page: upload a file, show the job list (refreshed every 2 s) and the health.
// No build step. Every value from the server is inserted as text, never as HTML.
"use strict";

const API = "api";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function summary(job) {
  const r = job.result;
  if (job.status === "failed") return el("span", job.error || "failed");
  if (!r) return el("span", job.error ? "retrying: " + job.error : "", "muted");
  if (r.supported === false) return el("span", "not analysed: " + r.reason, "muted");
  const span = el("span");
  const sw = el("span", null, "swatch");
  const rgb = (r.mean_rgb || [0, 0, 0]).map((v) => Math.round(v));
  sw.style.backgroundColor = "rgb(" + rgb.join(",") + ")";
  span.appendChild(sw);
  span.appendChild(document.createTextNode(
    r.format + " " + r.width + "\u00d7" + r.height +
    ", brightness " + Number(r.brightness).toFixed(2) +
    ", sharpness " + Number(r.sharpness).toFixed(1) + ", pHash "));
  span.appendChild(el("code", r.phash));
  return span;
}

function render(list) {
  const body = document.getElementById("job-rows");
  const rows = [];
  for (const job of list.items) {
    const tr = el("tr");
    tr.dataset.jobId = job.id;
    tr.appendChild(el("td", job.filename, "filename"));
    tr.appendChild(el("td", job.status, "status status-" + job.status));
    tr.appendChild(el("td", job.device || "", "device"));
    const td = el("td", null, "result");
    td.appendChild(summary(job));
    tr.appendChild(td);
    tr.appendChild(el("td", new Date(job.created_at).toLocaleString(), "created"));
    rows.push(tr);
  }
  if (rows.length === 0) {
    const tr = el("tr");
    const td = el("td", "no jobs yet", "muted");
    td.colSpan = 5;
    tr.appendChild(td);
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  document.getElementById("job-total").textContent = "(" + list.total + ")";
}

async function refreshJobs() {
  try {
    const resp = await fetch(API + "/jobs?limit=50", { cache: "no-store" });
    if (resp.ok) render(await resp.json());
  } catch (err) {
    document.getElementById("job-total").textContent = "(unreachable)";
  }
}

async function refreshHealth() {
  const node = document.getElementById("health");
  try {
    const resp = await fetch(API + "/health", { cache: "no-store" });
    const h = await resp.json();
    node.className = "health " + h.status;
    const parts = [h.status];
    if (h.jobs) parts.push(h.jobs.queued + " queued", h.jobs.running + " running");
    if (h.workers !== null) parts.push(h.workers + " worker(s)");
    node.textContent = parts.join(" \u00b7 ");
  } catch (err) {
    node.className = "health degraded";
    node.textContent = "backend unreachable";
  }
}

async function upload(event) {
  event.preventDefault();
  const input = document.getElementById("file");
  const status = document.getElementById("upload-status");
  if (!input.files.length) return;
  const form = new FormData();
  form.append("file", input.files[0]);
  status.textContent = "uploading\u2026";
  try {
    const resp = await fetch(API + "/jobs", { method: "POST", body: form });
    const body = await resp.json();
    status.textContent = resp.ok
      ? "queued as " + body.id
      : "rejected: " + (body.detail || body.error || resp.status);
  } catch (err) {
    status.textContent = "upload failed: " + err;
  }
  input.value = "";
  refreshJobs();
}

document.getElementById("upload-form").addEventListener("submit", upload);
refreshJobs();
refreshHealth();
setInterval(refreshJobs, 2000);
setInterval(refreshHealth, 5000);
