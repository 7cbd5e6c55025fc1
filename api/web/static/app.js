// The web app's only script: uploads with progress, the spec editor, training progress, try-it and batch scoring.
// Every call goes to the API with the session cookie; changes carry the page's CSRF token.
"use strict";
const CSRF = document.querySelector('meta[name="csrf-token"]')?.content || "";
const $ = (sel, root = document) => root.querySelector(sel);

async function call(method, url, body, headers = {}) {
  const opts = { method, headers: { "X-CSRF-Token": CSRF, ...headers }, credentials: "same-origin" };
  if (body !== undefined) {
    if (body instanceof Blob || typeof body === "string") opts.body = body;
    else { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  }
  const r = await fetch(url, opts);
  const type = r.headers.get("content-type") || "";
  const data = type.includes("json") ? await r.json() : await r.text();
  return { ok: r.ok, status: r.status, data, headers: r.headers };
}

function detail(res) {
  const d = res.data && res.data.detail !== undefined ? res.data.detail : res.data;
  if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ");
  return typeof d === "string" ? d : JSON.stringify(d);
}

// PUT or presigned POST with a progress bar; resolves to {status, data}. An interrupted upload rejects.
function send(target, file, bar, status) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(target.method, target.url);
    let body = file;
    if (target.method === "POST") {  // S3: the signed fields first, the file last
      body = new FormData();
      Object.entries(target.fields || {}).forEach(([k, v]) => body.append(k, v));
      body.append("file", file);
    } else {
      xhr.setRequestHeader("Content-Type", "text/csv");
      xhr.setRequestHeader("X-CSRF-Token", CSRF);
    }
    bar.hidden = false; bar.value = 0;
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) { bar.value = Math.round((e.loaded / e.total) * 100); status.textContent = `Uploading… ${bar.value}%`; }
    };
    xhr.onload = () => {
      let data = xhr.responseText;
      try { data = JSON.parse(xhr.responseText); } catch (e) { /* S3 answers XML or nothing */ }
      resolve({ ok: xhr.status >= 200 && xhr.status < 300, status: xhr.status, data });
    };
    xhr.onerror = () => reject(new Error("the upload was interrupted (connection lost); nothing was kept, try again"));
    xhr.onabort = () => reject(new Error("the upload was cancelled; nothing was kept"));
    xhr.send(body);
  });
}

