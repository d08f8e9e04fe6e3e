/* pixgen studio: the page of `pixgen serve`. Plain DOM, no dependencies.
   Everything that comes from a user or a job is inserted with textContent / setAttribute, never as HTML. */
"use strict";

(function () {
  const API = "/api/v1";
  const ACTIVE = new Set(["queued", "running"]);
  const FINAL = new Set(["done", "failed", "cancelled"]);
  const PAGE = 48;              // gallery jobs per page
  const POLL_MS = 3000;         // gallery refresh while a job is queued or running
  const FILTER_DELAY_MS = 250;  // debounce of the filter box

  const state = {
    presets: [],
    current: null,        // the job in the live and recipe panels
    source: null,         // its EventSource
    resyncTimer: null,
    login: null,          // a promise while the token form waits
    loginResolve: null,
    limit: PAGE,
    query: "",
    galleryJobs: [],
    gallerySeq: 0,
    galleryTimer: null,
    galleryError: null,   // the error a failed gallery refresh showed, cleared when one works again
    filterTimer: null,
    submitting: false,
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function oneLine(text) {
    return String(text === undefined || text === null ? "" : text).replace(/\s+/g, " ").trim();
  }

  /* Only URLs of this server (or inline previews) go into src / href. */
  function safeUrl(url) {
    if (typeof url !== "string") return null;
    if (url.startsWith("/") && !url.startsWith("//")) return url;
    if (/^data:image\/(png|jpeg|webp|gif);base64,/i.test(url)) return url;
    return null;
  }

  function withDownload(url) {
    return url + (url.includes("?") ? "&" : "?") + "download=1";
  }

  function showError(message) {
    const box = $("error");
    box.textContent = oneLine(message);
    box.hidden = !box.textContent;
    if (box.textContent) showNote("");
  }

  function showNote(message) {
    const box = $("note");
    box.textContent = oneLine(message);
    box.hidden = !box.textContent;
  }

  /* ------------------------------------------------------------------ API */

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  function detailOf(data, response) {
    const detail = data && data.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {  // a framework validation error: [{loc, msg}, ...]
      return detail.map((d) => {
        const where = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "body").join(".") : "";
        return (where ? where + ": " : "") + (d.msg || JSON.stringify(d));
      }).join("; ");
    }
    if (detail) return JSON.stringify(detail);
    return response.status + " " + (response.statusText || "error");
  }

  async function api(method, path, body) {
    for (let attempt = 0; ; attempt++) {
      const init = {method: method, credentials: "same-origin", headers: {"Accept": "application/json"}};
      if (body instanceof FormData) {
        init.body = body;
      } else if (body !== undefined) {
        init.body = JSON.stringify(body);
        init.headers["Content-Type"] = "application/json";
      }
      let response;
      try {
        response = await fetch(API + path, init);
      } catch (err) {
        throw new ApiError(0, "The server cannot be reached (" + oneLine(err && err.message) + ")");
      }
      if (response.status === 401 && attempt < 3) {
        await askToken();
        continue;
      }
      const text = await response.text();
      let data = null;
      if (text) {
        try { data = JSON.parse(text); } catch (err) { data = null; }
      }
      if (!response.ok) throw new ApiError(response.status, oneLine(detailOf(data, response)));
      return data;
    }
  }

  /* ---------------------------------------------------------------- token */

  function askToken() {
    if (!state.login) {
      state.login = new Promise((resolve) => { state.loginResolve = resolve; });
      $("token-form").hidden = false;
      $("token-error").textContent = "";
      $("token").focus();
    }
    return state.login;
  }

  async function submitToken(event) {
    event.preventDefault();
    const token = $("token").value.trim();
    const problem = $("token-error");
    if (!token) {
      problem.textContent = "Paste the token first.";
      return;
    }
    let response;
    try {
      response = await fetch(API + "/login", {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "Accept": "application/json"},
        body: JSON.stringify({token: token}),
      });
    } catch (err) {
      problem.textContent = "The server cannot be reached.";
      return;
    }
    if (!response.ok) {
      let data = null;
      try { data = await response.json(); } catch (err) { data = null; }
      problem.textContent = response.status === 401 ? "That token is not right." : oneLine(detailOf(data, response));
      $("token").select();
      return;
    }
    $("token").value = "";
    $("token-form").hidden = true;
    const resolve = state.loginResolve;
    state.login = null;
    state.loginResolve = null;
    if (resolve) resolve();
    if (state.current && ACTIVE.has(state.current.status)) openStream(state.current.id);
    $("prompt").focus();
  }

  function stripTokenFromAddress() {
    const url = new URL(window.location.href);
    if (!url.searchParams.has("token")) return;
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
  }

  /* -------------------------------------------------------------- presets */

  function presetSettings() {
    const name = $("preset").value;
    const preset = state.presets.find((p) => p.name === name);
    return (preset && preset.settings && typeof preset.settings === "object") ? preset.settings : {};
  }

  function presetSize(settings) {
    const size = settings.size;
    if (Array.isArray(size) && size.length === 2) return [size[0], size[1]];
    if (typeof size === "number") return [size, size];
    return [null, null];
  }

  function describePreset() {
    const settings = presetSettings();
    const [w, h] = presetSize(settings);
    const parts = [];
    if (w && h) parts.push(w + "×" + h);
    if (settings.steps) parts.push(settings.steps + " steps");
    if (settings.vqgan) parts.push(String(settings.vqgan));
    const summary = parts.join(", ");
    const description = settings.description ? oneLine(settings.description) : "";
    $("preset-info").textContent = [description, summary].filter(Boolean).join(" · ");
    $("size-w").setAttribute("placeholder", w ? String(w) : "");
    $("size-h").setAttribute("placeholder", h ? String(h) : "");
    $("steps").setAttribute("placeholder", settings.steps ? String(settings.steps) : "");
  }

  async function loadInfo() {
    let info;
    try {
      info = await api("GET", "/info");
    } catch (err) {
      showError(err.message);
      return;
    }
    const presets = Array.isArray(info && info.presets) ? info.presets.filter((p) => p && p.name) : [];
    state.presets = presets;
    const select = $("preset");
    const previous = select.value;
    select.textContent = "";
    for (const preset of presets) {
      const option = el("option", null, preset.name);
      option.value = String(preset.name);
      select.appendChild(option);
    }
    const defaults = (info && info.defaults) || {};
    const wanted = previous || [info && info.default_preset, defaults.preset, "default"]
      .find((name) => typeof name === "string" && presets.some((p) => p.name === name));
    if (presets.some((p) => p.name === wanted)) select.value = wanted;
    describePreset();
    const limits = (info && info.limits) || {};
    if (Number.isInteger(limits.max_side)) {
      $("size-w").setAttribute("max", String(limits.max_side));
      $("size-h").setAttribute("max", String(limits.max_side));
    }
    if (Number.isInteger(limits.max_steps)) {
      $("steps").setAttribute("max", String(limits.max_steps));
      $("continue-steps").setAttribute("max", String(limits.max_steps));
    }
    const bits = [];
    if (info && info.version) bits.push("pixgen " + info.version);
    if (info && Array.isArray(info.workers)) {
      bits.push(info.workers.length + (info.workers.length === 1 ? " worker" : " workers"));
    }
    $("server-info").textContent = bits.join(" · ");
  }

  /* --------------------------------------------------------------- submit */

  function readInt(id, label, min) {
    const raw = $(id).value.trim();
    if (!raw) return null;
    const value = Number(raw);
    if (!/^\d+$/.test(raw) || !Number.isSafeInteger(value) || value < min) {
      throw new Error(label + " must be a whole number of at least " + min + ".");
    }
    return value;
  }

  /* Zoom and rotate: a number, or keyframes text the server parses. */
  function readNumberOrText(id) {
    const raw = $(id).value.trim();
    if (!raw) return null;
    return /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(raw) ? Number(raw) : raw;
  }

  function buildRequest() {
    const prompt = $("prompt").value.trim();
    const settings = {};
    const width = readInt("size-w", "Width", 1);
    const height = readInt("size-h", "Height", 1);
    if (width !== null || height !== null) {
      const [pw, ph] = presetSize(presetSettings());
      settings.size = [width !== null ? width : (pw || height), height !== null ? height : (ph || width)];
    }
    const steps = readInt("steps", "Steps", 1);
    if (steps !== null) settings.steps = steps;
    const seed = readInt("seed", "Seed", 0);
    if (seed !== null) settings.seed = seed;
    const negative = $("negative").value.trim();
    if (negative) settings.negative_prompts = [negative];

    const frames = readInt("frames", "Frames", 1);
    const perFrame = readInt("steps-per-frame", "Steps per frame", 0);
    const zoom = readNumberOrText("zoom");
    const rotate = readNumberOrText("rotate");
    const pan = $("pan").value.trim();
    const story = $("story").value.trim();
    let animation = null;
    if (frames !== null) {
      animation = {frames: frames};
      if (perFrame !== null) animation.steps_per_frame = perFrame;
      if (zoom !== null) animation.zoom = zoom;
      if (rotate !== null) animation.rotate = rotate;
      if (pan) animation.pan = pan;
      if (story) animation.schedule = story;
    } else if (perFrame !== null || zoom !== null || rotate !== null || pan || story) {
      $("animation").open = true;
      throw new Error("Animation: fill in Frames too (or clear the animation fields).");
    }
    if (!prompt && !(animation && story)) throw new Error("Write a prompt first.");

    const request = {prompt: prompt, settings: settings, animation: animation};
    if ($("preset").value) request.preset = $("preset").value;
    return request;
  }

  async function upload(file, what) {
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      return await api("POST", "/uploads", form);
    } catch (err) {
      throw new Error(what + ": " + err.message);
    }
  }

  function setSubmitting(on) {
    state.submitting = on;
    const button = $("submit");
    button.disabled = on;
    button.textContent = on ? "Submitting…" : "Generate";
  }

  async function submitJob(event) {
    if (event) event.preventDefault();
    if (state.submitting) return;
    showError("");
    let request;
    try {
      request = buildRequest();
    } catch (err) {
      showError(err.message);
      return;
    }
    setSubmitting(true);
    try {
      const initFile = $("init-file").files[0];
      if (initFile) {
        const uploaded = await upload(initFile, "Start image");
        request.settings.init_image = uploaded.id;
        request.settings.init = "image";
      }
      const promptFile = $("image-prompt-file").files[0];
      if (promptFile) {
        const uploaded = await upload(promptFile, "Image prompt");
        request.settings.image_prompts = [uploaded.id];
      }
      const job = await api("POST", "/jobs", request);
      selectJob(job, true);
      refreshGallery();
    } catch (err) {
      showError(err.message);
    } finally {
      setSubmitting(false);
    }
  }

  /* ----------------------------------------------------------- live panel */

  function closeStream() {
    if (state.source) state.source.close();
    state.source = null;
    clearTimeout(state.resyncTimer);
  }

  function parseJson(text) {
    try { return JSON.parse(text); } catch (err) { return null; }
  }

  function openStream(id) {
    closeStream();
    const source = new EventSource(API + "/jobs/" + encodeURIComponent(id) + "/events");
    state.source = source;
    source.addEventListener("progress", (event) => {
      if (state.source !== source || !state.current || state.current.id !== id) return;
      const progress = parseJson(event.data);
      if (progress) applyProgress(progress);
    });
    source.addEventListener("status", (event) => {
      if (state.source !== source) return;
      const job = parseJson(event.data);
      if (job && job.id === id) updateCurrent(job);
    });
    source.addEventListener("error", () => {
      if (state.source !== source) return;
      // The stream dropped (server restarted, a 401, the network): ask the job itself, then go on.
      clearTimeout(state.resyncTimer);
      state.resyncTimer = setTimeout(() => resync(id), source.readyState === EventSource.CLOSED ? 0 : 1000);
    });
  }

  async function resync(id) {
    let job;
    try {
      job = await api("GET", "/jobs/" + encodeURIComponent(id));
    } catch (err) {
      return;
    }
    if (!state.current || state.current.id !== id) return;
    updateCurrent(job);
    if (ACTIVE.has(job.status) && state.source && state.source.readyState === EventSource.CLOSED) openStream(id);
  }

  function updateCurrent(job) {
    const before = state.current;
    state.current = job;
    renderLive(job, false);
    renderRecipe(job);
    if (FINAL.has(job.status)) closeStream();
    if (!before || before.status !== job.status) refreshGallery();
  }

  function selectJob(job, scroll) {
    if (!state.current || state.current.id !== job.id) showNote("");
    closeStream();
    state.current = job;
    renderLive(job, true);
    renderRecipe(job);
    markSelected();
    const url = new URL(window.location.href);
    url.hash = "job=" + encodeURIComponent(job.id);
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
    if (ACTIVE.has(job.status)) openStream(job.id);
    if (scroll && window.matchMedia("(max-width: 899px)").matches) {
      $("live").scrollIntoView({block: "start", behavior: "smooth"});
    }
  }

  function setPreview(url) {
    const safe = safeUrl(url);
    if (!safe) return;
    const img = $("preview");
    if (img.getAttribute("src") !== safe) img.setAttribute("src", safe);
  }

  function clearPreview() {
    const img = $("preview");
    img.removeAttribute("src");
    $("preview-frame").classList.add("empty");
  }

  function progressText(progress) {
    const parts = [];
    if (progress.frames) {  // frame: how many frames are done; the one under way is the next
      parts.push("frame " + Math.min((progress.frame || 0) + 1, progress.frames) + " / " + progress.frames);
    }
    if (progress.total) parts.push("step " + (progress.step || 0) + " / " + progress.total);
    if (typeof progress.loss === "number") parts.push("loss " + progress.loss.toFixed(3));
    return parts.join(" · ");
  }

  function applyProgress(progress) {
    const bar = $("progress");
    const total = Number(progress.total) || 0;
    if (total > 0) {
      bar.max = total;
      bar.value = Math.min(Number(progress.step) || 0, total);
    }
    $("progress-text").textContent = progressText(progress);
    if (state.current && state.current.status !== "done" && progress.preview) setPreview(progress.preview);
  }

  function finalImage(job) {
    const files = job.files || {};
    return safeUrl(files.image) || safeUrl(files.gif);
  }

  function renderLive(job, fresh) {
    $("live-empty").hidden = true;
    $("live-body").hidden = false;
    $("live-prompt").textContent = job.prompt || job.name || job.id;
    const status = $("status");
    status.textContent = job.status;
    status.setAttribute("data-status", String(job.status));

    const bar = $("progress");
    const progress = job.progress;
    if (job.status === "done") {
      const total = (progress && progress.total) || 1;
      bar.max = total;
      bar.value = total;
      $("progress-text").textContent = progress ? progressText(Object.assign({}, progress, {step: total})) : "finished";
    } else if (progress && progress.total) {
      applyProgress(Object.assign({}, progress, {preview: null}));
    } else if (job.status === "queued") {
      bar.removeAttribute("value");  // indeterminate while waiting for a worker
      $("progress-text").textContent = "waiting for a worker";
    } else if (fresh) {
      bar.max = 1;
      bar.value = 0;
      $("progress-text").textContent = "";
    }

    const problem = $("job-error");
    problem.textContent = job.status === "failed" ? oneLine(job.error || "failed") : "";
    problem.hidden = !problem.textContent;

    const image = job.status === "done" ? finalImage(job) : null;
    if (image) {
      setPreview(image);
      $("preview").setAttribute("alt", "Result: " + (job.prompt || job.name || ""));
    } else {
      $("preview").setAttribute("alt", "Preview: " + (job.prompt || job.name || ""));
      if (fresh) {
        clearPreview();
        // The latest saved preview of a job already under way, cancelled or failed (204: none yet).
        if (job.status !== "queued") setPreview(API + "/jobs/" + encodeURIComponent(job.id) + "/preview");
      }
    }

    const cancel = $("cancel");
    cancel.hidden = !ACTIVE.has(job.status);
    cancel.disabled = Boolean(job.cancel_requested);
    cancel.textContent = job.cancel_requested ? "Cancelling…" : "Cancel";
    $("resume").hidden = !(job.status === "cancelled" || job.status === "failed");
  }

  async function jobAction(button, path, body, opensNew) {
    const job = state.current;
    if (!job) return;
    showError("");
    button.disabled = true;
    try {
      const answer = await api("POST", "/jobs/" + encodeURIComponent(job.id) + path, body);
      if (!opensNew && (!state.current || state.current.id !== job.id)) {  // another job was picked meanwhile
        refreshGallery();
        return;
      }
      if (opensNew && answer && answer.id === job.id) {
        showNote("Same settings and seed: that is this job, already here (Vary seed makes a new one).");
      }
      if (opensNew || (answer && answer.id !== job.id)) {
        selectJob(answer, true);
      } else if (answer) {
        updateCurrent(answer);
        if (ACTIVE.has(answer.status) && !state.source) openStream(answer.id);  // resumed: follow it again
      }
      refreshGallery();
    } catch (err) {
      showError(err.message);
    } finally {
      button.disabled = false;
      if (state.current) {
        renderLive(state.current, false);
        renderRecipe(state.current);
      }
    }
  }

  /* --------------------------------------------------------------- recipe */

  function formatValue(value) {
    if (value === null || value === undefined) return "—";
    if (Array.isArray(value) && value.every((v) => typeof v === "number") && value.length === 2) {
      return value[0] + " × " + value[1];
    }
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function jobSeed(job) {
    if (job.seed !== undefined && job.seed !== null) return job.seed;
    return job.parameters ? job.parameters.seed : null;
  }

  function renderRecipe(job) {
    $("recipe-empty").hidden = true;
    $("recipe-body").hidden = false;
    const list = $("recipe-list");
    list.textContent = "";
    const entries = [];
    const parameters = job.parameters && typeof job.parameters === "object" ? job.parameters : null;
    if (parameters && Object.keys(parameters).length) {
      for (const key of Object.keys(parameters)) entries.push([key, parameters[key]]);
    } else {
      entries.push(["prompt", job.prompt], ["preset", job.preset], ["seed", job.seed],
                   ["steps", job.steps], ["size", job.size]);
    }
    if (job.animation && typeof job.animation === "object" && !(parameters && "animation" in parameters)) {
      for (const key of Object.keys(job.animation)) entries.push(["animation." + key, job.animation[key]]);
    }
    if (job.parent) entries.push(["parent", job.parent]);
    for (const [key, value] of entries) {
      const row = el("div", "kv");
      row.appendChild(el("dt", null, key));
      row.appendChild(el("dd", null, formatValue(value)));
      list.appendChild(row);
    }

    $("continue").disabled = job.status !== "done";
    $("continue-steps").disabled = job.status !== "done";
    const files = job.files || {};
    const links = [["download-png", files.image], ["download-gif", files.gif], ["download-mp4", files.video]];
    for (const [id, url] of links) {
      const link = $(id);
      const safe = safeUrl(url);
      link.hidden = !safe;
      if (safe) {
        link.setAttribute("href", withDownload(safe));
        link.setAttribute("download", "");
      } else {
        link.removeAttribute("href");
      }
    }
  }

  /* -------------------------------------------------------------- gallery */

  function cardSignature(job) {
    const p = job.progress || {};
    return JSON.stringify([job.status, job.prompt, job.name, (job.files || {}).image, job.cancel_requested,
                           p.step, p.frame]);
  }

  function fillCard(button, job) {
    button.textContent = "";
    const thumb = el("span", "thumb");
    const image = job.status === "done" ? finalImage(job) : null;
    if (image) {
      const img = document.createElement("img");
      img.setAttribute("src", image);
      img.setAttribute("alt", "");
      img.setAttribute("loading", "lazy");
      thumb.appendChild(img);
    } else {
      const p = job.progress;
      let label = job.status;
      if (job.status === "running" && p && p.total) label += " " + Math.floor(100 * (p.step || 0) / p.total) + "%";
      thumb.appendChild(el("span", "thumb-status", label));
    }
    button.appendChild(thumb);
    button.appendChild(el("span", "card-prompt", job.prompt || job.name || job.id));
    const meta = el("span", "card-meta");
    const badge = el("span", "badge", job.status);
    badge.setAttribute("data-status", String(job.status));
    meta.appendChild(badge);
    const seed = jobSeed(job);
    const extra = [];
    if (job.kind === "animation") extra.push("animation");
    if (seed !== null && seed !== undefined) extra.push("seed " + seed);
    if (Array.isArray(job.size)) extra.push(job.size[0] + "×" + job.size[1]);
    if (extra.length) meta.appendChild(el("span", "muted", extra.join(" · ")));
    button.appendChild(meta);
  }

  function buildCard(job) {
    const li = el("li", "card");
    li.setAttribute("data-job", String(job.id));
    const button = el("button", "card-button");
    button.type = "button";
    button.addEventListener("click", () => {
      const latest = state.galleryJobs.find((j) => j.id === li.getAttribute("data-job"));
      if (latest) selectJob(latest, true);
    });
    li.appendChild(button);
    updateCard(li, job);
    return li;
  }

  function updateCard(li, job) {
    const signature = cardSignature(job);
    if (li.getAttribute("data-sig") === signature) return;
    li.setAttribute("data-sig", signature);
    fillCard(li.querySelector("button"), job);
  }

  function markSelected() {
    const id = state.current ? state.current.id : null;
    for (const li of $("gallery").children) {
      const selected = li.getAttribute("data-job") === id;
      li.classList.toggle("selected", selected);
      const button = li.querySelector("button");
      if (selected) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  }

  function renderGallery(jobs, total) {
    const list = $("gallery");
    const focused = document.activeElement && document.activeElement.closest
      ? document.activeElement.closest("#gallery .card") : null;
    const focusedId = focused ? focused.getAttribute("data-job") : null;
    const children = Array.from(list.children);
    const sameOrder = children.length === jobs.length &&
      jobs.every((job, i) => children[i].getAttribute("data-job") === String(job.id));
    if (sameOrder) {
      jobs.forEach((job, i) => updateCard(children[i], job));
    } else {
      const existing = new Map(children.map((li) => [li.getAttribute("data-job"), li]));
      const fragment = document.createDocumentFragment();
      for (const job of jobs) {
        let li = existing.get(String(job.id));
        if (li) updateCard(li, job);
        else li = buildCard(job);
        fragment.appendChild(li);
      }
      list.textContent = "";
      list.appendChild(fragment);
      if (focusedId) {
        const again = Array.from(list.children).find((li) => li.getAttribute("data-job") === focusedId);
        if (again) again.querySelector("button").focus();
      }
    }
    markSelected();
    const count = $("gallery-count");
    const all = typeof total === "number" ? total : jobs.length;
    if (!jobs.length) {
      count.textContent = state.query ? "No job matches “" + state.query + "”."
        : "No jobs yet: write a prompt and press Generate.";
    } else {
      count.textContent = (all > jobs.length ? jobs.length + " of " + all : String(all)) +
        (all === 1 ? " job" : " jobs") + (state.query ? " matching “" + state.query + "”" : "");
    }
    $("more").hidden = !(all > jobs.length);
  }

  async function refreshGallery() {
    const seq = ++state.gallerySeq;
    clearTimeout(state.galleryTimer);
    const params = new URLSearchParams();
    params.set("limit", String(state.limit));
    if (state.query) params.set("q", state.query);
    let data;
    try {
      data = await api("GET", "/jobs?" + params.toString());
    } catch (err) {
      if (seq === state.gallerySeq) {
        showError(err.message);
        state.galleryError = $("error").textContent;
        state.galleryTimer = setTimeout(refreshGallery, POLL_MS * 3);
      }
      return;
    }
    if (seq !== state.gallerySeq) return;  // a newer refresh was asked for meanwhile
    if (state.galleryError && $("error").textContent === state.galleryError) showError("");  // back again
    state.galleryError = null;
    const jobs = Array.isArray(data && data.jobs) ? data.jobs.filter((j) => j && j.id) : [];
    state.galleryJobs = jobs;
    renderGallery(jobs, data && data.total);
    const busy = jobs.some((j) => ACTIVE.has(j.status)) || (state.current && ACTIVE.has(state.current.status));
    if (busy) state.galleryTimer = setTimeout(refreshGallery, POLL_MS);
  }

  function onFilterInput() {
    clearTimeout(state.filterTimer);
    state.filterTimer = setTimeout(() => {
      const query = $("filter").value.trim();
      if (query === state.query) return;
      state.query = query;
      state.limit = PAGE;
      refreshGallery();
    }, FILTER_DELAY_MS);
  }

  /* ----------------------------------------------------------------- boot */

  async function openJobFromAddress() {
    const match = /^#job=(.+)$/.exec(window.location.hash);
    if (!match) return;
    try {
      selectJob(await api("GET", "/jobs/" + encodeURIComponent(decodeURIComponent(match[1]))), false);
    } catch (err) {
      history.replaceState(history.state, "", window.location.pathname + window.location.search);
    }
  }

  function wire() {
    $("job-form").addEventListener("submit", submitJob);
    $("job-form").addEventListener("reset", () => {
      showError("");
      setTimeout(describePreset, 0);
    });
    $("prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        submitJob();
      }
    });
    $("story").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        submitJob();
      }
    });
    $("preset").addEventListener("change", describePreset);
    $("token-form").addEventListener("submit", submitToken);
    $("filter").addEventListener("input", onFilterInput);
    $("more").addEventListener("click", () => {
      state.limit += PAGE;
      refreshGallery();
    });

    const preview = $("preview");
    preview.addEventListener("load", () => $("preview-frame").classList.remove("empty"));
    preview.addEventListener("error", () => {
      preview.removeAttribute("src");
      $("preview-frame").classList.add("empty");
    });

    $("cancel").addEventListener("click", (e) => jobAction(e.currentTarget, "/cancel", undefined, false));
    $("resume").addEventListener("click", (e) => jobAction(e.currentTarget, "/resume", undefined, false));
    $("rerun").addEventListener("click", (e) => {
      if (state.current) jobAction(e.currentTarget, "/rerun", {seed: jobSeed(state.current)}, true);
    });
    $("vary").addEventListener("click", (e) => jobAction(e.currentTarget, "/rerun", {seed: null}, true));
    $("continue").addEventListener("click", (e) => {
      let steps;
      try {
        steps = readInt("continue-steps", "Continue steps", 1);
      } catch (err) {
        showError(err.message);
        return;
      }
      jobAction(e.currentTarget, "/continue", {steps: steps || 50}, true);
    });
  }

  async function start() {
    stripTokenFromAddress();
    wire();
    await loadInfo();
    refreshGallery();
    openJobFromAddress();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
