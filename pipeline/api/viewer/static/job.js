// One job or stream: its previews with each track's mask drawn over them, its tracks, its controls.
"use strict";
(function () {
  const V = window.samstreamViewer;
  const jobId = decodeURIComponent(location.pathname.split("/").pop());
  const canvas = document.getElementById("view");
  const ctx = canvas.getContext("2d");
  const overlay = document.createElement("canvas");
  const $ = (id) => document.getElementById(id);

  const state = {
    job: null,
    lastId: null, // the newest preview drawn (live follow)
    paused: false,
    discoveryPaused: false, // this page paused the job's discovery
    playback: false, // a finished file job: played and scrubbed over its kept previews
    previews: [],
    playing: false,
    prompts: new Map(), // track id -> the prompt this page knows (to add negative points to)
    target: null, // the track the next click or drag re-prompts
    known: new Set(), // every track id seen, so that a new track gets a fresh id
    shownTracks: [],
  };

  function api(kind) { return kind === "stream" ? "/streams" : "/jobs"; }
  function message(text) { $("message").textContent = text; $("error").textContent = ""; }
  function failure(err) { $("error").textContent = String(err.message || err); }

  // -- drawing --

  function loadImage(b64) {
    return new Promise((resolve, reject) => {
      const image = new Image();
      image.onload = () => resolve(image);
      image.onerror = reject;
      image.src = `data:image/jpeg;base64,${b64}`;
    });
  }

  async function draw(frame) {
    const image = await loadImage(frame.preview.jpeg);
    const w = frame.width, h = frame.height;
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w; canvas.height = h;
    }
    overlay.width = w; overlay.height = h;
    ctx.drawImage(image, 0, 0, w, h);
    const pixels = new ImageData(w, h);
    const data = pixels.data;
    for (const track of frame.tracks) {
      if (track.state !== "active" || !track.bbox) continue;
      const [r, g, b] = V.colour(track.id);
      const mask = V.decodeRle(track.rle);
      const [x0, y0, x1, y1] = track.bbox;
      for (let y = y0; y < y1; y += 1) {
        for (let x = x0; x < x1; x += 1) {
          const i = y * w + x;
          if (!mask[i]) continue;
          // The mask's edge in the track's solid colour, its inside tinted.
          const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
            !mask[i - 1] || !mask[i + 1] || !mask[i - w] || !mask[i + w];
          const o = 4 * i;
          data[o] = r; data[o + 1] = g; data[o + 2] = b; data[o + 3] = edge ? 255 : 110;
        }
      }
    }
    overlay.getContext("2d").putImageData(pixels, 0, 0);
    ctx.drawImage(overlay, 0, 0);
    // A detector's class over its track's box, in the track's colour on black.
    ctx.font = "bold 12px sans-serif";
    ctx.textBaseline = "bottom";
    for (const track of frame.tracks) {
      if (track.state !== "active" || !track.bbox || !track.label) continue;
      const [x0, y0] = track.bbox;
      const text = `${track.label} ${track.id}`;
      const top = Math.max(14, y0);
      ctx.fillStyle = "rgba(0,0,0,0.7)";
      ctx.fillRect(x0, top - 14, ctx.measureText(text).width + 6, 14);
      ctx.fillStyle = `rgb(${V.colour(track.id).join(",")})`;
      ctx.fillText(text, x0 + 3, top);
    }
    const drawnAt = Date.now() / 1000;
    V.shown = { frame: frame.frame, tracks: frame.tracks.map((t) => ({ id: t.id, state: t.state, bbox: t.bbox, label: t.label || null })) };
    V.drawn.push({ frame: frame.frame, capture_time: frame.capture_time, publish_time: frame.publish_time,
      drawn_at: drawnAt, tracks: frame.tracks.filter((t) => t.state === "active").map((t) => t.id) });
    if (V.drawn.length > 1000) V.drawn.splice(0, V.drawn.length - 1000);
    canvas.dataset.frame = String(frame.frame);
    $("frame").textContent = String(frame.frame);
    $("notice").textContent = frame.notice || "";
    for (const t of frame.tracks) state.known.add(t.id);
    state.shownTracks = frame.tracks;
    renderTracks();
  }

  // -- the job's figures and tracks --

  function renderJob(job) {
    $("title").textContent = `${job.kind} ${job.id}`;
    $("status").textContent = job.status + (job.error ? `: ${job.error}` : "");
    $("progress").textContent = job.frames_total ? `${job.frames_done} / ${job.frames_total}` : `${job.frames_done}`;
    $("fps").textContent = V.fmtFps(job.fps);
    $("latency").textContent = V.fmtLatency(job.latency_s);
    $("drops").textContent = String(job.dropped || 0);
    $("source").textContent = job.source;
    $("stop").textContent = job.kind === "stream" ? "Stop stream" : "Cancel job";
    $("stop").disabled = ["succeeded", "failed", "cancelled"].includes(job.status);
    $("discovery").hidden = !job.discover;
    $("discovery").disabled = $("stop").disabled;
    for (const t of job.tracks) {
      state.known.add(t.id);
      if (!state.prompts.has(t.id)) state.prompts.set(t.id, { points: t.points, labels: t.labels, box: t.box });
    }
  }

  function renderTracks() {
    const items = state.shownTracks.map((t) => {
      const li = document.createElement("li");
      li.dataset.track = String(t.id);
      li.dataset.state = t.state; // active, searching (its object not in sight: looked for), lost
      if (state.target === t.id) li.className = "targeted";
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = `rgb(${V.colour(t.id).join(",")})`;
      const label = document.createElement("span");
      const name = t.label ? `${t.label} ${t.id}` : `track ${t.id}`;
      label.textContent = t.state === "active"
        ? `${name} · active · ${t.score.toFixed(2)}`
        : `${name} · ${t.state}${t.state === "searching" ? "…" : ""}`;
      const reprompt = document.createElement("button");
      reprompt.textContent = state.target === t.id ? "Cancel re-prompt" : "Re-prompt";
      reprompt.addEventListener("click", () => {
        state.target = state.target === t.id ? null : t.id;
        message(state.target ? `click or drag to re-prompt track ${t.id}; shift-click: not on it` : "");
        renderTracks();
      });
      const remove = document.createElement("button");
      remove.textContent = "Remove";
      remove.className = "remove";
      remove.addEventListener("click", () => removeTrack(t.id));
      li.append(swatch, label, reprompt, remove);
      return li;
    });
    $("tracks").replaceChildren(...items);
  }

  async function refreshJob() {
    try {
      const job = await V.getJson(`/view/api/jobs/${encodeURIComponent(jobId)}`);
      state.job = job;
      renderJob(job);
      const finished = ["succeeded", "failed", "cancelled"].includes(job.status);
      if (!job.previews_kept && job.frames_done > 0) {
        $("notice").textContent = "no pictures: this job's frames have no previews (its run or service has --no-preview)";
      }
      if (finished && !state.playback && job.previews_kept) {
        state.playback = true;
        const kept = await V.getJson(`/view/api/jobs/${encodeURIComponent(jobId)}/previews`);
        startPlayback(kept.previews);
      }
    } catch (err) { failure(err); }
  }

  // -- live: follow the present --

  async function follow() {
    let wait = 80;
    if (!state.paused && !state.playback) {
      try {
        const after = state.lastId ? `?after=${state.lastId}` : "";
        const data = await V.getJson(`/view/api/jobs/${encodeURIComponent(jobId)}/frames${after}`);
        if (data.frames.length && !state.paused && !state.playback) {
          const frame = data.frames[data.frames.length - 1];
          state.lastId = frame.id;
          await draw(frame);
          wait = 20;
        }
      } catch (err) { failure(err); wait = 1000; }
    }
    setTimeout(follow, wait);
  }

  // -- playback of a finished file job --

  function startPlayback(previews) {
    state.previews = previews;
    if (!previews.length) return;
    $("live-controls").hidden = true;
    $("playback").hidden = false;
    $("scrub").max = String(previews.length - 1);
    $("scrub").value = "0";
    showAt(0);
  }

  async function showAt(i) {
    const p = state.previews[i];
    $("position").textContent = `${i + 1} / ${state.previews.length}`;
    try {
      await draw(await V.getJson(`/view/api/jobs/${encodeURIComponent(jobId)}/frames/${p.frame}`));
    } catch (err) { failure(err); }
  }

  async function play() {
    state.playing = !state.playing;
    $("play").textContent = state.playing ? "Pause" : "Play";
    let i = Number($("scrub").value);
    if (state.playing && i >= state.previews.length - 1) i = 0;
    while (state.playing && i < state.previews.length) {
      $("scrub").value = String(i);
      const started = performance.now();
      await showAt(i);
      const here = state.previews[i], next = state.previews[i + 1];
      const gap = next && here.pts != null && next.pts != null ? (next.pts - here.pts) * 1000 : 100;
      await new Promise((r) => setTimeout(r, Math.max(0, gap - (performance.now() - started))));
      i += 1;
    }
    state.playing = false;
    $("play").textContent = "Play";
  }

  // -- commands, through the API's own routes --

  function nextId() {
    let top = 0;
    for (const id of state.known) top = Math.max(top, id);
    return top + 1;
  }

  async function prompt(body) {
    if (!state.job) return;
    const path = `${api(state.job.kind)}/${encodeURIComponent(jobId)}/tracks`;
    try {
      await V.send("POST", path, body);
      state.known.add(body.id);
      state.prompts.set(body.id, { points: body.points, labels: body.labels, box: body.box });
      message(`${body.action === "add" ? "added" : "re-prompted"} track ${body.id}: from the next processed frame`);
    } catch (err) { failure(err); }
  }

  async function removeTrack(id) {
    try {
      await V.send("DELETE", `${api(state.job.kind)}/${encodeURIComponent(jobId)}/tracks/${id}`);
      if (state.target === id) state.target = null;
      message(`removed track ${id}`);
    } catch (err) { failure(err); }
  }

  $("stop").addEventListener("click", async () => {
    try {
      await V.send("DELETE", `${api(state.job.kind)}/${encodeURIComponent(jobId)}`);
      message("stopping");
      refreshJob();
    } catch (err) { failure(err); }
  });
  $("discovery").addEventListener("click", async () => {
    const on = state.discoveryPaused; // paused now: resume it
    try {
      await V.send("POST", `${api(state.job.kind)}/${encodeURIComponent(jobId)}/discovery`, { on });
      state.discoveryPaused = !on;
      $("discovery").textContent = on ? "Pause discovery" : "Resume discovery";
      message(on ? "discovery resumes from the next frame" : "discovery paused from the next frame");
    } catch (err) { failure(err); }
  });
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "Resume" : "Pause";
  });
  $("play").addEventListener("click", play);
  $("scrub").addEventListener("input", () => { state.playing = false; showAt(Number($("scrub").value)); });

  // -- pointing: click = point, drag = box, shift-click = a point not on the object --

  function framePoint(event) {
    const rect = canvas.getBoundingClientRect();
    const x = ((event.clientX - rect.left) / rect.width) * canvas.width;
    const y = ((event.clientY - rect.top) / rect.height) * canvas.height;
    return [Math.round(Math.min(canvas.width - 1, Math.max(0, x))), Math.round(Math.min(canvas.height - 1, Math.max(0, y)))];
  }

  let down = null;
  canvas.addEventListener("mousedown", (event) => {
    down = { x: event.clientX, y: event.clientY, at: framePoint(event) };
  });
  canvas.addEventListener("mousemove", (event) => {
    const box = $("drag");
    if (!down) return;
    const rect = canvas.getBoundingClientRect();
    const [l, r] = [down.x, event.clientX].sort((a, b) => a - b);
    const [t, b] = [down.y, event.clientY].sort((a, b) => a - b);
    Object.assign(box.style, { display: "block", left: `${l - rect.left}px`, top: `${t - rect.top}px`,
      width: `${r - l}px`, height: `${b - t}px` });
  });
  window.addEventListener("mouseup", (event) => {
    if (!down) return;
    $("drag").style.display = "none";
    const start = down;
    down = null;
    if (event.target !== canvas && Math.hypot(event.clientX - start.x, event.clientY - start.y) < 6) return;
    const end = framePoint(event);
    const dragged = Math.hypot(event.clientX - start.x, event.clientY - start.y) >= 6;
    const target = state.target;
    if (event.shiftKey && !dragged) {
      if (target == null) { message("choose a track to re-prompt first (Re-prompt), then shift-click"); return; }
      const known = state.prompts.get(target) || { points: [], labels: [] };
      const points = [...(known.points || []), end];
      const labels = [...(known.labels || (known.points || []).map(() => 1)), 0];
      prompt({ id: target, action: "reprompt", points, labels, ...(known.box ? { box: known.box } : {}) });
      return;
    }
    const body = dragged
      ? { box: [Math.min(start.at[0], end[0]), Math.min(start.at[1], end[1]), Math.max(start.at[0], end[0]), Math.max(start.at[1], end[1])] }
      : { points: [end], labels: [1] };
    if (target != null) {
      prompt({ id: target, action: "reprompt", ...body });
      state.target = null;
      renderTracks();
    } else {
      prompt({ id: nextId(), action: "add", ...body });
    }
  });

  V.wireLogout();
  V.pause = (paused) => { state.paused = paused; };
  refreshJob();
  setInterval(refreshJob, 1000);
  follow();
})();