// Checks the file against the form's limit, then asks the form's grant URL where to send it: the grant, or null
// with the reason shown in `status`.
async function grant(form, file, status, body) {
  const fail = (msg) => { status.textContent = msg; status.className = "error"; return null; };
  status.className = "";
  if (!file) return null;
  const max = Number(form.dataset.maxBytes);
  if (file.size > max) return fail(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB, over the limit of ${(max / 1048576).toFixed(0)} MB.`);
  if (file.size === 0) return fail(`${file.name} is empty.`);
  const ask = await call("POST", form.dataset.ask, body);
  return ask.ok ? ask : fail(detail(ask));
}

// ---- new dataset: upload
const uploadForm = $("#upload-form");
if (uploadForm) uploadForm.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("#file").files[0], status = $("#upload-status"), bar = $("#upload-progress");
  const ask = await grant(uploadForm, file, status, { filename: file && file.name, bytes: file && file.size });
  if (!ask) return;
  try {
    let res = await send(ask.data, file, bar, status);
    if (res.ok && ask.data.method === "POST") res = await call("POST", `${uploadForm.dataset.ask}/${ask.data.upload_id}/check`);
    if (!res.ok) { status.textContent = `Not accepted: ${detail(res)}`; status.className = "error"; bar.hidden = true; return; }
    status.textContent = "Uploaded. Reading the columns…";
    window.location.assign(res.data.editor || `${uploadForm.dataset.ask.replace("/api/uploads", "/new")}/${ask.data.upload_id}`);
  } catch (e) { status.textContent = e.message; status.className = "error"; bar.hidden = true; }
});

// ---- new dataset: the spec editor
const specForm = $("#spec-form");
if (specForm) {
  const api = specForm.dataset.api, upload = specForm.dataset.upload, task = $("#task");
  let implied = null;
  $("#target").addEventListener("change", async (ev) => {
    const col = ev.target.value;
    implied = null;
    document.querySelectorAll("fieldset.algorithms").forEach((f) => { f.hidden = true; });
    document.querySelectorAll("tr[data-column]").forEach((tr) => tr.classList.toggle("target", tr.dataset.column === col));
    if (!col) { task.textContent = ""; return; }
    task.textContent = "Checking the target over the whole file…"; task.className = "task";
    const res = await call("GET", `${api}/uploads/${upload}/target?column=${encodeURIComponent(col)}`);
    if (!res.ok) { task.textContent = detail(res); task.className = "task error"; return; }
    implied = res.data;
    task.textContent = `Task: ${res.data.task}. ${res.data.why[0].toUpperCase()}${res.data.why.slice(1)}.`;
    $(`fieldset[data-task="${res.data.task}"]`).hidden = false;
  });
  $("#cancel").addEventListener("click", async () => {
    await call("DELETE", `${api}/uploads/${upload}`);
    window.location.assign(api.replace("/api", "/new"));
  });
  specForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = $("#create-status"), button = $("#create");
    out.hidden = true;
    const fail = (msg) => { out.textContent = msg; out.hidden = false; button.disabled = false; };
    if (!implied) return fail("Choose a target whose values a model can learn (see the message under Target).");
    const columns = {};
    document.querySelectorAll("tr[data-column]").forEach((tr) => {
      const parse = $('select[name="parse"]', tr).value, option = $('input[name="option"]', tr).value.trim();
      columns[tr.dataset.column] = { parse, feature: $('input[name="feature"]', tr).checked,
        unit: parse === "unit" ? option : null, format: parse === "date" ? option : null };
    });
    const algorithms = {};
    for (const box of document.querySelectorAll(`fieldset[data-task="${implied.task}"] input[name="algorithm"]:checked`)) {
      const raw = $(`#grid-${implied.task}-${box.value}`).value;
      try { algorithms[box.value] = JSON.parse(raw); } catch (e) { return fail(`${box.value}: the search space is not JSON: ${e.message}`); }
    }
    button.disabled = true;
    const res = await call("POST", `${api}/datasets`, { upload_id: upload, name: $("#name").value.trim(),
      target: $("#target").value, columns, algorithms });
    if (!res.ok) return fail(detail(res));
    window.location.assign(res.data.url);
  });
}

