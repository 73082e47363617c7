// The latentd playground: a form over POST /v1/jobs, live progress over the job's
// Server-Sent Events, the images as they finish, and the caller's recent jobs.
// Plain browser JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "latentd.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const GALLERY_PAGE = 12;

const state = {
  models: [],
  follow: null, // {id, controller} of the job the result panel shows live
  shownImages: "", // "<job id>:<image count>" already drawn in the result panel
  resultUrls: [],
  galleryUrls: [],
  galleryCursor: null,
  galleryLoads: 0, // the newest gallery load wins over slower earlier ones
  canceling: null, // id of the job whose cancel was asked and is not through yet
  lastSeed: null,
  maskPainted: false,
};

// --- the API --------------------------------------------------------------------------

function authHeaders(extra = {}) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// fetch with the API key; a non-2xx answer throws its {"error": {...}} message.
async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders(options.headers) });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error.message || message;
    } catch {
      // not the JSON error shape: keep the status line
    }
    if (response.status === 401) message += " (enter your API key at the top)";
    throw new ApiError(response.status, message);
  }
  return response;
}

const apiJson = async (path, options) => (await api(path, options)).json();

// An image as a blob: URL: <img src> cannot send the API key, fetch can.
async function imageUrl(path) {
  return URL.createObjectURL(await (await api(path)).blob());
}

// Server-Sent Events over fetch, so the request carries the Authorization header
// (EventSource cannot send headers). Yields {event, data} until the stream ends.
async function* serverSentEvents(path, signal) {
  const response = await api(path, { signal, headers: { Accept: "text/event-stream" } });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "message";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    // A "\r" at the very end may be the first half of a "\r\n": keep it for the next chunk.
    const lines = buffer.split(/\r\n|\r(?!$)|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (data.length) yield { event, data: data.join("\n") };
        event = "message";
        data = [];
      } else if (!line.startsWith(":")) { // ":" starts a comment (keep-alive pings)
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event = text;
        else if (field === "data") data.push(text);
      }
    }
  }
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Shows the job's events in the result panel until it ends; if the stream drops
// (a restart, a proxy), reads the job and follows again.
async function follow(jobId) {
  state.follow?.controller.abort();
  const controller = new AbortController();
  state.follow = { id: jobId, controller };
  let retryMs = 500;
  while (!controller.signal.aborted) {
    try {
      for await (const { data } of serverSentEvents(`/v1/jobs/${jobId}/events`,
        controller.signal)) {
        const job = JSON.parse(data);
        showJob(job);
        retryMs = 500;
        if (TERMINAL.has(job.status)) return finished(job);
      }
      const job = await apiJson(`/v1/jobs/${jobId}`, { signal: controller.signal });
      showJob(job);
      if (TERMINAL.has(job.status)) return finished(job);
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error instanceof ApiError && error.status < 500 && error.status !== 429) {
        return showError(error);
      }
    }
    await pause(retryMs);
    retryMs = Math.min(retryMs * 2, 8000);
  }
}

function finished(job) {
  if (state.follow?.id === job.id) state.follow = null;
  $("cancel").disabled = true;
  loadGallery(true);
}

// --- the form -------------------------------------------------------------------------

function showError(error) {
  $("error").textContent = error ? String(error.message || error) : "";
}

function selectedModel() {
  return state.models.find((model) => model.name === $("model").value);
}

async function loadModels() {
  state.models = await apiJson("/v1/models");
  const select = $("model");
  const previous = select.value;
  select.replaceChildren(...state.models.map((model) => {
    const option = new Option(model.available ? model.name : `${model.name} (no worker)`,
      model.name);
    option.title = model.description;
    return option;
  }));
  const served = state.models.find((model) => model.available) || state.models[0];
  select.value = state.models.some((model) => model.name === previous) ? previous
    : served?.name ?? "";
  modelChanged();
}

