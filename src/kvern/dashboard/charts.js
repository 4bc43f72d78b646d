// A line chart drawn as SVG by hand: no library to keep up to date for a few polylines and their axes.
"use strict";

window.kvernCharts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const PAD = { left: 44, right: 8, top: 10, bottom: 22 };

  function el(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // A "nice" upper bound for the y axis: 1, 2 or 5 times a power of ten.
  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    return [1, 2, 5, 10].map((step) => step * power).find((bound) => bound >= value);
  }

  // series: [{name, color, values}] all of one length, oldest first; spanLabel: what the x axis covers.
  function line(svg, series, spanLabel) {
    const box = svg.viewBox.baseVal;
    const width = box.width - PAD.left - PAD.right;
    const height = box.height - PAD.top - PAD.bottom;
    const top = niceMax(Math.max(0, ...series.flatMap((s) => s.values)));
    svg.replaceChildren();
    for (const fraction of [0, 0.5, 1]) {
      const y = PAD.top + height * (1 - fraction);
      svg.append(el("line", { x1: PAD.left, x2: PAD.left + width, y1: y, y2: y, class: "grid" }));
      svg.append(el("text", { x: PAD.left - 6, y: y + 4, class: "axis", "text-anchor": "end" }, String(+(top * fraction).toPrecision(3))));
    }
    svg.append(el("text", { x: PAD.left, y: box.height - 4, class: "axis" }, spanLabel));
    svg.append(el("text", { x: PAD.left + width, y: box.height - 4, class: "axis", "text-anchor": "end" }, "now"));
    let total = 0;
    for (const s of series) {
      const step = s.values.length > 1 ? width / (s.values.length - 1) : 0;
      const points = s.values.map((v, i) => `${(PAD.left + i * step).toFixed(1)},${(PAD.top + height * (1 - v / top)).toFixed(1)}`);
      total += s.values.reduce((sum, v) => sum + v, 0);
      svg.append(el("polyline", { points: points.join(" "), stroke: s.color, class: "series", "data-series": s.name }));
    }
    svg.dataset.total = total.toFixed(2); // what the lines add up to: tests and curious readers see it move
  }

  function legend(container, series) {
    container.replaceChildren(
      ...series.map((s) => {
        const item = document.createElement("span");
        const swatch = document.createElement("i");
        swatch.style.background = s.color;
        item.append(swatch, document.createTextNode(` ${s.name} ${s.values[s.values.length - 1] ?? 0}/s`));
        return item;
      }),
    );
  }

  return { line, legend };
})();
