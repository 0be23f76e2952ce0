// LogitLensView: layers (upward) × a window of positions, each cell coloured by the probability the layer
// gives to the target (the final prediction at that position, or a chosen token); hover for the top 5.
// Data: `values` float32 [layers, width]; `top_probs` float32 [layers, width, k]; `top_labels` the k
// token labels of every cell, flattened in the same order.

function render({ model, el }) {
  const started = performance.now();
  const root = node("div", "l3v l3v-logit-lens");
  el.appendChild(root);
  const tooltip = makeTooltip(root);
  const labels = model.get("labels");
  const n = labels.length;

  const bar = node("div", "l3v-bar");
  const startLabel = node("label", "l3v-control", "first position ");
  const start = node("input", "l3v-start");
  start.type = "range";
  start.min = 0;
  const startText = node("span", "l3v-num");
  startLabel.append(start, startText);
  const targetLabel = node("label", "l3v-control", "colour: probability of ");
  const target = node("input", "l3v-input l3v-target");
  target.placeholder = "final prediction";
  target.title = "a token (its text, e.g. ' Paris'); empty: each position's final prediction";
  targetLabel.append(target);
  const kernelOnly = model.get("standalone");
  for (const control of [start, target]) {
    control.disabled = kernelOnly;
    if (kernelOnly) control.title = "needs the Python kernel (this is a saved page)";
  }
  start.addEventListener("change", () => {
    model.set("start", Number(start.value));
    model.save_changes();
  });
  target.addEventListener("change", () => {
    model.set("target", target.value);
    model.save_changes();
  });
  const legend = makeLegend("sequential");
  bar.append(startLabel, targetLabel, legend.element);
  const scroll = node("div", "l3v-grid-scroll");
  const table = node("table", "l3v-grid");
  scroll.append(table);
  root.append(bar, makeStatus(model), scroll);

  let values, probs, cells;
  function draw() {
    const layers = model.get("n_layers"), width = model.get("width"), first = model.get("start");
    const k = model.get("k");
    values = float32Array(model.get("values"));
    probs = float32Array(model.get("top_probs"));
    const tops = model.get("top_labels");
    start.max = Math.max(0, n - width);
    start.value = first;
    startText.textContent = ` ${first}..${first + width - 1} of 0..${n - 1}`;
    target.value = model.get("target");
    table.replaceChildren();
    cells = [];
    for (let layer = layers - 1; layer >= 0; layer--) {
      const row = node("tr");
      row.append(node("th", "", `L${layer}`));
      for (let j = 0; j < width; j++) {
        const cell = node("td", "l3v-cell", tops[(layer * width + j) * k]);
        const color = colorOf("sequential", values[layer * width + j]);
        cell.style.background = color;
        cell.style.color = inkOn(color);
        cell.dataset.layer = layer;
        cell.dataset.position = first + j;
        row.append(cell);
        cells.push(cell);
      }
      table.append(row);
    }
    const footer = node("tr");
    footer.append(node("th", "", "input"));
    for (let j = 0; j < width; j++) {
      const th = node("th", "l3v-input-token", labels[first + j]);
      th.title = `position ${first + j}`;
      footer.append(th);
    }
    table.append(footer);
    legend.set(0, 1, model.get("target") ? `p(${model.get("target")})` : "p(final prediction at that position)");
    markSelection();
  }

  function markSelection() {
    for (const cell of cells) {
      const chosen = Number(cell.dataset.layer) === model.get("layer") && Number(cell.dataset.position) === model.get("position");
      cell.classList.toggle("l3v-selected", chosen);
    }
  }

  table.addEventListener("mouseover", (event) => {
    const cell = event.target.closest(".l3v-cell");
    if (!cell) return;
    const layer = Number(cell.dataset.layer), position = Number(cell.dataset.position);
    const width = model.get("width"), k = model.get("k"), j = position - model.get("start");
    const tops = model.get("top_labels");
    const rows = [];
    for (let r = 0; r < k; r++) {
      const index = (layer * width + j) * k + r;
      rows.push(`<tr class="l3v-top"><td>${escapeHtml(tops[index])}</td><td class="l3v-num">${fmt(probs[index])}</td></tr>`);
    }
    const what = model.get("target") ? `p(${escapeHtml(model.get("target"))})` : "p(final prediction)";
    tooltip.show(
      `<div>layer <b>${layer}</b> at position <b>${position}</b> ${escapeHtml(labels[position])}</div>` +
        `<div>${what} = <span class="l3v-num l3v-value">${fmt(values[layer * width + j])}</span>; top ${k}:</div>` +
        `<table data-layer="${layer}" data-position="${position}">${rows.join("")}</table>`,
      event,
    );
  });
  table.addEventListener("mouseleave", () => tooltip.hide());
  table.addEventListener("click", (event) => {
    const cell = event.target.closest(".l3v-cell");
    if (!cell) return;
    model.set("layer", Number(cell.dataset.layer));
    model.set("position", Number(cell.dataset.position));
    model.save_changes();
    markSelection();
  });
  model.on("change:values", draw);
  model.on("change:layer", markSelection);
  model.on("change:position", markSelection);
  draw();
  root.dataset.renderMs = (performance.now() - started).toFixed(1);
  root.dataset.ready = "1";
}

export default { render };