// ---- a dataset: training progress
const progress = $("#progress");
if (progress) {
  let last = null;
  const fmt = (s) => (s === null || s === undefined ? "" : s < 90 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`);
  async function poll() {
    const res = await call("GET", progress.dataset.url);
    const state = $("#progress-state");
    if (!res.ok) { state.textContent = `Dagster: ${detail(res)}`; setTimeout(poll, 5000); return; }
    const p = res.data, runs = p.runs.map((r) => `<a href="${progress.dataset.dagster}/runs/${r.run_id}">run ${r.run_id.slice(0, 8)}</a> ${r.status.toLowerCase()} for ${fmt(r.seconds)}`);
    state.dataset.state = p.state;
    state.innerHTML = `Training: <strong>${p.state}</strong>${runs.length ? " · " + runs.join(" · ") : ""}`;
    for (const a of p.assets) {
      const tr = progress.querySelector(`tr[data-asset="${a.asset}"]`);
      if (!tr) continue;
      const badge = document.createElement("span");
      badge.className = `badge ${a.state.replace(/ /g, "-")}`; badge.textContent = a.state;
      tr.querySelector(".state").replaceChildren(badge);
      tr.querySelector(".secs").textContent = fmt(a.seconds);
      const d = tr.querySelector(".detail");
      d.textContent = a.detail || ""; d.classList.toggle("error", a.state === "failed");
      if (a.run_id) { const link = document.createElement("a"); link.href = `${progress.dataset.dagster}/runs/${a.run_id}`; link.textContent = " (run)"; d.appendChild(link); }
    }
    // a training just finished: show its results
    if (last && ["training", "queued"].includes(last) && !["training", "queued"].includes(p.state)) window.location.reload();
    last = p.state;
    setTimeout(poll, ["training", "queued"].includes(p.state) ? 2000 : 10000);
  }
  poll();
}

// ---- a dataset: try one row
const tryForm = $("#try-form");
if (tryForm) tryForm.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const row = {};
  tryForm.querySelectorAll("input[data-column]").forEach((i) => { if (i.value.trim() !== "") row[i.dataset.column] = i.value.trim(); });
  const out = $("#try-result");
  out.textContent = "Scoring…";
  const res = await call("POST", tryForm.dataset.url, { rows: [row] });
  if (!res.ok) { out.innerHTML = ""; out.textContent = detail(res); out.className = "error"; return; }
  const r = res.data.results[0];
  out.className = r.status === "scored" ? "result" : "error";
  if (r.status === "scored") {
    const classes = JSON.parse(tryForm.dataset.classes || "[]");  // binary: [negative, positive] by index
    const what = r.label !== null && r.label !== undefined ? r.label
      : classes.length === 2 && (r.prediction === 0 || r.prediction === 1) ? classes[r.prediction] : r.prediction;
    out.textContent = `Prediction: ${typeof what === "number" ? what.toPrecision(6) : what}` +
      (r.probability !== null && r.probability !== undefined ? ` (probability ${r.probability.toFixed(3)})` : "") +
      ` · model version ${r.model_version}`;
    out.dataset.prediction = String(what); out.dataset.version = r.model_version;
  } else {
    out.textContent = `Rejected: ${r.reason}`;
  }
});

// ---- a dataset: score a CSV, download the result
const scoreForm = $("#score-form");
if (scoreForm) scoreForm.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("#score-file").files[0], status = $("#score-status");
  if (!file) return;
  status.className = ""; status.textContent = "Scoring…";
  let res = await call("POST", scoreForm.dataset.url, file, { "Content-Type": "text/csv", Accept: "text/csv" });
  if (res.status === 202) {
    const job = res.headers.get("Location");
    while (res.ok && !["done", "failed"].includes(res.data.status)) {
      status.textContent = `Scoring… ${res.data.rows_done || 0} of ${res.data.rows_total} rows`;
      await new Promise((ok) => setTimeout(ok, 1500));
      res = await call("GET", job);
    }
    if (res.ok && res.data.status === "done") { status.innerHTML = `Done: <a href="${job}/result" download>download the predictions</a>`; return; }
  }
  if (!res.ok || typeof res.data !== "string") { status.className = "error"; status.textContent = detail(res) || res.data.error; return; }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([res.data], { type: "text/csv" }));
  link.download = file.name.replace(/\.csv$/i, "") + "-predictions.csv";
  link.textContent = `download ${link.download}`;
  status.textContent = `Scored ${res.data.trim().split("\n").length - 1} rows: `;
  status.appendChild(link);
});

// ---- a dataset: a new batch
const batchForm = $("#batch-form");
if (batchForm) batchForm.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("#batch-file").files[0], status = $("#batch-status"), bar = $("#batch-progress");
  const ask = await grant(batchForm, file, status, { filename: file && file.name });
  if (!ask) return;
  try {
    const res = await send(ask.data, file, bar, status);
    if (!res.ok) { status.textContent = `Not accepted: ${detail(res)}`; status.className = "error"; return; }
    status.textContent = `${file.name} landed. The new-batch sensor picks it up; the retrain shows above.`;
  } catch (e) { status.textContent = e.message; status.className = "error"; }
  bar.hidden = true;
});
