// TokenValuesView: the text coloured by one of several named per-token channels; the tooltip lists all.
// Data: `values` is float32 [channels, positions]; NaN means "no value here" (drawn grey).

function render({ model, el }) {
  const started = performance.now();
  const root = node("div", "l3v l3v-token-values");
  el.appendChild(root);
  const tooltip = makeTooltip(root);
  const names = model.get("channels");
  const tokens = model.get("tokens");
  const labels = model.get("labels");
  const n = tokens.length;
  const values = float32Array(model.get("values"));
  const at = (c, i) => values[c * n + i];

  const bar = node("div", "l3v-bar");
  const label = node("label", "l3v-control", "colour by ");
  const select = node("select", "l3v-channel");
  for (const name of names) select.append(new Option(name, name));
  select.value = model.get("channel");
  select.addEventListener("change", () => {
    model.set("channel", select.value);
    model.save_changes();
    paint();
  });
  label.append(select);
  const legend = makeLegend("sequential");
  bar.append(label, legend.element);
  const text = node("div", "l3v-text");
  const spans = tokens.map((token, i) => {
    const span = node("span", "l3v-token", token);
    span.dataset.i = i;
    return span;
  });
  text.append(...spans);
  root.append(bar, makeStatus(model), text);

  function paint() {
    const c = Math.max(0, names.indexOf(model.get("channel")));
    let low = Infinity, high = -Infinity;
    for (let i = 0; i < n; i++) {
      const v = at(c, i);
      if (Number.isFinite(v)) {
        low = Math.min(low, v);
        high = Math.max(high, v);
      }
    }
    if (!Number.isFinite(low)) low = high = 0;
    const signed = low < 0 && high > 0;
    const map = signed ? "diverging" : "sequential";
    const bound = Math.max(Math.abs(low), Math.abs(high)) || 1;
    const [from, to] = signed ? [-bound, bound] : [low, high > low ? high : low + 1];
    for (let i = 0; i < n; i++) {
      const color = colorOf(map, (at(c, i) - from) / (to - from));
      spans[i].style.background = color;
      spans[i].style.color = inkOn(color);
    }
    const fresh = makeLegend(map);
    legend.element.replaceWith(fresh.element);
    legend.element = fresh.element;
    legend.set = fresh.set;
    legend.set(from, to, `${names[c]}${signed ? " (diverging, centred at 0)" : ""}`);
    select.value = names[c];
  }

  text.addEventListener("mouseover", (event) => {
    const span = event.target.closest(".l3v-token");
    if (!span) return;
    const i = Number(span.dataset.i);
    const rows = names.map(
      (name, c) =>
        `<tr class="l3v-top${name === model.get("channel") ? " l3v-chosen" : ""}"><td>${escapeHtml(name)}</td>` +
        `<td class="l3v-num">${fmt(at(c, i))}</td></tr>`,
    );
    tooltip.show(`<div><b>${i}</b> ${escapeHtml(labels[i])}</div><table data-position="${i}">${rows.join("")}</table>`, event);
  });
  text.addEventListener("mouseleave", () => tooltip.hide());
  model.on("change:channel", paint);
  paint();
  root.dataset.renderMs = (performance.now() - started).toFixed(1);
  root.dataset.ready = "1";
}

export default { render };
