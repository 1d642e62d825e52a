// seglabel's video tab: a video file or the camera through an HTTP tracking session (/track): a
// frame is drawn into a canvas, sent as JPEG with the clicks made on it, and every track's mask is
// drawn from the answer's COCO RLE. A file is stepped through at the chosen frames/s (seeked, so
// every step is answered); the camera sends its newest frame each time the previous answer is back
// (stale frames are never sent). Paused on an answered frame, clicks go to that frame (no image is
// sent again): a click off every track starts one, more clicks refine the selected track (shift:
// a negative click), a click on another track's mask selects it; the server corrects a tracked
// object there with SAM2's memory, and tracking goes on from the corrected masks. Plain browser
// JavaScript, the page's helpers (app.js).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const page = window.seglabelPage;
  const video = $("video"), overlay = $("video-overlay"), grab = document.createElement("canvas");
  const v = {
    sid: null, index: 0, pending: [], nextId: 1, running: false, camera: null,
    last: null,      // the last answer (TrackResponse JSON)
    answers: 0,      // frames answered in this session
    clicks: {},      // object id -> its clicks on the frame last answered (sent whole each time)
    selected: null,  // the object the next click on that frame refines (null: a click starts one)
    corrections: 0,  // click answers on answered frames
  };
  window.seglabelVideo = v;  // for the console (and the browser test)

  function status(text, kind = "busy") {
    const el = $("video-status");
    el.textContent = text;
    el.dataset.state = kind;
    el.classList.toggle("error", kind === "error");
  }

  async function openSession(mode) {
    const body = { mode, label_every: 5 };
    const vocab = page.vocabulary();
    if (vocab.length) body.vocabulary = vocab;
    const r = await page.api("/track", { method: "POST", headers: page.headers(true), body: JSON.stringify(body) });
    v.sid = (await r.json()).session;
    v.index = 0;
    v.answers = 0;
  }

  async function closeSession() {
    if (!v.sid) return;
    const sid = v.sid;
    v.sid = null;
    try { await page.api(`/track/${sid}`, { method: "DELETE", headers: page.headers(false) }); } catch (_) { /* ended */ }
  }

  async function sendFrame() {
    grab.width = video.videoWidth;
    grab.height = video.videoHeight;
    grab.getContext("2d").drawImage(video, 0, 0);
    const blob = await new Promise((resolve) => grab.toBlob(resolve, "image/jpeg", 0.92));
    const form = new FormData();
    form.append("image", blob, "frame.jpg");
    form.append("request", JSON.stringify({ frame_index: v.index, prompts: v.pending.splice(0) }));
    const t0 = performance.now();
    const r = await page.api(`/track/${v.sid}/frames`, { method: "POST", headers: page.headers(false), body: form });
    v.last = await r.json();
    v.index += 1;
    v.answers += 1;
    v.clicks = {};
    v.selected = null;
    draw(v.last);
    const n = v.last.objects.filter((o) => o.present).length;
    status(`frame ${v.last.frame_index}: ${n} of ${v.last.objects.length} tracks on it, ` +
           `${Math.round(performance.now() - t0)} ms`, "done");
  }

  // Clicks on the frame last answered: the objects' whole click lists, no image; the answer is that
  // frame again with every track.
  async function sendClicks(prompts) {
    const form = new FormData();
    form.append("request", JSON.stringify({ frame_index: v.last.frame_index, prompts }));
    const t0 = performance.now();
    const r = await page.api(`/track/${v.sid}/frames`, { method: "POST", headers: page.headers(false), body: form });
    v.last = await r.json();
    v.corrections += 1;
    draw(v.last);
    status(`frame ${v.last.frame_index}: track ${v.selected} ${v.clicks[v.selected].length} click(s), ` +
           `${Math.round(performance.now() - t0)} ms. Click to refine it (shift: remove a part), ` +
           "another track to select it, New object to start one, Track to go on", "done");
  }

  function trackAt(x, y) {
    if (!v.last) return null;
    const p = Math.floor(y) * v.last.width + Math.floor(x);
    for (const o of v.last.objects) {
      if (o.present && o.area && page.decodeRle(o.rle).pixels.includes(p)) return o.object_id;
    }
    return null;
  }

  function draw(answer) {
    overlay.width = answer.width;
    overlay.height = answer.height;
    const ctx = overlay.getContext("2d");
    const img = ctx.createImageData(answer.width, answer.height);
    for (const o of answer.objects) {
      if (!o.present || !o.area) continue;
      const [r, g, b] = page.colour(o.object_id);
      for (const p of page.decodeRle(o.rle).pixels) {
        img.data[4 * p] = r; img.data[4 * p + 1] = g; img.data[4 * p + 2] = b; img.data[4 * p + 3] = 120;
      }
    }
    ctx.putImageData(img, 0, 0);
    ctx.font = "12px sans-serif";
    for (const o of answer.objects) {
      if (!o.present || !o.bbox.length) continue;
      const [r, g, b] = page.colour(o.object_id);
      ctx.strokeStyle = ctx.fillStyle = `rgb(${r},${g},${b})`;
      ctx.strokeRect(o.bbox[0], o.bbox[1], o.bbox[2], o.bbox[3]);
      ctx.fillText(`${o.object_id}${o.label ? " " + o.label.label : ""}`, o.bbox[0] + 2, o.bbox[1] + 12);
    }
    const body = $("tracks").querySelector("tbody");
    body.textContent = "";
    for (const o of answer.objects) {
      const tr = document.createElement("tr");
      const [r, g, b] = page.colour(o.object_id);
      for (const [i, text] of ["", String(o.object_id), o.label ? o.label.label : "", o.present ? "yes" : "no"].entries()) {
        const td = document.createElement("td");
        td.textContent = text;
        if (i === 0) td.style.background = `rgb(${r},${g},${b})`;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    $("tracks").hidden = answer.objects.length === 0;
  }

  function seek(t) {
    return new Promise((resolve) => {
      video.addEventListener("seeked", resolve, { once: true });
      video.currentTime = t;
    });
  }

  async function trackFile() {
    v.running = true;
    $("video-pause").disabled = false;
    const step = 1 / Math.max(1, Number($("video-fps").value) || 5);
    try {
      if (!v.sid) await openSession("file");
      while (v.running && video.currentTime + step <= video.duration + 1e-6) {
        if (v.answers > 0) await seek(video.currentTime + step);
        await sendFrame();
      }
      if (v.running) status(`done: ${v.answers} frames tracked`, "done");
    } catch (e) {
      status(String(e.message || e), "error");
      await closeSession();
    } finally {
      v.running = false;
    }
  }

  async function camera() {
    try {
      v.camera = await navigator.mediaDevices.getUserMedia({ video: true });
    } catch (e) {
      status(`no camera: ${e.message || e}`, "error");
      return;
    }
    await closeSession();
    video.srcObject = v.camera;
    await video.play();
    $("video-stage").hidden = false;
    $("video-pause").disabled = false;
    v.running = true;
    try {
      await openSession("live");
      while (v.running) await sendFrame();  // the newest frame each time: stale ones are never sent
    } catch (e) {
      status(String(e.message || e), "error");
    } finally {
      v.running = false;
      for (const t of v.camera.getTracks()) t.stop();
      await closeSession();
    }
  }

  $("video-file").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (!file) return;
    v.running = false;
    await closeSession();
    video.srcObject = null;
    video.src = URL.createObjectURL(file);
    await new Promise((resolve) => video.addEventListener("loadeddata", resolve, { once: true }));
    $("video-stage").hidden = false;
    $("video-track").disabled = false;
    v.pending = [];
    v.nextId = 1;
    status(`${file.name}: ${video.videoWidth}x${video.videoHeight}, ${video.duration.toFixed(1)} s; click an object`, "idle");
  });

  overlay.addEventListener("click", async (e) => {
    if (!video.videoWidth || (v.running && !v.camera)) return;
    const rect = overlay.getBoundingClientRect();
    const x = (e.clientX - rect.left) * video.videoWidth / rect.width;
    const y = (e.clientY - rect.top) * video.videoHeight / rect.height;
    const point = { x, y, positive: !e.shiftKey };
    if (v.camera || !v.last || !v.sid) {
      // the camera, or no frame answered yet: a new track with the next frame
      const id = v.nextId++;
      v.pending.push({ object_id: id, points: [point] });
      if (v.camera) return;  // the camera loop sends it with its next frame
      try {
        if (!v.sid) await openSession("file");
        await sendFrame();  // this frame, with the click: the new track shows at once
        v.selected = id;
        v.clicks[id] = [point];
      } catch (err) {
        status(String(err.message || err), "error");
      }
      return;
    }
    // paused on an answered frame: the click goes to that frame
    const under = trackAt(x, y);
    let id;
    if (e.shiftKey) id = v.selected ?? under;
    else if (under !== null && under !== v.selected) id = under;
    else id = v.selected ?? v.nextId++;
    if (id === null) return status("shift+click removes a part of the selected track: select one first", "idle");
    v.selected = id;
    v.clicks[id] = (v.clicks[id] || []).concat([point]);
    try {
      await sendClicks([{ object_id: id, points: v.clicks[id] }]);
    } catch (err) {
      status(String(err.message || err), "error");
    }
  });
  $("video-new").addEventListener("click", () => {
    v.selected = null;
    status("the next click starts a new track", "idle");
  });
  $("video-track").addEventListener("click", trackFile);
  $("video-pause").addEventListener("click", () => { v.running = false; status("paused: click to add a track", "idle"); });
  $("video-camera").addEventListener("click", camera);
  status("choose a video, or the camera", "idle");
})();
