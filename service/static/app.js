// The clinician page: classify B-scans, show the heatmap, review recent predictions and give feedback.
// Plain browser JavaScript, no build step and no third-party code: it talks to the same API as any client.
"use strict";

const KEY_STORAGE = "kdoct.apiKey";
const PAGE_SIZE = 20;

const state = { classNames: [], cursor: null };

const $ = (id) => document.getElementById(id);

function el(tag, attributes = {}, ...children) {
  // Builds nodes with textContent only: nothing from the API or a file name is ever parsed as HTML.
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

const percent = (value) => `${(100 * value).toFixed(1)} %`;

// ---------------------------------------------------------------- API key and requests

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function showKeyStatus() {
  $("key-status").textContent = apiKey()
    ? "A key is set for this browser tab."
    : "No key set: enter your API key to use the service.";
}

class ApiError extends Error {
  constructor(status, problem) {
    const title = problem.title || `HTTP ${status}`;
    super(problem.detail ? `${title}: ${problem.detail}` : title);
    this.status = status;
    this.problem = problem;
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = apiKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  headers.set("Accept", "application/json, application/problem+json");
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (error) {
    throw new ApiError(0, { title: "The service cannot be reached", detail: String(error.message || error) });
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const problem = body && typeof body === "object" ? body : { detail: text.slice(0, 300) };
    if (response.status === 401 && !problem.detail) problem.detail = "enter a valid API key above";
    throw new ApiError(response.status, problem);
  }
  return body;
}

function showError(context, error) {
  const box = $("errors");
  const message = error instanceof ApiError ? error.message : String(error);
  const hint = error instanceof ApiError && error.status === 401 ? " Check the API key above." : "";
  box.append(el("p", { className: "error", text: `${context}: ${message}${hint}` }));
}

// ---------------------------------------------------------------- classification results

function probabilityBars(probabilities, label) {
  const list = el("ul", { className: "bars", "aria-label": "Probabilities" });
  const entries = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
  for (const [name, value] of entries) {
    const bar = el("span", { className: "bar-fill" });
    bar.style.width = `${Math.max(0, Math.min(100, 100 * value))}%`;
    list.append(
      el(
        "li",
        { className: name === label ? "bar top" : "bar" },
        el("span", { className: "bar-name", text: name }),
        el(
          "span",
          { className: "bar-track", role: "meter", "aria-valuemin": 0, "aria-valuemax": 100,
            "aria-valuenow": (100 * value).toFixed(1), "aria-label": `${name} probability` },
          bar,
        ),
        el("span", { className: "bar-value", text: percent(value) }),
      ),
    );
  }
  return list;
}

function referBadge(refer) {
  return refer
    ? el("span", { className: "badge refer", text: "Refer: review needed" })
    : el("span", { className: "badge ok", text: "No referral flag" });
}

// The safety gate's reasons (docs/API.md), in words a clinician reads at a glance.
const GATE_REASONS = {
  "quality:blank": "the image is blank",
  "quality:colour": "the image is in colour (a B-scan is grayscale)",
  "quality:saturated": "too much of the image is saturated",
  "quality:low_signal": "the signal is too weak (image too dark)",
  "quality:overexposed": "the image is too bright",
  "quality:low_contrast": "the contrast is too low",
  "quality:noise": "the image is mostly noise",
  "quality:geometry": "its shape is not that of the B-scans the model knows",
  "quality:not_oct_like": "it does not look like an OCT B-scan",
  out_of_distribution: "it is unlike the B-scans the model was trained on",
};

function gateReason(reason) {
  return GATE_REASONS[reason] || reason || "unknown reason";
}

function gateBanner(result) {
  if (result.gradable !== false) return null;
  return el(
    "div",
    { className: "ungradable", role: "alert", "data-testid": "ungradable" },
    el("strong", { text: "Cannot grade this image" }),
    ` — ${gateReason(result.reason)}. Refer for human review; the probabilities below are not a diagnosis.`,
  );
}

function secondOpinionBlock(opinion) {
  if (!opinion) return el("p", { className: "muted", text: "Second opinion: not run." });
  const verdict = opinion.agrees ? "agrees" : "disagrees";
  const block = el(
    "div",
    { className: `second-opinion ${verdict}` },
    el("h4", { text: "Second opinion (teacher model)" }),
    el("p", {}, el("strong", { text: opinion.label }), ` — ${verdict} with the student.`),
  );
  if (opinion.probabilities) block.append(probabilityBars(opinion.probabilities, opinion.label));
  return block;
}

function heatmapFigure(explanation, who) {
  const frame = explanation.frame_index !== undefined && explanation.frame_index !== null
    ? `, frame ${explanation.frame_index}` : "";
  const caption = `Grad-CAM heatmap (${who}) for "${explanation.class_name}"${frame}: `
    + "warm colours mark the regions that raised this class's score.";
  return el(
    "figure",
    { className: "heatmap" },
    el("img", {
      src: `data:image/png;base64,${explanation.overlay_png_base64}`,
      alt: `Heatmap over the B-scan for class ${explanation.class_name}${frame}`,
      "data-testid": "heatmap",
    }),
    el("figcaption", { text: caption }),
  );
}

function framesTable(frames) {
  const body = el("tbody");
  for (const frame of frames) {
    body.append(
      el(
        "tr",
        {},
        el("td", { text: String(frame.frame_index ?? "") }),
        el("td", { text: frame.label }),
        el("td", { text: percent(frame.confidence) }),
        el("td", { text: frame.refer ? "yes" : "no" }),
        el("td", { text: frame.gradable === false ? `no: ${gateReason(frame.reason)}` : "yes" }),
      ),
    );
  }
  return el(
    "details",
    { className: "frames" },
    el("summary", { text: `Per-frame results (${frames.length} frames)` }),
    el(
      "table",
      {},
      el("thead", {}, el("tr", {},
        el("th", { scope: "col", text: "Frame" }), el("th", { scope: "col", text: "Label" }),
        el("th", { scope: "col", text: "Confidence" }), el("th", { scope: "col", text: "Refer" }),
        el("th", { scope: "col", text: "Gradable" }))),
      body,
    ),
  );
}

function resultCard(fileName, result, preview) {
  if (result.probabilities) state.classNames = state.classNames.length ? state.classNames : Object.keys(result.probabilities);
  const model = result.model ? `${result.model.name} ${result.model.version}` : "";
  const card = el(
    "article",
    {
      className: "result",
      "data-testid": "result",
      "data-prediction-id": result.prediction_id,
      "aria-label": `Result for ${fileName}`,
    },
    el("h3", { className: "result-file", text: fileName }),
    el(
      "div",
      { className: "result-head" },
      el("p", { className: "result-label" }, "Label: ", el("strong", { "data-testid": "label", text: result.label })),
      el("p", { className: "result-confidence", text: `Calibrated confidence ${percent(result.confidence)}` }),
      referBadge(result.refer),
    ),
  );
  const banner = gateBanner(result);
  if (banner) card.append(banner);
  const columns = el("div", { className: "result-body" });
  const facts = el("div", { className: "result-facts" }, probabilityBars(result.probabilities, result.label));
  facts.append(secondOpinionBlock(result.second_opinion));
  if (result.frames && result.frames.length) facts.append(framesTable(result.frames));
  facts.append(
    el("p", { className: "muted small" },
      `Model ${model}. Prediction ${result.prediction_id || ""}.`,
      result.timing_ms ? ` ${Math.round(result.timing_ms.total)} ms.` : ""),
  );
  columns.append(facts);
  // Heatmaps side by side in their own column: the student's, then the teacher's when it ran.
  const figures = el("div", { className: "figures" });
  if (result.explanation) figures.append(heatmapFigure(result.explanation, "student"));
  else if (preview) figures.append(preview);
  const teacherExplanation = result.second_opinion && result.second_opinion.explanation;
  if (teacherExplanation) figures.append(heatmapFigure(teacherExplanation, "teacher"));
  if (figures.children.length) columns.append(figures);
  card.append(columns);
  return card;
}

function previewFigure(file) {
  // Without a heatmap, still show the scan when the browser can draw it (not TIFF or DICOM).
  if (!["image/png", "image/jpeg", "image/bmp"].includes(file.type)) return null;
  const image = el("img", { src: URL.createObjectURL(file), alt: `The uploaded B-scan ${file.name}` });
  image.addEventListener("load", () => URL.revokeObjectURL(image.src), { once: true });
  return el("figure", { className: "heatmap" }, image, el("figcaption", { text: "Uploaded B-scan." }));
}

async function classifyFile(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  const query = new URLSearchParams();
  if ($("explain").checked) query.set("explain", "true");
  const opinion = $("second-opinion").value;
  if (opinion) query.set("second_opinion", opinion);
  const suffix = query.toString() ? `?${query}` : "";
  return api(`classify${suffix}`, { method: "POST", body: form });
}

async function classifyFiles(files) {
  if (!files.length) return;
  const results = $("results");
  $("errors").replaceChildren();
  results.replaceChildren();
  results.setAttribute("aria-busy", "true");
  const progress = el("p", { className: "status", role: "status" });
  results.append(progress);
  let done = 0;
  for (const file of files) {
    progress.textContent = `Classifying ${file.name} (${done + 1} of ${files.length})…`;
    try {
      results.append(resultCard(file.name, await classifyFile(file), previewFigure(file)));
    } catch (error) {
      showError(`Could not classify ${file.name}`, error);
    }
    done += 1;
  }
  progress.textContent = `${done} file${done === 1 ? "" : "s"} done.`;
  results.setAttribute("aria-busy", "false");
  loadRecent(true);
}

// ---------------------------------------------------------------- recent predictions and feedback

function predictionItems(page) {
  if (Array.isArray(page)) return page;
  return page.items || page.predictions || page.results || [];
}

function feedbackCell(prediction) {
  const names = state.classNames.length ? state.classNames : Object.keys(prediction.probabilities || {});
  const group = el("div", { className: "feedback", role: "group", "aria-label": "Your label for this prediction" });
  const status = el("span", { className: "feedback-status", role: "status" });
  for (const name of names) {
    const button = el("button", { type: "button", className: "small-button", "data-label": name, text: name });
    button.addEventListener("click", async () => {
      for (const other of group.querySelectorAll("button")) other.disabled = true;
      status.textContent = "Sending…";
      try {
        await api(`predictions/${encodeURIComponent(prediction.id)}/feedback`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ label: name }),
        });
        status.textContent = `Recorded: ${name}`;
        button.setAttribute("aria-pressed", "true");
      } catch (error) {
        status.textContent = "";
        showError("Feedback was not recorded", error);
      } finally {
        for (const other of group.querySelectorAll("button")) other.disabled = false;
      }
    });
    group.append(button);
  }
  group.append(status);
  return group;
}

