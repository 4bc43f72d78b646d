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

  // The runs of non-null values of a series, as lists of [index, value]: a gap (null) breaks the line.
  function segments(values) {
    const runs = [];
    let run = [];
    values.forEach((v, i) => {
      if (v === null || v === undefined) {
        if (run.length) runs.push(run);
        run = [];
      } else run.push([i, v]);
    });
    if (run.length) runs.push(run);
    return runs;
  }

  // series: [{name, color, values, dashed?}] all of one length, oldest first (null: no value there);
  // spanLabel: what the x axis covers; unit: appended to the y axis' labels.
  function line(svg, series, spanLabel, unit = "") {
    // One user unit per CSS pixel at the chart's drawn width: labels keep their size on a phone and a laptop.
    const height0 = Number(svg.dataset.height || svg.viewBox.baseVal.height);
    svg.dataset.height = String(height0);
    const drawn = Math.round(svg.getBoundingClientRect().width) || svg.viewBox.baseVal.width;
    svg.setAttribute("viewBox", `0 0 ${Math.max(240, drawn)} ${height0}`);
    const box = svg.viewBox.baseVal;
    const width = box.width - PAD.left - PAD.right;
    const height = box.height - PAD.top - PAD.bottom;
    const top = niceMax(Math.max(0, ...series.flatMap((s) => s.values.filter((v) => v !== null))));
    svg.replaceChildren();
    for (const fraction of [0, 0.5, 1]) {
      const y = PAD.top + height * (1 - fraction);
      svg.append(el("line", { x1: PAD.left, x2: PAD.left + width, y1: y, y2: y, class: "grid" }));
      svg.append(el("text", { x: PAD.left - 6, y: y + 4, class: "axis", "text-anchor": "end" }, `${+(top * fraction).toPrecision(3)}${unit}`));
    }
    svg.append(el("text", { x: PAD.left, y: box.height - 4, class: "axis" }, spanLabel));
    svg.append(el("text", { x: PAD.left + width, y: box.height - 4, class: "axis", "text-anchor": "end" }, "now"));
    let total = 0;
    for (const s of series) {
      const step = s.values.length > 1 ? width / (s.values.length - 1) : 0;
      const x = (i) => (PAD.left + i * step).toFixed(1);
      const y = (v) => (PAD.top + height * (1 - v / top)).toFixed(1);
      for (const run of segments(s.values)) {
        total += run.reduce((sum, [, v]) => sum + v, 0);
        // A lone point is drawn as a short flat line, so that it shows.
        const points = run.length > 1 ? run.map(([i, v]) => `${x(i)},${y(v)}`) : [`${x(run[0][0]) - 2},${y(run[0][1])}`, `${x(run[0][0])},${y(run[0][1])}`];
        svg.append(el("polyline", { points: points.join(" "), stroke: s.color, class: `series${s.dashed ? " dashed" : ""}`, "data-series": s.name }));
      }
    }
    svg.dataset.total = total.toFixed(2); // what the lines add up to: tests and curious readers see it move
  }

  function legend(container, series) {
    container.replaceChildren(
      ...series.map((s) => {
        const item = document.createElement("span");
        const swatch = document.createElement("i");
        swatch.style.background = s.color;
        item.append(swatch, document.createTextNode(` ${s.name}${s.note ?? ""}`));
        return item;
      }),
    );
  }

  return { line, legend };
})();
