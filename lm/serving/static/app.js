// The inspector page: calls /api/info, /api/inspect and /api/stages of `lm serve` and draws
// what they return. Plain JavaScript and canvas: nothing is loaded from elsewhere, so the
// page works offline. The state is the list of token ids; the prompt box sets it, and the
// append buttons (or a click on a bar) add one id at a time.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { ids: null, promptLen: 0, last: null, info: null, busy: false };
// With --api-key, open the page as /#key=KEY: the key stays in the browser.
const apiKey = new URLSearchParams(location.hash.slice(1)).get("key");

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (apiKey) headers.Authorization = "Bearer " + apiKey;
  const r = await fetch(path, body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) });
  const data = await r.json();
  if (!r.ok) throw new Error((data.error && data.error.message) || r.statusText);
  return data;
}

function settings() {
  const num = (id) => Number($(id).value);
  const topK = Math.floor(num("top_k"));
  return {
    temperature: Math.max(0, num("temperature")),
    top_k: topK >= 1 ? topK : null,
    top_p: Math.min(1, Math.max(0.01, num("top_p") || 1)),
    min_p: Math.min(0.99, Math.max(0, num("min_p"))),
    seed: Math.max(0, Math.floor(num("seed"))),
  };
}

function status(text) { $("status").textContent = text || ""; }

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// ------------------------------------------------------------------ one inspection

async function inspect(ids) {
  if (state.busy) return;
  state.busy = true;
  status("…");
  try {
    const body = { ...settings() };
    if (ids) body.ids = ids; else body.prompt = $("prompt").value;
    const r = await api("/api/inspect", body);
    if (!ids) state.promptLen = r.ids.length;
    state.ids = r.ids;
    state.last = r;
    drawTokens(r);
    drawBars(r);
    drawAttention();
    status("");
  } catch (e) {
    status("error: " + e.message);
  } finally {
    state.busy = false;
  }
}

function drawTokens(r) {
  $("text").textContent = r.text;
  const box = $("tokens");
  box.replaceChildren();
  r.ids.forEach((id, t) => {
    const special = r.labels[t].startsWith("<") && r.labels[t].endsWith(">");
    const chip = el("span", "tok" + (special ? " special" : "") + (t >= state.promptLen ? " new" : ""));
    chip.append(el("span", "id", String(id)), el("span", "label", r.labels[t] || " "));
    chip.title = `position ${t}, id ${id}, piece ${JSON.stringify(r.pieces[t])}`;
    box.append(chip);
  });
}

function pct(p) { return p >= 0.001 || p === 0 ? (100 * p).toFixed(1) + "%" : p.toExponential(1); }

function drawBars(r) {
  const s = r.sampled;
  const g = r.greedy;
  const temp = settings().temperature;
  $("choice").textContent =
    `sampled (seed ${settings().seed}${temp === 0 ? ", greedy" : ""}): ${JSON.stringify(s.label)} (id ${s.id}, ` +
    `p=${s.p.toFixed(4)} as drawn, model p=${s.model_p.toFixed(4)})   ·   greedy: ` +
    `${JSON.stringify(g.label)} (id ${g.id}, model p=${g.model_p.toFixed(4)})`;
  const k = r.kept;
  const parts = Object.entries(k).map(([name, n]) => `${name}: ${n} left`);
  $("kept").textContent = `of ${r.vocab_size} tokens — ` + parts.join(", ");
  const box = $("bars");
  box.replaceChildren();
  const max = Math.max(...r.top.map((t) => t.p), 1e-9);
  for (const t of r.top) {
    const row = el("div", "bar" + (t.removed_by ? " removed" : ""));
    row.dataset.id = t.id;
    const label = el("span", "label", t.label);
    label.title = `id ${t.id}, piece ${JSON.stringify(t.piece)}, model p ${pct(t.model_p)}`;
    const track = el("span", "track");
    const fill = el("span", "fill");
    fill.style.display = "block";
    fill.style.width = (100 * t.p / max).toFixed(1) + "%";
    track.append(fill);
    const num = el("span", "num", pct(t.final_p));
    const why = el("span", "why", t.removed_by ? "removed by " + t.removed_by : "");
    row.append(label, track, num, why);
    row.addEventListener("click", () => append(t.id));
    box.append(row);
  }
}

// ------------------------------------------------------------------ attention heatmap

function fillSelect(sel, n, prefix) {
  const keep = sel.value;
  sel.replaceChildren();
  for (let i = 0; i < n; i++) sel.append(new Option(prefix + i, String(i)));
  if (keep && Number(keep) < n) sel.value = keep;
}

function heat(v, hue) {
  // white (0) to a saturated colour (1); hue 220 blue, or signed red/blue for stages
  const l = 100 - 55 * Math.min(1, Math.max(0, v));
  return `hsl(${hue}, 70%, ${l}%)`;
}

