// seglabel's web page: upload or drop an image, grid segmentation with labels streamed over
// Server-Sent Events, an overlay drawn here from the masks' COCO RLE, hover to highlight, click to
// segment one object (the server's embedding cache answers clicks on a seen image without the
// encoder), a COCO-style JSON download, and corrections: alt-click a mask (or its row's label), type
// the right label, and the mask becomes an example of it in a stored vocabulary; every mask of the
// image is then relabelled from its kept crop embedding (/relabel, milliseconds). Plain browser
// JavaScript, no build step, no CDN.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const overlay = $("overlay");
  const state = {
    fileId: null, filename: "", width: 0, height: 0, info: null,
    objects: [],      // {key, source: "grid"|"click", index, rle, bbox, area, pixels, centroid, rgb, label, ...}
    current: null,    // the click object being refined
    hover: null,      // key of the highlighted object
    topAt: null,      // Int32Array: per pixel, position in state.objects of the topmost mask (-1: none)
    streaming: null,  // AbortController of the running stream
    serving: false,   // health said SERVING
    clickBusy: false, clickDirty: false, nextKey: 1,
    correcting: null, // the object whose label is being corrected
  };

  // A click answered after this long in the server's queues says so: it waited behind other work.
  const WAITED_MS = 50;

  // --------------------------------------------------------------------------------- helpers
  function setStatus(text, kind = "busy") {
    const el = $("status");
    el.textContent = text;
    el.dataset.state = kind;
    el.classList.toggle("error", kind === "error");
    el.classList.toggle("waited", kind === "waited");
  }

  function headers(json) {
    const h = {};
    const token = $("token").value.trim();
    if (token) h.Authorization = "Bearer " + token;
    if (json) h["Content-Type"] = "application/json";
    return h;
  }

  async function api(path, options = {}) {
    const r = await fetch(path, options);
    if (!r.ok) {
      let message = `${r.status} ${r.statusText}`;
      try {
        const body = await r.json();
        if (body.error) message = `${r.status} ${body.error.code}: ${body.error.message}`;
      } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    return r;
  }

  function optNumber(id) {
    const v = $(id).value.trim();
    return v === "" ? null : Number(v);
  }

  function vocabulary() {
    return $("vocabulary").value.split(/[,\n]/).map((s) => s.trim()).filter(Boolean);
  }

  function labelling() {
    const out = { top_k: optNumber("top-k") || 0, label_mode: $("multi").checked ? "multi" : "single" };
    if ($("use-taught").checked && $("teach-vocab").value.trim()) out.vocabulary_name = $("teach-vocab").value.trim();
    else out.vocabulary = vocabulary();
    return out;
  }

  function commonBody() {
    const body = { file_id: state.fileId, ...labelling(), return_overlay: false };
    const filters = { pred_iou_thresh: optNumber("pred-iou"), stability_score_thresh: optNumber("stability"),
                      box_nms_thresh: optNumber("nms") };
    for (const [k, v] of Object.entries(filters)) if (v !== null) body[k] = v;
    return body;
  }

  // Golden-angle hues: neighbouring masks get distinct colours.
  function colour(n) {
    const h = (n * 137.508) % 360, s = 0.75, l = 0.5;
    const f = (k) => {
      const a = s * Math.min(l, 1 - l), t = (k + h / 30) % 12;
      return Math.round(255 * (l - a * Math.max(-1, Math.min(t - 3, 9 - t, 1))));
    };
    return [f(0), f(8), f(4)];
  }

  // ------------------------------------------------------------------------------- COCO RLE
  // pycocotools' compressed counts string (maskApi.c rleFrString), column-major runs, 0s first.
  function rleCounts(s) {
    const counts = [];
    let p = 0;
    while (p < s.length) {
      let x = 0, k = 0, more = 1;
      while (more) {
        const c = s.charCodeAt(p) - 48;
        x |= (c & 0x1f) << (5 * k);
        more = c & 0x20;
        p++; k++;
        if (!more && (c & 0x10)) x |= -1 << (5 * k);
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    return counts;
  }

  // Row-major indices of the mask's pixels, and its centroid.
  function decodeRle(rle) {
    const [h, w] = rle.size;
    const counts = rleCounts(rle.counts);
    let total = 0;
    for (let i = 1; i < counts.length; i += 2) total += counts[i];
    const pixels = new Uint32Array(total);
    let pos = 0, n = 0, sx = 0, sy = 0;
    for (let i = 0; i < counts.length; i++) {
      if (i % 2 === 1) {
        for (let q = pos; q < pos + counts[i]; q++) {
          const x = (q / h) | 0, y = q - x * h;
          pixels[n++] = y * w + x;
          sx += x; sy += y;
        }
      }
      pos += counts[i];
    }
    return { pixels, centroid: n ? [sx / n, sy / n] : [0, 0] };
  }

  // -------------------------------------------------------------------------------- objects
  function addObject(source, mask, extra = {}) {
    const key = state.nextKey++;
    const obj = { key, source, label: null, confidence: null, top_k: [], points: [], rgb: colour(key), ...extra };
    if (mask) setMask(obj, mask);
    state.objects.push(obj);
    return obj;
  }

  function setMask(obj, m) {
    const { pixels, centroid } = decodeRle(m.rle);
    Object.assign(obj, { index: m.index, rle: m.rle, bbox: m.bbox, area: m.area, predicted_iou: m.predicted_iou,
                         stability_score: m.stability_score, pixels, centroid });
  }

  function setLabel(obj, lab) {
    Object.assign(obj, { label: lab.label, confidence: lab.confidence, top_k: lab.top_k || [], labels: lab.labels || [] });
  }

  // MULTI: every label above its threshold; SINGLE: the label.
  function shownLabel(o) {
    if (o.labels && o.labels.length) return o.labels.map((t) => t.label).join(", ");
    return o.label;
  }

  // ------------------------------------------------------------------------------ rendering
  function render() {
    const w = state.width, h = state.height;
    if (!w) return;
    if (overlay.width !== w || overlay.height !== h) { overlay.width = w; overlay.height = h; }
    const ctx = overlay.getContext("2d");
    const image = ctx.createImageData(w, h);
    const d = image.data;
    const top = new Int32Array(w * h).fill(-1);
    // Largest first, so that small masks stay visible on top of the ones that contain them.
    const order = state.objects.map((o, i) => i).filter((i) => state.objects[i].pixels)
      .sort((a, b) => state.objects[b].area - state.objects[a].area);
    for (const i of order) {
      const o = state.objects[i];
      const alpha = state.hover === null ? 115 : (o.key === state.hover ? 200 : 30);
      const [r, g, b] = o.rgb;
      for (const p of o.pixels) {
        const j = p * 4;
        d[j] = r; d[j + 1] = g; d[j + 2] = b; d[j + 3] = alpha;
        top[p] = i;
      }
    }
    ctx.putImageData(image, 0, 0);
    state.topAt = top;
    const font = Math.max(11, Math.round(Math.max(w, h) / 55));
    ctx.font = `600 ${font}px system-ui, sans-serif`;
    ctx.textBaseline = "middle";
    for (const o of state.objects) {
      if (!o.pixels) continue;
      if (o.key === state.hover) {
        ctx.lineWidth = Math.max(2, font / 6);
        ctx.strokeStyle = "#fff";
        ctx.strokeRect(o.bbox[0], o.bbox[1], o.bbox[2], o.bbox[3]);
      }
      if (o.label && (state.hover === null || o.key === state.hover)) {
        const text = `${o.label} ${(o.confidence * 100).toFixed(0)}%`;
        const tw = ctx.measureText(text).width;
        const [cx, cy] = o.centroid;
        ctx.fillStyle = "rgba(0,0,0,0.6)";
        ctx.fillRect(cx - tw / 2 - 3, cy - font * 0.65, tw + 6, font * 1.3);
        ctx.fillStyle = "#fff";
        ctx.fillText(text, cx - tw / 2, cy);
      }
    }
    for (const o of state.objects) {
      for (const pt of o.points) {
        ctx.beginPath();
        ctx.arc(pt.x, pt.y, Math.max(4, font / 2.5), 0, 2 * Math.PI);
        ctx.fillStyle = pt.positive ? "#1db954" : "#e03131";
        ctx.fill();
        ctx.lineWidth = 2;
        ctx.strokeStyle = "#fff";
        ctx.stroke();
      }
    }
  }

  function renderTable() {
    const body = $("labels").tBodies[0];
    body.replaceChildren();
    for (const o of state.objects) {
      const tr = document.createElement("tr");
      tr.dataset.key = o.key;
      tr.dataset.source = o.source;
      if (!o.pixels || (o.label === null && !$("labels").dataset.nolabels)) tr.classList.add("pending");
      if (o.key === state.hover) tr.classList.add("hl");
      if (o.changed) tr.classList.add("changed");
      const cells = [
        `<span style="background: rgb(${o.rgb.join(",")})"></span>`,
        o.source === "grid" ? String(o.index) : `click ${o.points.length}`,
        o.label === null ? (o.pixels ? "…" : "segmenting…") : shownLabel(o),
        o.confidence === null ? "" : o.confidence.toFixed(3),
        o.area === undefined ? "" : String(o.area),
        o.source,
      ];
      cells.forEach((html, i) => {
        const td = document.createElement("td");
        if (i === 0) { td.className = "swatch"; td.innerHTML = html; } else td.textContent = html;
        if (i === 3 || i === 4) td.classList.add("num");
        if (i === 2 && o.top_k.length > 1) td.title = o.top_k.map((t) => `${t.label} ${t.confidence.toFixed(3)}`).join("\n");
        if (i === 2 && o.requestId) {
          td.classList.add("label-cell");
          td.addEventListener("click", () => startCorrection(o));
        }
        tr.appendChild(td);
      });
      tr.addEventListener("mouseenter", () => highlight(o.key));
      tr.addEventListener("mouseleave", () => highlight(null));
      body.appendChild(tr);
    }
    $("download").disabled = !state.objects.some((o) => o.pixels);
    $("clear").disabled = state.objects.length === 0;
    $("new-object").disabled = state.current === null;
  }

  function highlight(key) {
    if (state.hover === key) return;
    state.hover = key;
    for (const tr of $("labels").tBodies[0].rows) tr.classList.toggle("hl", Number(tr.dataset.key) === key);
    render();
  }

  function imagePoint(e) {
    const r = overlay.getBoundingClientRect();
    return { x: ((e.clientX - r.left) * state.width) / r.width, y: ((e.clientY - r.top) * state.height) / r.height };
  }

  // --------------------------------------------------------------------------------- upload
  async function upload(file) {
    if (!file) return;
    if (state.streaming) state.streaming.abort();
    setStatus(`uploading ${file.name}…`);
    const form = new FormData();
    form.append("image", file, file.name);
    try {
      const r = await (await api("upload", { method: "POST", body: form, headers: headers(false) })).json();
      Object.assign(state, { fileId: r.file_id, filename: file.name, width: r.width, height: r.height,
                             objects: [], current: null, hover: null });
      const photo = $("photo");
      if (photo.src) URL.revokeObjectURL(photo.src);
      photo.src = URL.createObjectURL(file);
      $("stage").hidden = false;
      $("drop-hint").hidden = true;
      $("segment").disabled = !state.serving;
      render();
      renderTable();
      setStatus(`uploaded ${file.name} (${r.width}×${r.height}); press Segment, or click the image`, "ready");
    } catch (err) {
      setStatus(`upload failed: ${err.message}`, "error");
    }
  }

  // ------------------------------------------------------------------------ grid, streamed
  async function segmentGrid() {
    if (!state.fileId) return;
    if (state.streaming) state.streaming.abort();
    const controller = new AbortController();
    state.streaming = controller;
    state.objects = state.objects.filter((o) => o.source !== "grid");
    render();
    renderTable();
    const body = { ...commonBody(), prompt_type: "grid", points_per_side: optNumber("grid") || 0,
                   max_masks: optNumber("max-masks") || 0 };
    const byIndex = new Map();
    const progress = $("progress");
    progress.hidden = false;
    progress.value = 0;
    setStatus("segmenting…", "busy");
    const t0 = performance.now();
    try {
      const r = await api("segment/stream", { method: "POST", headers: headers(true), body: JSON.stringify(body),
                                              signal: controller.signal });
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "", finished = false;
      while (!finished) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let name = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) name = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          finished = onEvent(name, data ? JSON.parse(data) : {}, byIndex, t0) || finished;
        }
      }
      if (!finished) throw new Error("the stream ended before its summary");
    } catch (err) {
      if (err.name !== "AbortError") setStatus(`segmentation failed: ${err.message}`, "error");
    } finally {
      if (state.streaming === controller) state.streaming = null;
      progress.hidden = true;
    }
  }

  function onEvent(name, ev, byIndex, t0) {
    if (name === "accepted") {
      byIndex.requestId = ev.request_id;
      setStatus(`accepted (${ev.width}×${ev.height}), encoding…`, "busy");
    } else if (name === "progress") {
      $("progress").value = ev.fraction;
      setStatus(`${ev.stage}…`, "busy");
    } else if (name === "masks") {
      for (const m of ev.masks) byIndex.set(m.index, addObject("grid", m));
      render();
      renderTable();
    } else if (name === "label_update") {
      for (const lab of ev.labels) {
        const o = byIndex.get(lab.mask_index);
        if (o) setLabel(o, lab);
      }
      if (ev.total) $("progress").value = ev.done / ev.total;
      setStatus(`labels ${ev.done} / ${ev.total}`, "busy");
      render();
      renderTable();
    } else if (name === "summary") {
      $("labels").dataset.nolabels = ev.labels_unavailable_reason ? "1" : "";
      // the answer is kept for relabelling only when it was labelled (request_id set)
      if (ev.request_id) for (const o of byIndex.values()) o.requestId = ev.request_id;
      const ms = Math.round(performance.now() - t0);
      const why = ev.labels_unavailable_reason ? ` (no labels: ${ev.labels_unavailable_reason})` : "";
      setStatus(`${ev.mask_count} masks, ${ev.labels.length} labels in ${ms} ms${why}`, "done");
      renderTable();
      return true;
    } else if (name === "error") {
      throw new Error(`${ev.code}: ${ev.message}`);
    }
    return false;
  }

  // -------------------------------------------------------------------------------- clicks
  async function click(e) {
    if (!state.fileId || !state.serving) return;
    const pt = { ...imagePoint(e), positive: !e.shiftKey };
    if (!state.current) state.current = addObject("click", null);
    state.current.points.push(pt);
    render();
    renderTable();
    if (state.clickBusy) { state.clickDirty = true; return; }
    state.clickBusy = true;
    try {
      do {
        state.clickDirty = false;
        await segmentObject(state.current);
      } while (state.clickDirty && state.current);
    } finally {
      state.clickBusy = false;
    }
  }

  async function segmentObject(obj) {
    if (!obj) return;
    const points = obj.points.map((p) => ({ x: p.x, y: p.y, positive: p.positive }));
    setStatus(`segmenting the object at ${points.length} point(s)…`, "busy");
    const t0 = performance.now();
    try {
      const body = { ...commonBody(), prompt_type: "points", points, multimask: false };
      const r = await (await api("segment", { method: "POST", headers: headers(true), body: JSON.stringify(body) })).json();
      const ms = Math.round(performance.now() - t0);
      if (!state.objects.includes(obj)) return;  // cleared meanwhile
      if (!r.masks.length) {
        setStatus(`no mask for this point (${ms} ms)`, "done");
        return;
      }
      const best = r.masks.reduce((a, b) => (b.predicted_iou > a.predicted_iou ? b : a));
      setMask(obj, best);
      const lab = r.labels.find((l) => l.mask_index === best.index);
      if (lab) setLabel(obj, lab);
      obj.requestId = r.request_id || null;
      const enc = r.timings.encoder_ms;
      const cached = enc === undefined ? "" : ` · encoder ${enc.toFixed(1)} ms`;
      // the server's queue time: the click waited behind other work (a job on the same server)
      const queued = r.timings.queue_ms || 0;
      const waited = queued >= WAITED_MS ? ` · waited ${Math.round(queued)} ms behind other work` : "";
      setStatus(`object: ${obj.label ?? "(no label)"} in ${ms} ms${cached}${waited}`, waited ? "waited" : "done");
    } catch (err) {
      setStatus(`click failed: ${err.message}`, "error");
    } finally {
      render();
      renderTable();
    }
  }

  // ----------------------------------------------------------------------------- corrections
  function startCorrection(obj) {
    if (!obj || !obj.requestId) {
      setStatus("this mask has no kept answer to correct (labels were not computed)", "error");
      return;
    }
    state.correcting = obj;
    $("correct-which").textContent = obj.source === "grid" ? `#${obj.index}` : "(clicked object)";
    const known = new Set([...vocabulary(), ...(state.info?.default_vocabulary || []), ...state.objects.map((o) => o.label).filter(Boolean)]);
    $("correct-labels").replaceChildren(...[...known].map((v) => Object.assign(document.createElement("option"), { value: v })));
    $("correct-label").value = "";
    $("correct").hidden = false;
    $("correct-label").focus();
  }

  // The stored vocabulary corrections go into: created on the first one from the labels in use.
  async function ensureTaughtVocabulary(name) {
    const r = await fetch(`vocabularies/${encodeURIComponent(name)}`, { headers: headers(false) });
    if (r.ok) return;
    if (r.status !== 404) await api(`vocabularies/${encodeURIComponent(name)}`, { headers: headers(false) });
    const labels = vocabulary().length ? vocabulary() : state.info?.default_vocabulary || [];
    await api("vocabularies", { method: "POST", headers: headers(true), body: JSON.stringify({ name, labels }) });
  }

  async function teach(negative) {
    const obj = state.correcting, label = $("correct-label").value.trim(), name = $("teach-vocab").value.trim();
    if (!obj || !label || !name) return;
    $("correct").hidden = true;
    state.correcting = null;
    const t0 = performance.now();
    try {
      setStatus(`teaching “${label}” into ${name}…`, "busy");
      await ensureTaughtVocabulary(name);
      const example = { request_id: obj.requestId, mask_index: obj.index, negative };
      await api(`vocabularies/${encodeURIComponent(name)}/examples`, {
        method: "POST", headers: headers(true), body: JSON.stringify({ label, examples: [example] }) });
      $("use-taught").checked = true;
      const { changed, serverMs } = await relabelAll(name);
      const ms = Math.round(performance.now() - t0);
      setStatus(`${negative ? "not" : "taught"} “${label}”: ${changed} mask(s) changed label; relabelled in ` +
                `${serverMs.toFixed(1)} ms (server), ${ms} ms in all`, "done");
    } catch (err) {
      setStatus(`teaching failed: ${err.message}`, "error");
    }
  }

  // Every object's answer scored again against the vocabulary (no model runs), labels updated.
  async function relabelAll(name) {
    const byAnswer = new Map();
    for (const o of state.objects) if (o.requestId) {
      if (!byAnswer.has(o.requestId)) byAnswer.set(o.requestId, []);
      byAnswer.get(o.requestId).push(o);
    }
    let changed = 0, serverMs = 0;
    for (const [requestId, objs] of byAnswer) {
      const body = { request_id: requestId, ...labelling(), vocabulary_name: name };
      delete body.vocabulary;
      const r = await (await api("relabel", { method: "POST", headers: headers(true), body: JSON.stringify(body) })).json();
      serverMs += r.timings.total_ms;
      const byMask = new Map(r.labels.map((l) => [l.mask_index, l]));
      for (const o of objs) {
        const lab = byMask.get(o.index);
        if (!lab) continue;
        const before = shownLabel(o);
        setLabel(o, lab);
        o.changed = before !== shownLabel(o);
        changed += o.changed;
      }
    }
    render();
    renderTable();
    return { changed, serverMs };
  }

  function newObject() {
    state.current = null;
    renderTable();
  }

  // ------------------------------------------------------------------------------ download
  function cocoJson() {
    const done = state.objects.filter((o) => o.pixels);
    const names = [...new Set(done.map((o) => o.label ?? "unlabelled"))];
    return {
      info: { description: "seglabel annotations", date_created: new Date().toISOString(),
              server_version: state.info?.version ?? "", random_weights: !!state.info?.random_weights },
      images: [{ id: 1, file_name: state.filename, width: state.width, height: state.height,
                 seglabel_file_id: state.fileId }],
      categories: names.map((name, i) => ({ id: i + 1, name })),
      annotations: done.map((o, i) => ({
        id: i + 1, image_id: 1, category_id: names.indexOf(o.label ?? "unlabelled") + 1,
        segmentation: { size: o.rle.size, counts: o.rle.counts }, area: o.area, bbox: o.bbox, iscrowd: 0,
        score: o.confidence, predicted_iou: o.predicted_iou, stability_score: o.stability_score,
        top_k: o.top_k, source: o.source, points: o.points,
      })),
    };
  }

  function download() {
    const blob = new Blob([JSON.stringify(cocoJson(), null, 1)], { type: "application/json" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = (state.filename.replace(/\.[^.]*$/, "") || "image") + ".coco.json";
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  // ---------------------------------------------------------------------------------- wiring
  // Until health says SERVING (models loading or warming up) the page waits, and says so.
  async function waitServing() {
    for (;;) {
      let health = "unreachable";
      try {
        health = (await (await fetch("healthz")).json()).status;
      } catch (_) { /* server not up */ }
      state.serving = health === "SERVING";
      $("segment").disabled = !(state.serving && state.fileId);
      if (state.serving) return;
      $("server-info").textContent = `server ${health === "NOT_SERVING" ? "loading models" : "unreachable"}, waiting…`;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  async function loadInfo() {
    await waitServing();
    try {
      const info = await (await api("info", { headers: headers(false) })).json();
      state.info = info;
      const labels = info.labels_unavailable_reason ? "no labels" : "labels";
      $("server-info").textContent = `${info.backend} on ${info.device} · seglabel ${info.version} · ${labels}`;
      $("vocabulary").placeholder = info.default_vocabulary.slice(0, 12).join(", ") + ", … (server default)";
      const d = info.defaults || {};
      if ($("grid").value === "" && d.points_per_side) $("grid").value = String(d.points_per_side);
      if (d.max_masks) $("max-masks").placeholder = `default ${d.max_masks}`;
      if (info.random_weights) {
        $("random-warning").hidden = false;
        // As make demo does: random weights keep no mask under the default filters.
        if ($("pred-iou").value === "") $("pred-iou").value = "0";
        if ($("stability").value === "") $("stability").value = "0";
        if ($("nms").value === "") $("nms").value = "1";
        if ($("max-masks").value === "") $("max-masks").value = "24";
        $("filters").open = true;
      }
    } catch (err) {
      $("server-info").textContent = `server info: ${err.message}`;
    }
  }

  // ------------------------------------------------------------------- many images: a job
  // POST /datasets with the options above, each file added with its relative name (an upload waits
  // while the server's window for the job is full), the job's status polled into the table, then
  // its COCO JSON or zip downloaded.
  function datasetRow(entry) {
    const body = $("dataset").tBodies[0];
    let tr = body.querySelector(`tr[data-name="${CSS.escape(entry.name)}"]`);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.name = entry.name;
      for (let i = 0; i < 3; i++) tr.appendChild(document.createElement("td"));
      body.appendChild(tr);
    }
    tr.dataset.status = entry.status;
    const [name, status, masks] = tr.children;
    name.textContent = entry.name;
    status.textContent = entry.reason ? `${entry.status}: ${entry.reason}` : entry.status;
    masks.textContent = entry.status === "done" ? String(entry.masks) : "";
  }

  function datasetStatus(text, kind) {
    const el = $("dataset-status");
    el.textContent = text;
    el.dataset.state = kind;
    el.classList.toggle("error", kind === "error");
  }

  async function refreshDataset() {
    const job = state.dataset;
    const s = await (await api(`datasets/${job.id}`, { headers: headers(false) })).json();
    for (const e of s.images) datasetRow(e);
    const settled = s.done + s.failed + s.skipped;
    if (!job.adding && !s.busy) {
      datasetStatus(`${s.done} labelled, ${s.failed} failed, ${s.skipped} skipped of ${s.total}`, "done");
      $("download-coco").disabled = $("download-zip").disabled = s.done === 0;
      return true;
    }
    datasetStatus(`labelling: ${settled} of ${job.total} images`, "busy");
    return false;
  }

  async function labelMany(files) {
    if (!files.length) return;
    const body = { ...commonBody(), points_per_side: optNumber("grid") || 0, max_masks: optNumber("max-masks") || 0,
                   mask_format: $("mask-format").value };
    delete body.file_id;
    delete body.return_overlay;
    delete body.label_mode;  // a dataset's annotations carry one category per mask
    $("dataset").hidden = false;
    $("dataset").tBodies[0].replaceChildren();
    $("download-coco").disabled = $("download-zip").disabled = true;
    let job;
    try {
      job = await (await api("datasets", { method: "POST", headers: headers(true), body: JSON.stringify(body) })).json();
    } catch (err) {
      datasetStatus(`dataset job: ${err.message}`, "error");
      return;
    }
    state.dataset = { id: job.job_id, total: files.length, adding: true };
    const names = files.map((f) => f.webkitRelativePath || f.name);
    names.forEach((name) => datasetRow({ name, status: "waiting", masks: 0, reason: "" }));
    const timer = setInterval(() => refreshDataset().catch(() => {}), 500);
    for (let i = 0; i < files.length; i++) {
      const form = new FormData();
      form.append("image", files[i]);
      form.append("name", names[i]);
      try {
        datasetRow(await (await api(`datasets/${job.job_id}/images`, { method: "POST", headers: headers(false), body: form })).json());
      } catch (err) {
        datasetRow({ name: names[i], status: "failed", masks: 0, reason: err.message });
      }
    }
    state.dataset.adding = false;
    clearInterval(timer);
    while (!(await refreshDataset())) await new Promise((r) => setTimeout(r, 500));
  }

  async function downloadDataset(path, filename) {
    const r = await api(`datasets/${state.dataset.id}/${path}`, { headers: headers(false) });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(await r.blob());
    a.download = filename;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  }

  $("files").addEventListener("change", (e) => labelMany([...e.target.files]));
  $("folder").addEventListener("change", (e) => labelMany([...e.target.files].filter((f) => f.type.startsWith("image/") || /\.(png|jpe?g|gif|bmp|tiff?|webp)$/i.test(f.name))));
  $("download-coco").addEventListener("click", () => downloadDataset("annotations.coco.json", "annotations.coco.json"));
  $("download-zip").addEventListener("click", () => downloadDataset("dataset.zip", "dataset.zip"));

  $("token").value = localStorage.getItem("seglabel-token") || "";
  $("token").addEventListener("change", () => { localStorage.setItem("seglabel-token", $("token").value); loadInfo(); });
  $("file").addEventListener("change", (e) => upload(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const files = [...e.dataTransfer.files];
    if (files.length > 1) labelMany(files);
    else upload(files[0]);
  });
  $("controls").addEventListener("submit", (e) => { e.preventDefault(); segmentGrid(); });
  $("new-object").addEventListener("click", newObject);
  $("clear").addEventListener("click", () => {
    if (state.streaming) state.streaming.abort();
    Object.assign(state, { objects: [], current: null, hover: null });
    render();
    renderTable();
  });
  $("download").addEventListener("click", download);
  $("correct").addEventListener("submit", (e) => { e.preventDefault(); teach(false); });
  $("correct-negative").addEventListener("click", () => teach(true));
  $("correct-cancel").addEventListener("click", () => { $("correct").hidden = true; state.correcting = null; });
  overlay.addEventListener("click", (e) => {
    if (e.altKey) {  // alt-click: correct the label of the mask under the pointer
      const { x, y } = imagePoint(e);
      const i = state.topAt ? state.topAt[Math.floor(y) * state.width + Math.floor(x)] : -1;
      if (i >= 0 && state.objects[i]) startCorrection(state.objects[i]);
      return;
    }
    click(e);
  });
  overlay.addEventListener("mousemove", (e) => {
    if (!state.topAt) return;
    const { x, y } = imagePoint(e);
    const i = state.topAt[Math.floor(y) * state.width + Math.floor(x)];
    highlight(i >= 0 && state.objects[i] ? state.objects[i].key : null);
  });
  overlay.addEventListener("mouseleave", () => highlight(null));
  document.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement) return;
    if (e.key === "n" || e.key === "N") newObject();
    if (e.key === "Escape" && state.current) {
      state.objects = state.objects.filter((o) => o !== state.current);
      state.current = null;
      render();
      renderTable();
    }
  });
  window.seglabel = state;  // for the console (and the browser test)
  window.seglabelPage = { api, headers, decodeRle, colour, vocabulary };  // what video.js shares
  window.seglabelCorrect = (key) => startCorrection(state.objects.find((o) => o.key === key));
  setStatus("drop or choose an image", "idle");
  loadInfo();
})();