// The model decides the sizes, defaults, schedulers and tasks the form offers.
function modelChanged() {
  const model = selectedModel();
  if (!model) return;
  $("scheduler").replaceChildren(...model.schedulers.map((name) => new Option(name, name)));
  $("scheduler").value = model.default_scheduler;
  $("steps").value = model.default_steps;
  $("guidance").value = model.default_guidance_scale;
  // Each kind of guidance has its own range; a model without guidance takes none.
  $("guidance").min = model.min_guidance_scale ?? 0;
  $("guidance").max = model.max_guidance_scale ?? 30;
  $("guidance").disabled = model.guidance === "none";
  for (const [side, max, fallback] of [["width", model.max_width, model.default_width],
    ["height", model.max_height, model.default_height]]) {
    $(side).max = max;
    $(side).step = model.size_multiple ?? 8;
    $(side).placeholder = String(fallback);
  }
  for (const option of $("task").options) {
    option.disabled = !model.tasks.includes(option.value);
  }
  if ($("task").selectedOptions[0]?.disabled) {
    // A refiner serves image-to-image only: pick the first task the model has.
    $("task").value = [...$("task").options].find((option) => !option.disabled)?.value
      ?? "text-to-image";
  }
  taskChanged();
}

function taskChanged() {
  const task = $("task").value;
  $("image-inputs").hidden = task === "text-to-image";
  $("image-inputs").dataset.task = task;
  // Blank sizes follow the init image; say so where there is one.
  const imageTask = task !== "text-to-image";
  const model = selectedModel();
  if (model) {
    $("width").placeholder = imageTask ? "image" : String(model.default_width);
    $("height").placeholder = imageTask ? "image" : String(model.default_height);
  }
}

// A number field's value, or undefined when blank; the API checks the bounds.
function numberField(id, label) {
  const text = $(id).value.trim();
  if (text === "") return undefined;
  const value = Number(text);
  if (!Number.isFinite(value)) throw new Error(`${label} must be a number`);
  return value;
}

function canvasBase64(canvas) {
  return canvas.toDataURL("image/png").split(",", 2)[1];
}

function requestBody() {
  const model = selectedModel();
  const body = {
    prompt: $("prompt").value,
    task: $("task").value,
    model: model?.name,
    num_images: numberField("num-images", "Images"),
    steps: numberField("steps", "Steps"),
    guidance_scale: $("guidance").disabled ? undefined : numberField("guidance", "Guidance"),
    scheduler: $("scheduler").value || undefined,
    seed: numberField("seed", "Seed"),
    width: numberField("width", "Width"),
    height: numberField("height", "Height"),
  };
  const negative = $("negative-prompt").value.trim();
  if (negative) body.negative_prompt = negative;
  if (body.task !== "text-to-image") {
    if ($("canvas-stack").hidden) throw new Error("choose an input image first");
    body.init_image = canvasBase64($("image-canvas"));
    body.strength = numberField("strength", "Strength");
  }
  if (body.task === "inpaint") {
    if (!state.maskPainted) throw new Error("paint the area to repaint on the image first");
    body.mask_image = maskBase64();
  }
  const metadata = $("metadata").value.trim();
  if (metadata) {
    try {
      body.metadata = JSON.parse(metadata);
    } catch {
      throw new Error("metadata is not valid JSON");
    }
    if (typeof body.metadata !== "object" || Array.isArray(body.metadata) || !body.metadata) {
      throw new Error("metadata must be a JSON object");
    }
  }
  return body;
}

