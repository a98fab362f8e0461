// The live studio: added by `soundscape serve` to a render's page (soundscape/servers/studio.py).
// Each element's volume, pan, mute and kept take can be changed; the change is written into the
// scene file by the server, which re-renders what changed and sends the new state to every open
// page of the scene (server-sent events), so two tabs see each other's edits.
"use strict";
(() => {
  const boot = JSON.parse(document.getElementById("studio-boot").textContent);
  const q = (s) => encodeURIComponent(s);
  const scene = boot.scene, variant = boot.variant;
  const el = (tag, attrs, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k);
    return e;
  };
  const num = (x, d = 1) => (x === null || x === undefined) ? "-inf" : Number(x).toFixed(d);

  document.head.append(el("style", {text: `
    #studio { margin: 8px 0 12px; } #studio h2 { font-size: 1em; margin: 0 8px 0 0;
      display: inline; } #studio .hint { display: inline; opacity: .7; }
    #studio-status { margin-left: 12px; } #studio-status.bad { color: #ff6b6b; }
    #studio-status.busy { color: #ffc857; }
    #studio table { border-collapse: collapse; margin-top: 6px; }
    #studio td, #studio th { padding: 2px 10px 2px 0; text-align: left; }
    #studio input.volume { width: 260px; } #studio input.pan { width: 120px; }
    #studio output { display: inline-block; min-width: 3.5em; }`}));
  const panel = el("section", {id: "studio", class: "studio"},
    el("h2", {text: "studio"}),
    el("div", {class: "hint", text: `${scene}${variant ? " / " + variant : ""}: changes are ` +
                                    "written into the scene file and re-rendered"}),
    el("span", {id: "studio-status", role: "status"}));
  const table = el("table", {id: "studio-elements"});
  table.append(el("tr", {}, ...["element", "volume (dB)", "pan", "mute", "take", "LUFS",
                                 "dBTP"].map((h) => el("th", {text: h}))));
  panel.append(table);
  document.querySelector("header").after(panel);
  const status = (t, cls) => {
    const s = document.getElementById("studio-status");
    s.textContent = t;
    s.className = cls || "";
  };

  const rows = {};
  let editing = null;  // the control being dragged is not overwritten by a state
  async function post(url, body) {
    status("saving\u2026", "busy");
    const r = await fetch(url, {method: "POST", headers: {"content-type": "application/json"},
                                body: JSON.stringify(Object.assign({scene, variant}, body))});
    const data = await r.json();
    if (!r.ok) status(data.error, "bad"); else status("saved; rendering\u2026", "busy");
    return data;
  }
  function row(name) {
    if (rows[name]) return rows[name];
    const vol = el("input", {type: "range", min: "-60", max: "12", step: "0.5",
                             class: "volume", "aria-label": `volume of ${name}`});
    const volText = el("output", {class: "volume-value"});
    const pan = el("input", {type: "range", min: "-1", max: "1", step: "0.05", class: "pan",
                             "aria-label": `pan of ${name}`});
    const panText = el("output", {class: "pan-value"});
    const mute = el("input", {type: "checkbox", class: "mute", "aria-label": `mute ${name}`});
    const take = el("select", {class: "take", "aria-label": `take of ${name}`});
    const lufs = el("td", {class: "lufs"}), peak = el("td", {class: "dbtp"});
    const tr = el("tr", {"data-element": name}, el("td", {class: "name", text: name}),
                  el("td", {}, vol, " ", volText), el("td", {}, pan, " ", panText),
                  el("td", {}, mute), el("td", {}, take), lufs, peak);
    table.append(tr);
    vol.addEventListener("input", () => { editing = vol; volText.value = num(vol.value); });
    vol.addEventListener("change", () => {
      editing = null;
      post("/api/element", {element: name, volume_db: Number(vol.value)});
    });
    pan.addEventListener("input", () => { editing = pan; panText.value = num(pan.value, 2); });
    pan.addEventListener("change", () => {
      editing = null;
      post("/api/element", {element: name, pan: Number(pan.value)});
    });
    mute.addEventListener("change", () => post("/api/element", {element: name,
                                                                 mute: mute.checked}));
    take.addEventListener("change", () => post("/api/keep", {element: name,
                                                             seed: Number(take.value)}));
    return (rows[name] = {tr, vol, volText, pan, panText, mute, take, lufs, peak});
  }
  function setControls(elements) {
    for (const [name, e] of Object.entries(elements)) {
      const r = row(name);
      if (editing !== r.vol) {
        r.vol.value = String(e.volume_db === null ? -60 : e.volume_db);
        r.volText.value = num(e.volume_db);
      }
      if (editing !== r.pan) { r.pan.value = String(e.pan); r.panText.value = num(e.pan, 2); }
      r.mute.checked = e.mute;
      const seeds = [...new Set([e.seed, ...e.takes])].sort((a, b) => a - b);
      r.take.replaceChildren(...seeds.map((s) => el("option", {value: String(s),
                                                                text: `seed ${s}`})));
      r.take.value = String(e.seed);
      r.take.disabled = !e.prompt || seeds.length < 2;
      r.tr.dataset.volume = String(e.volume_db);
    }
  }
  const mtimes = {};
  function drawOverview(canvas, ov, D) {
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, canvas.width, canvas.height);
    if (!ov) return;
    const mid = canvas.height / 2, frac = (db) => Math.max(0, Math.min(1, (db + 60) / 60));
    const px = canvas.width * ov.bins * ov.seconds_per_bin / D;
    for (const [key, colour] of [["peak_db", "#5d7fa3"], ["rms_db", "#a9cdf2"]]) {
      g.fillStyle = colour;
      const vals = ov[key];
      for (let x = 0; x < Math.ceil(px); x++) {
        const a = Math.floor(x / px * vals.length);
        const b = Math.max(a + 1, Math.floor((x + 1) / px * vals.length));
        let v = -1000;
        for (let i = a; i < b && i < vals.length; i++) v = Math.max(v, vals[i]);
        const hh = frac(v) * (mid - 1);
        if (hh > 0) g.fillRect(x, mid - hh, 1, 2 * hh);
      }
    }
  }
  function applyState(s) {
    if ((s.variant || null) !== (variant || null)) return;
    const m = s.data.manifest;
    setControls(s.elements);
    for (const e of m.elements) {
      const r = row(e.element);
      r.lufs.textContent = num(e.loudness_lufs);
      r.peak.textContent = num(e.true_peak_dbtp);
      const lane = document.querySelector(`#timeline .lane[data-element="${e.element}"]`);
      if (lane) {
        lane.querySelector(".nums").textContent = `${num(e.loudness_lufs)} LUFS \u00b7 ` +
          `${num(e.true_peak_dbtp)} dBTP \u00b7 vol ${num(e.volume_db)} dB`;
        const canvas = lane.querySelector("canvas.overview");
        if (canvas) drawOverview(canvas, s.data.overviews[e.element], m.duration_s);
      }
      const changed = mtimes[e.element] !== undefined &&
                      mtimes[e.element] !== s.stem_mtimes[e.element];
      mtimes[e.element] = s.stem_mtimes[e.element];
      const player = document.querySelector(`audio[data-stem="${e.element}"]`);
      if (changed && player) player.src = `${e.stem}?v=${s.stem_mtimes[e.element]}`;
    }
    const mixNums = document.querySelector("#timeline .mixrow .nums");
    if (mixNums) mixNums.textContent = `${num(m.mix.loudness_lufs)} LUFS \u00b7 ` +
                                       `${num(m.mix.true_peak_dbtp)} dBTP`;
    const mixCanvas = document.querySelector("#timeline .mixrow canvas.overview");
    if (mixCanvas) drawOverview(mixCanvas, s.data.mix_overview, m.duration_s);
    const mixAudio = document.getElementById("mix-audio");
    if (mixAudio && !s.up_to_date) mixAudio.src = `${m.mix.file}?v=${s.version}`;
    document.body.dataset.studioVersion = String(s.version);
    status(`rendered (version ${s.version}); mix ${num(m.mix.loudness_lufs)} LUFS`, "ok");
  }
  applyState(boot.state);

  const events = new EventSource(`/api/studio/events?scene=${q(scene)}` +
                                 (variant ? `&variant=${q(variant)}` : ""));
  events.addEventListener("state", (ev) => applyState(JSON.parse(ev.data)));
  events.addEventListener("rendering", () => status("rendering\u2026", "busy"));
  events.addEventListener("edited", (ev) => {
    const d = JSON.parse(ev.data);
    status(`saved ${Object.keys(d.set).join(", ")}; rendering\u2026`, "busy");
  });
  events.addEventListener("error", (ev) => {
    if (ev.data) status(JSON.parse(ev.data).error, "bad");
  });
  window.studio = {applyState, rows};
})();
