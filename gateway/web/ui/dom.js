// A small element builder and the figures' formats.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : value);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export function $(selector) {
  return document.querySelector(selector);
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
}

export function seconds(s) {
  if (s === null || s === undefined) return "—";
  s = Math.max(0, Math.round(s));
  const m = Math.floor(s / 60);
  return m ? `${m} min ${String(s % 60).padStart(2, "0")} s` : `${s} s`;
}

export function ms(x) {
  return x === null || x === undefined ? "—" : x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${Math.round(x)} ms`;
}

// An inline SVG sparkline of the last values (gaps where a value is null), labelled for screen readers.
export function sparkline(values, label, format) {
  const width = 60;
  const height = 22;
  const known = values.filter((v) => v !== null);
  const max = Math.max(...known, 1e-9);
  const step = width / Math.max(values.length - 1, 1);
  let path = "";
  let pen = false;
  values.forEach((v, i) => {
    if (v === null) {
      pen = false;
      return;
    }
    const x = (i * step).toFixed(1);
    const y = (height - 1 - (v / max) * (height - 2)).toFixed(1);
    path += pen ? `L${x},${y} ` : `M${x},${y} h0.5 `; // h0.5: a lone point still shows, as a dot
    pen = true;
  });
  const last = known.length ? known[known.length - 1] : null;
  const svgNs = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNs, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("aria-hidden", "true");
  const line = document.createElementNS(svgNs, "path");
  line.setAttribute("d", path || `M0,${height - 1} L${width},${height - 1}`);
  svg.append(line);
  const text = h("span", { class: "spark-value" }, last === null ? "—" : format(last));
  return h("span", { class: "spark", title: label }, svg, text);
}