async function generate(event) {
  event.preventDefault();
  showError(null);
  let body;
  try {
    body = requestBody();
  } catch (error) {
    return showError(error);
  }
  $("generate").disabled = true;
  try {
    const job = await apiJson("/v1/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    showJob(job);
    follow(job.id);
  } catch (error) {
    showError(error);
  } finally {
    $("generate").disabled = false;
  }
}

async function cancel() {
  const jobId = $("result").dataset.jobId;
  if (!jobId) return;
  $("cancel").disabled = true;
  try {
    state.canceling = jobId;
    showJob(await apiJson(`/v1/jobs/${jobId}/cancel`, { method: "POST" }));
  } catch (error) {
    showError(error);
  }
}

// --- the result panel -----------------------------------------------------------------

function statusLine(job, canceling) {
  if (job.status === "queued") {
    return job.queue_position == null ? "queued" : `queued (position ${job.queue_position + 1})`;
  }
  if (job.status === "running") return canceling ? "running, canceling…" : "running";
  if (job.error) return `${job.status}: ${job.error.message}`;
  const seconds = job.metrics?.total_seconds;
  return seconds == null ? job.status : `${job.status} in ${seconds.toFixed(1)} s`;
}

function showJob(job) {
  const canceling = state.canceling === job.id && !TERMINAL.has(job.status);
  const result = $("result");
  if (result.dataset.jobId !== job.id) {
    result.dataset.jobId = job.id;
    state.shownImages = "";
    $("images").replaceChildren();
  }
  result.dataset.status = job.status;
  $("job-status").textContent = `${job.id}: ${statusLine(job, canceling)}`;

  const total = job.progress.total_steps || job.request.steps;
  const step = job.status === "succeeded" ? total : job.progress.step;
  $("progress").value = total ? step / total : 0;
  let text = job.status === "queued" ? "waiting for a worker" : `step ${step} of ${total}`;
  if (job.status === "running" && job.progress.eta_seconds != null) {
    text += `, about ${Math.ceil(job.progress.eta_seconds)} s left`;
  }
  $("progress-text").textContent = text;
  $("cancel").disabled = TERMINAL.has(job.status) || canceling;

  const parameters = { request: job.request, warnings: job.warnings, metadata: job.metadata };
  $("parameters").textContent = JSON.stringify(parameters, null, 2);
  $("parameters-box").hidden = false;

  const seed = job.images[0]?.seed ?? job.request.seeds[0];
  if (seed != null) {
    state.lastSeed = seed;
    $("reuse-seed").disabled = false;
    $("reuse-seed").title = `seed ${seed}`;
  }
  showImages(job);
}

async function showImages(job) {
  const key = `${job.id}:${job.images.length}`;
  if (key === state.shownImages) return;
  state.shownImages = key;
  const figures = await Promise.all(job.images.map((image) => imageFigure(job, image)));
  if (state.shownImages !== key) return; // another job was shown meanwhile
  for (const url of state.resultUrls) URL.revokeObjectURL(url);
  state.resultUrls = figures.map((figure) => figure.dataset.url);
  $("images").replaceChildren(...figures);
}

async function imageFigure(job, image) {
  const url = await imageUrl(image.url);
  const figure = document.createElement("figure");
  figure.dataset.url = url;
  figure.dataset.seed = image.seed;
  const img = new Image(image.width, image.height);
  img.src = url;
  img.alt = `${job.request.prompt} (seed ${image.seed})`;
  const caption = document.createElement("figcaption");
  caption.textContent = `seed ${image.seed} · ${image.width}×${image.height} `;
  const reuse = document.createElement("button");
  reuse.type = "button";
  reuse.textContent = "Use seed";
  reuse.addEventListener("click", () => { $("seed").value = image.seed; });
  const download = document.createElement("a");
  download.href = url;
  download.download = `${job.id}-${image.index}.${image.content_type.split("/")[1]}`;
  download.textContent = "Download";
  caption.append(reuse, " ", download);
  figure.append(img, caption);
  return figure;
}

// --- the gallery of recent jobs -------------------------------------------------------

async function loadGallery(reset) {
  const load = ++state.galleryLoads;
  const query = new URLSearchParams({ limit: GALLERY_PAGE });
  if (!reset && state.galleryCursor) query.set("cursor", state.galleryCursor);
  let page;
  try {
    page = await apiJson(`/v1/jobs?${query}`);
  } catch (error) {
    return showError(error);
  }
  const items = await Promise.all(page.jobs.map(galleryItem));
  if (load !== state.galleryLoads) {
    for (const item of items) if (item.dataset.url) URL.revokeObjectURL(item.dataset.url);
    return;
  }
  if (reset) {
    for (const url of state.galleryUrls) URL.revokeObjectURL(url);
    state.galleryUrls = [];
    $("gallery").replaceChildren();
  }
  state.galleryUrls.push(...items.map((item) => item.dataset.url).filter(Boolean));
  $("gallery").append(...items);
  state.galleryCursor = page.next_cursor;
  $("more-gallery").hidden = !page.next_cursor;
}

async function galleryItem(job) {
  const item = document.createElement("li");
  item.dataset.jobId = job.id;
  item.dataset.status = job.status;
  const button = document.createElement("button");
  button.type = "button";
  button.title = `Show ${job.id}`;
  if (job.images.length) {
    try {
      const url = await imageUrl(job.images[0].url);
      item.dataset.url = url;
      const img = new Image(job.images[0].width, job.images[0].height);
      img.src = url;
      img.alt = "";
      button.append(img);
    } catch {
      // deleted or expired meanwhile: list it without a thumbnail
    }
  }
  const prompt = document.createElement("span");
  prompt.className = "prompt";
  prompt.textContent = job.request.prompt || "(no prompt)";
  const status = document.createElement("span");
  status.className = "status";
  status.textContent = `${job.status} · ${new Date(job.created_at).toLocaleString()}`;
  button.append(prompt, status);
  button.addEventListener("click", () => {
    showError(null);
    state.follow?.controller.abort();
    showJob(job);
    if (!TERMINAL.has(job.status)) follow(job.id);
  });
  item.append(button);
  return item;
}

// --- the input image and the mask -----------------------------------------------------

async function imageChosen() {
  const file = $("init-image").files[0];
  if (!file) return;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    return showError(new Error(`${file.name} is not an image this browser can read`));
  }
  showError(null);
  for (const canvas of [$("image-canvas"), $("mask-canvas")]) {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
  }
  $("image-canvas").getContext("2d").drawImage(bitmap, 0, 0);
  bitmap.close();
  clearMask();
  $("canvas-stack").hidden = false;
}