function parseUtc(text) {
  // Records are kept in UTC; a time without a zone (SQLite drops it) is UTC, not the browser's zone.
  return new Date(/(Z|[+-]\d\d:?\d\d)$/i.test(text) ? text : `${text}Z`);
}

function predictionRow(prediction) {
  const created = prediction.created_at ? parseUtc(prediction.created_at) : null;
  const model = prediction.model
    ? `${prediction.model.name} ${prediction.model.version}`
    : [prediction.model_name, prediction.model_version].filter(Boolean).join(" ");
  const frame = prediction.frame_index !== undefined && prediction.frame_index !== null
    ? ` (frame ${prediction.frame_index})` : "";
  return el(
    "tr",
    { "data-prediction-id": prediction.id },
    el("td", {}, el("time", { datetime: prediction.created_at || "", text: created ? created.toLocaleString() : "" })),
    el("td", { text: `${prediction.label}${frame}` }),
    el("td", { text: typeof prediction.confidence === "number" ? percent(prediction.confidence) : "" }),
    el("td", { text: prediction.refer ? "yes" : "no" }),
    el("td", { text: model }),
    el("td", {}, feedbackCell(prediction)),
  );
}

async function loadClassNames() {
  try {
    const models = await api("models");
    const list = Array.isArray(models) ? models : models.models || Object.values(models);
    const student = list.find((m) => m && m.role === "student") || list[0];
    if (student && Array.isArray(student.class_names)) state.classNames = student.class_names;
  } catch {
    // Without the read scope the class names come from the predictions themselves.
  }
}