function drawAttention() {
  const r = state.last;
  if (!r) return;
  const a = r.attention;
  const L = a.weights.length, N = a.weights[0].length;
  fillSelect($("layer"), L, "layer ");
  fillSelect($("head"), N, "head ");
  const w = a.weights[Number($("layer").value || 0)][Number($("head").value || 0)];
  const T = w.length;
  const canvas = $("attention");
  const labelSpace = 90;
  const cell = Math.max(6, Math.min(28, Math.floor(560 / T)));
  canvas.width = labelSpace + cell * T + 4;
  canvas.height = labelSpace + cell * T + 4;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  for (let q = 0; q < T; q++) {
    for (let k = 0; k < T; k++) {
      ctx.fillStyle = k > q ? "#f4f4f4" : heat(w[q][k], 220);
      ctx.fillRect(labelSpace + k * cell, labelSpace + q * cell, cell - 1, cell - 1);
    }
  }
  ctx.fillStyle = "#333";
  ctx.font = `${Math.min(12, cell)}px "DejaVu Sans Mono", "lm-cjk", monospace`;
  ctx.textBaseline = "middle";
  const every = Math.ceil(10 / cell);
  for (let t = 0; t < T; t += every) {
    const lab = a.labels[t].slice(0, 10);
    ctx.textAlign = "right";
    ctx.fillText(lab, labelSpace - 4, labelSpace + t * cell + cell / 2);
    ctx.save();
    ctx.translate(labelSpace + t * cell + cell / 2, labelSpace - 4);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left";
    ctx.fillText(lab, 0, 0);
    ctx.restore();
  }
  canvas.dataset.drawn = String(T);
  canvas.title = a.offset ? `the last ${T} positions (from ${a.offset})` : "";
}

// ------------------------------------------------------------------ stepping

async function append(id) {
  if (!state.ids) await inspect(null);
  if (state.last && state.last.room < 1) { status("the context is full"); return; }
  await inspect([...state.ids, id]);
}

async function generate(n) {
  for (let i = 0; i < n; i++) {
    if (!state.last || state.last.room < 1) break;
    if (state.last.is_eos) { status("end of text"); break; }
    await append(state.last.sampled.id);
  }
}

// ------------------------------------------------------------------ stages

async function showStages() {
  status("stages…");
  try {
    const body = { ...settings(), max_new: 40 };
    if (state.ids) body.ids = state.ids.slice(0, state.promptLen || state.ids.length);
    else body.prompt = $("prompt").value;
    const r = await api("/api/stages", body);
    $("stages").hidden = false;
    $("stages-lines").textContent = r.lines.join("\n");
    drawStageMaps(r);
    status("");
  } catch (e) {
    status("error: " + e.message);
  }
}

function drawMatrix(m, labels, title, signed) {
  const fig = el("figure");
  const T = m.length, W = m[0].length;
  const cw = Math.max(1, Math.min(10, Math.floor(240 / W))), ch = 12, left = 60;
  const c = el("canvas");
  c.width = left + cw * W;
  c.height = ch * T;
  const ctx = c.getContext("2d");
  let lim = 1e-9;
  for (const row of m) for (const v of row) lim = Math.max(lim, Math.abs(v));
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < W; j++) {
      const v = m[t][j] / lim;
      ctx.fillStyle = signed ? heat(Math.abs(v), v >= 0 ? 0 : 220) : heat(v, 220);
      ctx.fillRect(left + j * cw, t * ch, cw, ch - 1);
    }
    ctx.fillStyle = "#333";
    ctx.font = '10px "DejaVu Sans Mono", "lm-cjk", monospace';
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ctx.fillText(labels[t].slice(0, 8), left - 3, t * ch + ch / 2);
  }
  fig.append(c, el("figcaption", "", title));
  return fig;
}

function drawStageMaps(r) {
  const box = $("stage-maps");
  box.replaceChildren();
  if (!r.matrices || !Object.keys(r.matrices).length) {
    box.append(el("p", "", "matrices left out: " + (r.left_out || "")));
    return;
  }
  const names = Object.keys(r.matrices).filter((n) => n !== "attention" && n !== "embedded");
  box.append(drawMatrix(r.matrices.embedded[0], r.labels, "input embeddings", true));
  const L = r.matrices.x_in.length;
  for (let l = 0; l < L; l++) {
    for (const n of names) box.append(drawMatrix(r.matrices[n][l], r.labels, `layer ${l}: ${n}`, true));
    r.matrices.attention[l].forEach((w, h) => box.append(drawMatrix(w, r.labels, `layer ${l}: attention head ${h}`, false)));
  }
}

// ------------------------------------------------------------------ wiring

async function main() {
  // canvas text does not wait for web fonts: load the CJK one before anything is drawn
  try { await document.fonts.load('12px "lm-cjk"', "こ"); } catch (e) { /* drawn without it */ }
  try {
    const info = await api("/api/info");
    state.info = info;
    $("model").textContent = `${info.model}: ${info.n_layers} layers × ${info.n_heads} heads, d=${info.d_model}, ` +
      `${info.vocab_size} tokens (${info.tokenizer}), context ${info.max_seq_len}` + (info.task ? `, ${info.task}` : "");
  } catch (e) {
    status("error: " + e.message);
    return;
  }
  $("run").addEventListener("click", () => inspect(null));
  $("append-sampled").addEventListener("click", () => state.last && append(state.last.sampled.id));
  $("append-greedy").addEventListener("click", () => state.last && append(state.last.greedy.id));
  $("generate").addEventListener("click", () => generate(10));
  $("undo").addEventListener("click", () => state.ids && state.ids.length > 1 && inspect(state.ids.slice(0, -1)));
  $("stages-button").addEventListener("click", showStages);
  $("layer").addEventListener("change", drawAttention);
  $("head").addEventListener("change", drawAttention);
  for (const id of ["temperature", "top_k", "top_p", "min_p", "seed"]) {
    $(id).addEventListener("change", () => state.ids && inspect(state.ids));
  }
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) inspect(null);
  });
  // ?prompt=...&temperature=... fill the form and inspect at once (links, tests)
  const q = new URLSearchParams(location.search);
  for (const id of ["temperature", "top_k", "top_p", "min_p", "seed"]) if (q.has(id)) $(id).value = q.get(id);
  if (q.has("prompt")) {
    $("prompt").value = q.get("prompt");
    await inspect(null);
  }
}

main();