function clearMask() {
  const canvas = $("mask-canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  state.maskPainted = false;
}

// The mask as the API wants it: white where to repaint, black elsewhere.
function maskBase64() {
  const painted = $("mask-canvas");
  const mask = document.createElement("canvas");
  mask.width = painted.width;
  mask.height = painted.height;
  const context = mask.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, mask.width, mask.height);
  context.drawImage(painted, 0, 0);
  return canvasBase64(mask);
}

function setUpMaskPainting() {
  const canvas = $("mask-canvas");
  let last = null;
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    const scale = canvas.width / box.width;
    return { x: (event.clientX - box.left) * scale, y: (event.clientY - box.top) * scale, scale };
  };
  const paint = (event) => {
    const here = point(event);
    const context = canvas.getContext("2d");
    context.strokeStyle = "#fff";
    context.lineCap = "round";
    context.lineJoin = "round";
    context.lineWidth = Number($("brush").value) * here.scale;
    context.beginPath();
    context.moveTo((last || here).x, (last || here).y);
    context.lineTo(here.x, here.y);
    context.stroke();
    last = here;
    state.maskPainted = true;
  };
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    last = null;
    paint(event);
  });
  canvas.addEventListener("pointermove", (event) => { if (last) paint(event); });
  for (const type of ["pointerup", "pointercancel"]) {
    canvas.addEventListener(type, () => { last = null; });
  }
}

// --- start ----------------------------------------------------------------------------

function keyChanged() {
  const key = $("api-key").value.trim();
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
  showError(null);
  start();
}

async function start() {
  try {
    await loadModels();
  } catch (error) {
    showError(error);
  }
  await loadGallery(true);
}

$("api-key").value = localStorage.getItem(KEY_STORAGE) || "";
$("api-key").addEventListener("change", keyChanged);
$("forget-key").addEventListener("click", () => {
  $("api-key").value = "";
  keyChanged();
});
$("model").addEventListener("change", modelChanged);
$("task").addEventListener("change", taskChanged);
$("generate-form").addEventListener("submit", generate);
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    $("generate-form").requestSubmit();
  }
});
$("cancel").addEventListener("click", cancel);
$("reuse-seed").addEventListener("click", () => { $("seed").value = state.lastSeed; });
$("init-image").addEventListener("change", imageChosen);
$("clear-mask").addEventListener("click", clearMask);
$("brush").addEventListener("input", () => { $("brush").title = `${$("brush").value} px`; });
$("refresh-gallery").addEventListener("click", () => loadGallery(true));
$("more-gallery").addEventListener("click", () => loadGallery(false));
setUpMaskPainting();
start();
