// The job and stream list: polled every second from /view/api/jobs.
"use strict";
(function () {
  const V = window.samstreamViewer;
  const body = document.querySelector("#jobs tbody");

  function row(job) {
    const tr = document.createElement("tr");
    const link = document.createElement("a");
    link.href = `/view/jobs/${encodeURIComponent(job.id)}`;
    link.textContent = job.id;
    const progress = job.frames_total ? `${job.frames_done} / ${job.frames_total}` : `${job.frames_done}`;
    const cells = [link, job.kind, job.status, progress, V.fmtFps(job.fps), V.fmtLatency(job.latency_s),
      String(job.dropped || 0), job.source];
    for (const value of cells) {
      const td = document.createElement("td");
      if (value instanceof Node) td.appendChild(value); else td.textContent = value;
      tr.appendChild(td);
    }
    tr.className = `status-${job.status}`;
    return tr;
  }

  async function refresh() {
    try {
      const data = await V.getJson("/view/api/jobs");
      body.replaceChildren(...data.items.slice().reverse().map(row));
      document.getElementById("empty").hidden = data.items.length > 0;
      document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      document.getElementById("error").textContent = "";
    } catch (err) {
      document.getElementById("error").textContent = String(err.message || err);
    }
    setTimeout(refresh, 1000);
  }
  V.wireLogout();
  refresh();
})();
