// StepperView: generation one token at a time. Buttons send {kind} messages to the Python session;
// a generated token is clickable (rewind to just before it, its alternatives offered to force); hovering
// one shows its top-k candidates and entropy and colours the context by the chosen head's attention.
// Data: `steps` (JSON, one per generated token); `attention` float16, step s holding keys 0..position−1.

function render({ model, el }) {
  const started = performance.now();
  const root = node("div", "l3v l3v-stepper");
  el.appendChild(root);
  const tooltip = makeTooltip(root);

  const bar = node("div", "l3v-bar");
  const stepButton = kernelButton(model, "Step", "l3v-primary l3v-step", { kind: "step" });
  const temperature = node("input", "l3v-input l3v-temperature");
  temperature.type = "number";
  temperature.step = "0.1";
  temperature.min = "0";
  temperature.value = model.get("sample_temperature");
  temperature.title = "temperature of Sample (Step uses the session's sampling)";
  temperature.style.width = "56px";
  temperature.addEventListener("change", () => {
    model.set("sample_temperature", Number(temperature.value));
    model.save_changes();
  });
  const sampleButton = kernelButton(model, "Sample at T =", "l3v-sample", { kind: "sample" });
  const forceInput = node("input", "l3v-input l3v-force-text");
  forceInput.placeholder = "a token, e.g. ' Paris'";
  const forceButton = kernelButton(model, "Force", "l3v-force", () => ({ kind: "force", token: forceInput.value }));
  const backButton = kernelButton(model, "Back", "l3v-back", { kind: "back" });
  const resetButton = kernelButton(model, "Reset", "l3v-reset", { kind: "reset" });
  const sampleGroup = node("span", "l3v-control");
  sampleGroup.append(sampleButton, temperature);
  const forceGroup = node("span", "l3v-control");
  forceGroup.append(forceInput, forceButton);
  const headLabel = node("label", "l3v-control", "attention of layer ");
  const layerSelect = node("select", "l3v-layer");
  for (let l = 0; l < model.get("n_layers"); l++) layerSelect.append(new Option(String(l), String(l)));
  const headSelect = node("select", "l3v-head");
  for (let h = 0; h < model.get("n_heads"); h++) headSelect.append(new Option(String(h), String(h)));
  for (const [select, name] of [[layerSelect, "layer"], [headSelect, "head"]]) {
    if (model.get("standalone")) select.disabled = true;
    select.addEventListener("change", () => {
      model.set(name, Number(select.value));
      model.save_changes();
    });
  }
  headLabel.append(layerSelect, document.createTextNode(" head "), headSelect);
  bar.append(stepButton, sampleGroup, forceGroup, backButton, resetButton, headLabel);
  const alternatives = node("div", "l3v-alternatives");
  const legend = makeLegend("sequential");
  const text = node("div", "l3v-text");
  root.append(bar, makeStatus(model), alternatives, legend.element, text);

  let spans = [], rows = [];
  function draw() {
    const context = model.get("context");
    const steps = model.get("steps");
    const nPrompt = model.get("n_prompt");
    const flat = float16Array(model.get("attention"));
    rows = [];
    let offset = 0;
    for (const step of steps) {
      rows.push(flat.subarray(offset, offset + step.position));
      offset += step.position;
    }
    spans = context.map((piece, i) => {
      const span = node("span", i < nPrompt ? "l3v-token l3v-prompt" : "l3v-token l3v-generated", piece);
      span.dataset.i = i;
      if (i >= nPrompt) {
        span.dataset.step = i - nPrompt + 1;
        if (steps[i - nPrompt].forced) span.classList.add("l3v-forced");
      }
      return span;
    });
    text.replaceChildren(...spans);
    text.scrollTop = text.scrollHeight;
    layerSelect.value = String(model.get("layer"));
    headSelect.value = String(model.get("head"));
    stepButton.disabled = sampleButton.disabled = model.get("done") || model.get("standalone");
    backButton.disabled = !steps.length || model.get("standalone");
    drawAlternatives();
    if (steps.length) paint(steps.length);
    else legend.set(0, 1, "press Step: the context is then coloured by what produced the newest token attended to");
  }

  /** Colour the context by step s's attention row (s counted from 1). */
  function paint(s) {
    const row = rows[s - 1];
    let high = 0;
    for (let k = 1; k < row.length; k++) high = Math.max(high, row[k]);
    high = high || 1;
    for (let k = 0; k < spans.length; k++) {
      if (k < row.length) {
        const color = colorOf("sequential", row[k] / high);
        spans[k].style.background = color;
        spans[k].style.color = inkOn(color);
      } else {
        spans[k].style.background = "";
        spans[k].style.color = "";
      }
      spans[k].classList.toggle("l3v-current", k === model.get("n_prompt") + s - 1);
    }
    const note = row[0] > high ? "; the first token is above the scale" : "";
    legend.set(0, high, `attention that produced step ${s}, layer ${model.get("layer")} head ${model.get("head")}${note}`);
  }

  function drawAlternatives() {
    const options = model.get("alternatives");
    alternatives.replaceChildren();
    if (!options.length) return;
    alternatives.append(node("span", "", `step ${options[0].step} could have been:`));
    for (const option of options) {
      const button = kernelButton(model, `${option.label} ${fmt(option.prob)}`, "l3v-alternative", { kind: "force", token: option.id });
      alternatives.append(button);
    }
  }

  text.addEventListener("mouseover", (event) => {
    const span = event.target.closest(".l3v-generated");
    if (!span) return;
    const s = Number(span.dataset.step);
    const step = model.get("steps")[s - 1];
    paint(s);
    const lines = step.top.map(
      ([label, p]) => `<tr class="l3v-top${label === step.label ? " l3v-chosen" : ""}"><td>${escapeHtml(label)}</td><td class="l3v-num">${fmt(p)}</td></tr>`,
    );
    tooltip.show(
      `<div>step <b>${s}</b>: ${escapeHtml(step.label)} p = <span class="l3v-num l3v-prob">${fmt(step.prob)}</span>${step.forced ? " (forced)" : ""}</div>` +
        `<div>entropy <span class="l3v-num l3v-entropy">${fmt(step.entropy)}</span> nats · top ${step.top.length}:</div>` +
        `<table data-step="${s}">${lines.join("")}</table><div class="l3v-hint">click: rewind to before this token</div>`,
      event,
    );
  });
  text.addEventListener("mouseleave", () => {
    tooltip.hide();
    const steps = model.get("steps");
    if (steps.length) paint(steps.length);
  });
  text.addEventListener("click", (event) => {
    const span = event.target.closest(".l3v-generated");
    if (!span || model.get("standalone")) return;
    model.send({ kind: "rewind", step: Number(span.dataset.step) - 1 });
  });
  for (const name of ["steps", "attention", "alternatives", "done"]) model.on(`change:${name}`, draw);
  draw();
  root.dataset.renderMs = (performance.now() - started).toFixed(1);
  root.dataset.ready = "1";
}

export default { render };
