// Helpers shared by every llama3-lab view. llama3_lab/views/_base.py puts this file (after the COLORMAPS
// constant) in front of each view's own module, so each view is one plain ES module with no imports.

/** The bytes of a binary traitlet (anywidget hands a DataView; the saved page does too). */
function bytesOf(value) {
  if (!value) return new Uint8Array(0);
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
}

let HALF_TABLE = null;
/** float16 (little-endian) bytes as a Float32Array, through a 65,536-entry table. */
function float16Array(value) {
  if (!HALF_TABLE) {
    HALF_TABLE = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const sign = h & 0x8000 ? -1 : 1;
      const exponent = (h >> 10) & 0x1f;
      const fraction = h & 0x3ff;
      HALF_TABLE[h] =
        exponent === 0
          ? sign * 2 ** -14 * (fraction / 1024)
          : exponent === 31
            ? fraction ? NaN : sign * Infinity
            : sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
    }
  }
  const bytes = bytesOf(value);
  const n = bytes.length >> 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = HALF_TABLE[bytes[2 * i] | (bytes[2 * i + 1] << 8)];
  return out;
}

/** float32 (little-endian) bytes as a Float32Array (copied: a comm buffer need not be aligned). */
function float32Array(value) {
  const bytes = bytesOf(value);
  const copy = new Uint8Array(bytes.length);
  copy.set(bytes);
  return new Float32Array(copy.buffer);
}

function node(tag, className, text) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}

/** The CSS colour of t in [0, 1] on one of matplotlib's maps ("sequential" or "diverging"). */
function colorOf(map, t) {
  const table = COLORMAPS[map];
  if (!Number.isFinite(t)) return "#d9d9d9";
  const i = Math.max(0, Math.min(table.length - 1, Math.round(t * (table.length - 1))));
  return table[i];
}

/** Black or white, whichever reads better on a background colour "#rrggbb". */
function inkOn(hex) {
  const r = parseInt(hex.slice(1, 3), 16), g = parseInt(hex.slice(3, 5), 16), b = parseInt(hex.slice(5, 7), 16);
  return 0.299 * r + 0.587 * g + 0.114 * b > 140 ? "#000" : "#fff";
}

function rgbOf(hex) {
  return [parseInt(hex.slice(1, 3), 16), parseInt(hex.slice(3, 5), 16), parseInt(hex.slice(5, 7), 16)];
}

/** A number as the views print it: 3 decimals, or 3 significant digits when small. */
function fmt(x) {
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  return a !== 0 && a < 0.001 ? x.toExponential(2) : x.toFixed(3);
}

function escapeHtml(text) {
  return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** A tooltip inside `root`: show(html, event) near the pointer, hide(). */
function makeTooltip(root) {
  const tip = node("div", "l3v-tooltip");
  tip.style.display = "none";
  root.appendChild(tip);
  return {
    element: tip,
    show(html, event) {
      tip.innerHTML = html;
      tip.style.display = "block";
      const box = root.getBoundingClientRect();
      let x = event.clientX - box.left + 14, y = event.clientY - box.top + 14;
      const width = tip.offsetWidth, height = tip.offsetHeight;
      if (x + width > box.width) x = Math.max(0, event.clientX - box.left - width - 14);
      if (y + height > box.height) y = Math.max(0, event.clientY - box.top - height - 14);
      tip.style.left = x + "px";
      tip.style.top = y + "px";
    },
    hide() {
      tip.style.display = "none";
    },
  };
}

/** A colour bar: the map from `low` to `high`, with `label` saying what the colour means. */
function makeLegend(map) {
  const legend = node("div", "l3v-legend");
  const low = node("span", "l3v-legend-low");
  const bar = node("span", "l3v-legend-bar");
  const high = node("span", "l3v-legend-high");
  const label = node("span", "l3v-legend-label");
  const table = COLORMAPS[map];
  const stops = [0, 0.25, 0.5, 0.75, 1].map((t) => table[Math.round(t * (table.length - 1))]);
  bar.style.background = `linear-gradient(to right, ${stops.join(", ")})`;
  legend.append(low, bar, high, label);
  return {
    element: legend,
    set(lowValue, highValue, text) {
      low.textContent = fmt(lowValue);
      high.textContent = fmt(highValue);
      label.textContent = text;
    },
  };
}

/** A canvas drawn at the screen's pixel ratio: `css` pixels on screen, crisp on any display. */
function makeCanvas(className, cssWidth, cssHeight) {
  const canvas = node("canvas", className);
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(cssWidth * ratio);
  canvas.height = Math.round(cssHeight * ratio);
  canvas.style.width = cssWidth + "px";
  canvas.style.height = cssHeight + "px";
  return canvas;
}

/** A button that sends {kind, ...} to the kernel; disabled in a saved page, which has none. */
function kernelButton(model, text, className, message) {
  const button = node("button", "l3v-button " + className, text);
  if (model.get("standalone")) {
    button.disabled = true;
    button.title = "needs the Python kernel (this is a saved page)";
  } else {
    button.addEventListener("click", () => model.send(typeof message === "function" ? message() : message));
  }
  return button;
}

/** The status line, kept in sync with the `status` traitlet. */
function makeStatus(model) {
  const status = node("div", "l3v-status");
  const update = () => {
    const text = model.get("status") || "";
    status.textContent = model.get("standalone") ? text + " · saved page: hover works, the kernel is gone" : text;
    status.classList.toggle("l3v-error", text.startsWith("error"));
  };
  model.on("change:status", update);
  update();
  return status;
}
