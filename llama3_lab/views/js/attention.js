// AttentionView: the prompt as text; hover a token for its attention row (as a query) or column (as a key)
// in the chosen head; the head's whole pattern on a canvas; a thumbnail of every head of the layer.
// Data: `head_pattern` is the chosen head's causal lower triangle as float16, row q holding keys 0..q at
// offset q(q+1)/2; `thumbs` is uint8 [heads, T, T], each head max-pooled, 255 meaning weight 1.

const PATTERN_CSS = 340;
const THUMB_CSS = 56;

function render({ model, el }) {
  const started = performance.now();
  const root = node("div", "l3v l3v-attention");
  el.appendChild(root);
  const tooltip = makeTooltip(root);

  // -- controls ---------------------------------------------------------------------------------------
  const bar = node("div", "l3v-bar");
  const layerLabel = node("label", "l3v-control", "layer ");
  const layerSelect = node("select", "l3v-layer");
  for (let l = 0; l < model.get("n_layers"); l++) layerSelect.append(new Option(String(l), String(l)));
  layerSelect.value = String(model.get("layer"));
  if (model.get("standalone")) {
    layerSelect.disabled = true;
    layerSelect.title = "needs the Python kernel (this is a saved page)";
  }
  layerSelect.addEventListener("change", () => {
    model.set("layer", Number(layerSelect.value));
    model.save_changes();
  });
  layerLabel.append(layerSelect);
  const modeLabel = node("label", "l3v-control");
  const modeSelect = node("select", "l3v-mode");
  modeSelect.append(
    new Option("hovered token as query: where it attends (its row)", "row"),
    new Option("hovered token as key: what attends to it (its column)", "column"),
  );
  modeSelect.value = model.get("mode");
  modeSelect.addEventListener("change", () => {
    model.set("mode", modeSelect.value);
    model.save_changes();
    showSelection();
  });
  modeLabel.append(modeSelect);
  const sinkLabel = node("label", "l3v-control");
  const sinkBox = node("input", "l3v-ignore-first");
  sinkBox.type = "checkbox";
  sinkBox.checked = true;
  sinkBox.addEventListener("change", () => showSelection());
  sinkLabel.append(sinkBox, document.createTextNode(" colour scale ignores the first token"));
  bar.append(layerLabel, modeLabel, sinkLabel);
  root.append(bar, makeStatus(model));

  // -- text, pattern, thumbnails ----------------------------------------------------------------------
  const body = node("div", "l3v-row");
  const text = node("div", "l3v-text");
  const side = node("div", "l3v-side");
  const textLegend = makeLegend("sequential");
  const picture = node("div", "l3v-picture");
  const canvas = makeCanvas("l3v-pattern", PATTERN_CSS, PATTERN_CSS);
  const overlay = makeCanvas("l3v-overlay", PATTERN_CSS, PATTERN_CSS);
  picture.append(canvas, overlay);
  const patternLegend = makeLegend("sequential");
  const thumbs = node("div", "l3v-thumbs");
  side.append(picture, patternLegend.element, thumbs);
  const textColumn = node("div", "l3v-text-column");
  textColumn.append(textLegend.element, text);
  body.append(textColumn, side);
  root.append(body);

  const tokens = model.get("tokens");
  const labels = model.get("labels");
  const n = tokens.length;
  const fragment = document.createDocumentFragment();
  const spans = new Array(n);
  for (let i = 0; i < n; i++) {
    const span = node("span", "l3v-token", tokens[i]);
    span.dataset.i = i;
    spans[i] = span;
    fragment.append(span);
  }
  text.append(fragment);

  // Only the tokens on screen are repainted on hover (a 4,096-token prompt is mostly scrolled away);
  // a token scrolled into view is painted with the current line as it appears.
  const visible = new Set();
  let shownHigh = 1;
  function paintToken(j) {
    const color = colorOf("sequential", values[j] / shownHigh);
    spans[j].style.background = Number.isNaN(values[j]) ? "" : color;
    spans[j].style.color = Number.isNaN(values[j]) ? "" : inkOn(color);
  }
  const watcher = new IntersectionObserver(
    (entries) => {
      for (const entry of entries) {
        const j = Number(entry.target.dataset.i);
        if (entry.isIntersecting) {
          visible.add(j);
          paintToken(j);
        } else visible.delete(j);
      }
    },
    { root: text, rootMargin: "200px 0px" },
  );
  for (const span of spans) watcher.observe(span);

  let weights = new Float32Array(0);
  const rowStart = (q) => (q * (q + 1)) / 2;
  const weight = (q, k) => (k <= q ? weights[rowStart(q) + k] : NaN);
  const values = new Float32Array(n).fill(NaN);
  let current = -1;

  /** Position `i`'s row (mode "row") or column (mode "column") into `values`; returns the shown range. */
  function lineOf(i) {
    values.fill(NaN);
    if (model.get("mode") === "row") {
      const start = rowStart(i);
      for (let k = 0; k <= i; k++) values[k] = weights[start + k];
      return [0, i + 1];
    }
    for (let q = i; q < n; q++) values[q] = weights[rowStart(q) + i];
    return [i, n];
  }

  /** The top `count` entries of the current line, best first: [[position, weight], ...]. */
  function topOf(range, count) {
    const entries = [];
    for (let j = range[0]; j < range[1]; j++) entries.push([j, values[j]]);
    entries.sort((a, b) => b[1] - a[1]);
    return entries.slice(0, count);
  }

  function paintLine(i) {
    const range = lineOf(i);
    let high = 0;
    const skipFirst = sinkBox.checked && model.get("mode") === "row" && range[1] > 1;
    for (let j = range[0]; j < range[1]; j++) if (!(skipFirst && j === 0) && values[j] > high) high = values[j];
    shownHigh = high || 1;
    high = shownHigh;
    for (const j of visible) paintToken(j);
    if (current >= 0) spans[current].classList.remove("l3v-current");
    spans[i].classList.add("l3v-current");
    current = i;
    const what = model.get("mode") === "row" ? `query ${i} → keys 0..${i}` : `key ${i} ← queries ${i}..${n - 1}`;
    const note = skipFirst && values[0] > high ? " (the first token is above the scale)" : "";
    textLegend.set(0, high, `text: weight, ${what}, head ${model.get("head")}${note}`);
    drawOverlay(i);
    return range;
  }

  function tooltipHtml(i, range) {
    const row = model.get("mode") === "row";
    const lines = topOf(range, 5).map(
      ([j, w]) => `<tr class="l3v-top"><td>${j}</td><td>${escapeHtml(labels[j])}</td><td class="l3v-num">${fmt(w)}</td></tr>`,
    );
    const heading = row ? "attends to" : "attended by";
    return (
      `<div><b>${i}</b> ${escapeHtml(labels[i])} · layer ${model.get("layer")} head ${model.get("head")}</div>` +
      `<div>${heading} (top 5):</div><table data-position="${i}" data-mode="${model.get("mode")}">${lines.join("")}</table>`
    );
  }

  text.addEventListener("mouseover", (event) => {
    const span = event.target.closest(".l3v-token");
    if (!span) return;
    const i = Number(span.dataset.i);
    const range = paintLine(i);
    tooltip.show(tooltipHtml(i, range), event);
  });
  text.addEventListener("mouseleave", () => {
    tooltip.hide();
    showSelection();
  });
  text.addEventListener("click", (event) => {
    const span = event.target.closest(".l3v-token");
    if (!span) return;
    model.set("query", Number(span.dataset.i));
    model.save_changes();
    showSelection();
  });

  function selected() {
    const q = model.get("query");
    return q >= 0 && q < n ? q : n - 1;
  }

  function showSelection() {
    const q = selected();
    for (const span of text.querySelectorAll(".l3v-selected")) span.classList.remove("l3v-selected");
    spans[q].classList.add("l3v-selected");
    paintLine(q);
  }

  // -- the whole pattern, pooled to the canvas's pixels ------------------------------------------------
  function drawPattern() {
    const size = Math.min(n, canvas.width);
    const pooled = new Float32Array(size * size).fill(-1); // -1: no visible cell (all above the diagonal)
    const scale = size / n;
    for (let q = 0; q < n; q++) {
      const y = Math.floor(q * scale) * size;
      const start = rowStart(q);
      for (let k = 0; k <= q; k++) {
        const cell = y + Math.floor(k * scale);
        const w = weights[start + k];
        if (w > pooled[cell]) pooled[cell] = w;
      }
    }
    const image = new ImageData(size, size);
    const table = COLORMAPS.sequential.map(rgbOf);
    for (let c = 0; c < pooled.length; c++) {
      const w = pooled[c];
      const rgb = w < 0 ? [217, 217, 217] : table[Math.max(0, Math.min(255, Math.round(w * 255)))];
      image.data.set(rgb, 4 * c);
      image.data[4 * c + 3] = 255;
    }
    const buffer = document.createElement("canvas");
    buffer.width = buffer.height = size;
    buffer.getContext("2d").putImageData(image, 0, 0);
    const context = canvas.getContext("2d");
    context.imageSmoothingEnabled = false;
    context.clearRect(0, 0, canvas.width, canvas.height);
    context.drawImage(buffer, 0, 0, canvas.width, canvas.height);
    const block = Math.ceil(n / size);
    patternLegend.set(0, 1, `pattern: weight${block > 1 ? `, max over ${block}×${block} blocks` : ""} (query ↓, key →)`);
  }

  function drawOverlay(i) {
    const context = overlay.getContext("2d");
    context.clearRect(0, 0, overlay.width, overlay.height);
    const cell = overlay.width / n;
    const thick = Math.max(cell, 2);
    context.strokeStyle = "#ff2d55";
    context.lineWidth = Math.max(1, (window.devicePixelRatio || 1) * 1.5);
    if (model.get("mode") === "row") context.strokeRect(0, i * cell, (i + 1) * cell, thick);
    else context.strokeRect(i * cell, i * cell, thick, overlay.height - i * cell);
  }

  overlay.addEventListener("mousemove", (event) => {
    const box = overlay.getBoundingClientRect();
    const q = Math.min(n - 1, Math.floor(((event.clientY - box.top) / box.height) * n));
    const k = Math.min(n - 1, Math.floor(((event.clientX - box.left) / box.width) * n));
    const w = weight(q, k);
    tooltip.show(
      `query <b>${q}</b> ${escapeHtml(labels[q])} → key <b>${k}</b> ${escapeHtml(labels[k])}: ` +
        (Number.isNaN(w) ? "masked (a future key)" : `<span class="l3v-num">${fmt(w)}</span>`),
      event,
    );
  });
  overlay.addEventListener("mouseleave", () => tooltip.hide());
  overlay.addEventListener("click", (event) => {
    const box = overlay.getBoundingClientRect();
    model.set("query", Math.min(n - 1, Math.floor(((event.clientY - box.top) / box.height) * n)));
    model.save_changes();
    showSelection();
  });

  // -- thumbnails: one per head, click to choose ------------------------------------------------------
  function drawThumbs() {
    thumbs.replaceChildren();
    const size = model.get("thumb_size");
    const data = bytesOf(model.get("thumbs"));
    const sinks = model.get("sink");
    const table = COLORMAPS.sequential.map(rgbOf);
    for (let h = 0; h < model.get("n_heads"); h++) {
      const figure = node("figure", "l3v-thumb" + (h === model.get("head") ? " l3v-selected" : ""));
      figure.dataset.head = h;
      const thumb = makeCanvas("", THUMB_CSS, THUMB_CSS);
      const image = new ImageData(size, size);
      for (let c = 0; c < size * size; c++) {
        const value = data[h * size * size + c];
        const rgb = value === 0 && c % size > Math.floor(c / size) ? [217, 217, 217] : table[value];
        image.data.set(rgb, 4 * c);
        image.data[4 * c + 3] = 255;
      }
      const buffer = document.createElement("canvas");
      buffer.width = buffer.height = size;
      buffer.getContext("2d").putImageData(image, 0, 0);
      const context = thumb.getContext("2d");
      context.imageSmoothingEnabled = false;
      context.drawImage(buffer, 0, 0, thumb.width, thumb.height);
      const caption = node("figcaption", "", `h${h} · ${sinks[h].toFixed(2)}`);
      figure.append(thumb, caption);
      if (model.get("standalone") && h !== model.get("head")) {
        figure.classList.add("l3v-disabled");
        figure.title = "needs the Python kernel (this is a saved page)";
      } else {
        figure.title = `head ${h}: mean attention on the first token ${sinks[h].toFixed(3)}`;
        figure.addEventListener("click", () => {
          model.set("head", h);
          model.save_changes();
        });
      }
      thumbs.append(figure);
    }
  }

  function load() {
    weights = float16Array(model.get("head_pattern"));
    layerSelect.value = String(model.get("layer"));
    drawPattern();
    drawThumbs();
    showSelection();
  }
  model.on("change:head_pattern", load);
  model.on("change:thumbs", drawThumbs);
  model.on("change:query", showSelection);
  model.on("change:head", drawThumbs);
  load();
  root.dataset.renderMs = (performance.now() - started).toFixed(1);
  root.dataset.ready = "1";
}

export default { render };