async function loadRecent(fromStart) {
  const status = $("recent-status");
  const body = document.querySelector("#recent-table tbody");
  if (!apiKey()) {
    status.textContent = "Enter an API key to see recent predictions.";
    return;
  }
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (!fromStart && state.cursor) query.set("cursor", state.cursor);
  status.textContent = "Loading…";
  try {
    if (!state.classNames.length) await loadClassNames();
    const page = await api(`predictions?${query}`);
    const items = predictionItems(page || []);
    if (fromStart) body.replaceChildren();
    for (const prediction of items) body.append(predictionRow(prediction));
    state.cursor = (page && (page.next_cursor || page.cursor)) || null;
    $("more").hidden = !state.cursor;
    status.textContent = body.children.length ? `${body.children.length} shown.` : "No predictions yet.";
  } catch (error) {
    status.textContent = "";
    showError("Could not load recent predictions", error);
  }
}

// ---------------------------------------------------------------- wiring

function setUpKeyForm() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    $("api-key").value = "";
    showKeyStatus();
    $("errors").replaceChildren();
    loadRecent(true);
  });
  $("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    showKeyStatus();
    document.querySelector("#recent-table tbody").replaceChildren();
  });
  showKeyStatus();
}

function setUpUpload() {
  const zone = $("drop-zone");
  const input = $("file-input");
  input.addEventListener("change", () => {
    classifyFiles([...input.files]);
    input.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    classifyFiles([...event.dataTransfer.files]);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpKeyForm();
  setUpUpload();
  $("refresh").addEventListener("click", () => loadRecent(true));
  $("more").addEventListener("click", () => loadRecent(false));
  loadRecent(true);
});
