// What every page of the viewer shares: requests (with the CSRF header), colours, COCO RLE.
"use strict";
(function () {
  // Each track its own colour, by track id: pipeline/render.py's PALETTE (a test holds them equal),
  // so a rendered video and the page agree. Shared with the browser tests through colour().
  const PALETTE = [
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
  ];

  function colour(trackId) {
    return PALETTE[(Math.max(1, trackId) - 1) % PALETTE.length];
  }

  async function request(method, url, body) {
    const init = { method, headers: { "X-Samstream-Viewer": "1" }, credentials: "same-origin" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const answer = await fetch(url, init);
    if (answer.status === 401) {
      location.reload(); // the session expired: the page comes back as the login form
      throw new Error("signed out");
    }
    const text = await answer.text();
    const data = text ? JSON.parse(text) : null;
    if (!answer.ok) {
      const detail = data && data.detail;
      throw new Error(typeof detail === "string" ? detail : `HTTP ${answer.status}: ${text}`);
    }
    return data;
  }

  // COCO's compressed RLE string -> run lengths (pycocotools' rleFrString).
  function rleCounts(s) {
    const counts = [];
    let p = 0;
    while (p < s.length) {
      let x = 0, k = 0, more = 1;
      while (more) {
        const c = s.charCodeAt(p) - 48;
        x |= (c & 0x1f) << (5 * k);
        more = c & 0x20;
        p += 1;
        k += 1;
        if (!more && (c & 0x10)) x |= -1 << (5 * k);
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    return counts;
  }

  // A track's mask as a (height * width) Uint8Array, row-major, 1 inside. COCO runs go down the
  // columns (Fortran order), starting with a run of zeros.
  function decodeRle(rle) {
    const [h, w] = rle.size;
    const mask = new Uint8Array(h * w);
    const counts = typeof rle.counts === "string" ? rleCounts(rle.counts) : rle.counts;
    let i = 0;
    for (let r = 0; r < counts.length; r += 1) {
      const n = counts[r];
      if (r % 2 === 1) {
        for (let j = i; j < i + n; j += 1) {
          const x = Math.floor(j / h), y = j - x * h;
          mask[y * w + x] = 1;
        }
      }
      i += n;
    }
    return mask;
  }

  function fmtFps(fps) { return fps == null ? "–" : fps.toFixed(1); }
  function fmtLatency(s) { return s == null ? "–" : `${Math.round(s * 1000)} ms`; }

  function wireLogout() {
    const button = document.getElementById("logout");
    if (!button) return;
    button.addEventListener("click", async () => {
      await fetch("/view/logout", { method: "POST", headers: { "X-Samstream-Viewer": "1" } });
      location.assign("/view");
    });
  }

  window.samstreamViewer = {
    colour, decodeRle, rleCounts, fmtFps, fmtLatency, wireLogout,
    getJson: (url) => request("GET", url),
    send: request,
    drawn: [], // one record per frame drawn: {frame, capture_time, drawn_at, tracks}
    shown: null, // the frame on screen: {frame, tracks: [{id, state, bbox}]}
  };
})();
