/*
 * Line charts from a JSON spec, drawn with the vendored Chart.js (static/vendor/chartjs/).
 *
 * No inline script: a page puts the spec in a data block and points a canvas at it,
 *
 *   <canvas data-chart-spec="loss-chart" role="img" aria-label="Loss per step">...fallback text...</canvas>
 *   {{ spec|json_script:"loss-chart" }}
 *
 * and every such canvas is drawn when the page loads and whenever htmx swaps in new content. The spec:
 *
 *   {
 *     "title": "Loss",                                   // optional
 *     "x": {"label": "step", "values": [1, 2, 3]},       // numbers on a linear axis, or
 *     "x": {"label": "version", "categories": ["base", "round-1"]},  // names, one per point
 *     "y": {"label": "loss", "min": 0, "max": 1},        // min and max optional
 *     "series": [
 *       {"label": "loss", "values": [0.69, 0.61, 0.55],  // one per x; null leaves a gap
 *        "intervals": [[0.6, 0.7], null, [0.5, 0.6]],    // optional: drawn as bars from low to high
 *        "line": true,                                   // optional (default true): false draws points only
 *        "bar": false}                                   // optional: true draws bars (counts), not a line
 *     ],
 *     "stacked": false                                   // optional: bars of several series stacked per x
 *   }
 */
(function () {
  "use strict";

  const PALETTE = ["#2f5bd3", "#b42318", "#18794e", "#9a6700", "#6e3fb5"];
  const SELECTOR = "canvas[data-chart-spec]";

  function xValue(spec, index) {
    return spec.x.categories ? spec.x.categories[index] : spec.x.values[index];
  }

  function datasets(spec) {
    const sets = [];
    spec.series.forEach(function (series, number) {
      const colour = PALETTE[number % PALETTE.length];
      sets.push({
        type: series.bar ? "bar" : "line",
        label: series.label,
        data: series.values.map(function (value, index) {
          return { x: xValue(spec, index), y: value };
        }),
        borderColor: colour,
        backgroundColor: colour,
        showLine: series.line !== false,
        spanGaps: false,
        pointRadius: series.values.length > 60 ? 0 : 3,
        order: 0,
      });
      if (series.intervals) {
        sets.push({
          type: "bar",
          label: series.label + " (interval)",
          data: series.intervals.map(function (interval, index) {
            return { x: xValue(spec, index), y: interval };
          }),
          backgroundColor: colour + "55",
          borderColor: colour,
          borderWidth: 1,
          barThickness: 6,
          grouped: false,
          order: 1,
        });
      }
    });
    return sets;
  }

  function axis(title, extra) {
    return Object.assign({ title: { display: Boolean(title), text: title || "" } }, extra);
  }

  /* Draw `spec` on `canvas` (replacing a chart already there) and return the Chart. */
  function lineChart(canvas, spec) {
    const existing = window.Chart.getChart(canvas);
    if (existing) {
      existing.destroy();
    }
    const yLimits = { beginAtZero: false }; // interval bars would otherwise pull the axis down to zero
    if (spec.y && spec.y.min !== undefined) yLimits.min = spec.y.min;
    if (spec.y && spec.y.max !== undefined) yLimits.max = spec.y.max;
    const stacked = spec.stacked ? { stacked: true } : {};
    window.Chart.defaults.font.size = 13; // Chart.js's 12 px default reads as about 10 px beside the page's text
    return new window.Chart(canvas, {
      data: { datasets: datasets(spec) },
      options: {
        animation: false,
        parsing: { xAxisKey: "x", yAxisKey: "y" },
        scales: {
          x: axis(spec.x.label, Object.assign(spec.x.categories ? { type: "category", labels: spec.x.categories } : { type: "linear" }, stacked)),
          y: axis(spec.y && spec.y.label, Object.assign(yLimits, stacked)),
        },
        plugins: {
          title: { display: Boolean(spec.title), text: spec.title || "" },
          legend: { display: spec.series.length > 1 || Boolean(spec.series[0] && spec.series[0].intervals) },
        },
      },
    });
  }

  /* Draw every chart canvas inside `root` (or `root` itself) that is not drawn yet. */
  function drawAll(root) {
    if (!window.Chart || !root || !root.querySelectorAll) {
      return;
    }
    const canvases = Array.from(root.querySelectorAll(SELECTOR));
    if (root.matches && root.matches(SELECTOR)) {
      canvases.push(root);
    }
    canvases.forEach(function (canvas) {
      const source = document.getElementById(canvas.dataset.chartSpec);
      if (!source || window.Chart.getChart(canvas)) {
        return;
      }
      try {
        lineChart(canvas, JSON.parse(source.textContent));
      } catch (error) {
        console.error("chart " + canvas.dataset.chartSpec + " could not be drawn", error);
      }
    });
  }

  window.PairloopCharts = { lineChart: lineChart, drawAll: drawAll };
  document.addEventListener("DOMContentLoaded", function () {
    drawAll(document);
  });
  document.addEventListener("htmx:load", function (event) {
    drawAll(event.detail.elt);
  });
})();
