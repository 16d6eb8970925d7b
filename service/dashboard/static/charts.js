// The dashboard's plots, drawn with the vendored Chart.js (window.Chart, see NOTICE).
//
// Each function takes a canvas and the API's data and (re)draws one chart; nothing here
// fetches. Colours: one per metric, green continue, red stop, blue forecast.

const Chart = window.Chart;
Chart.defaults.animation = false; // a dashboard that redraws on refresh should not wobble
Chart.defaults.maintainAspectRatio = false;
Chart.defaults.font.family = 'system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif';
Chart.defaults.color = "#39424f";
Chart.defaults.plugins.legend.labels.boxWidth = 14;
Chart.defaults.plugins.legend.labels.filter = (item) => !item.text.startsWith("_");

export const COLORS = {
  ink: "#1d2430",
  forecast: "#2f6fb3",
  band: "rgba(47, 111, 179, 0.16)",
  threshold: "#c77d0a",
  continue: "#2e8b57",
  stop: "#d1495b",
  running: "#2f6fb3",
  completed: "#2e8b57",
  stopped: "#d1495b",
  failed: "#8a8f98",
  saved: "#e9a23b",
  pending: "#c9d1dc",
  mqe: "#6a4c93",
  topographic_error: "#1982c4",
  dead_neuron_ratio: "#8ac926",
};

// The run charts' legends show each dataset's own mark: a line, a band, a dot, a cross, a star.
const RUN_LEGEND = {
  position: "bottom",
  labels: { usePointStyle: true, pointStyleWidth: 24, boxHeight: 9 },
};
const LINE = { pointStyle: "line", pointRadius: 0, pointHoverRadius: 4 };

const drawn = new Map();

function draw(canvas, config) {
  drawn.get(canvas)?.destroy();
  const chart = new Chart(canvas, config);
  drawn.set(canvas, chart);
  return chart;
}

export function clear(canvas) {
  drawn.get(canvas)?.destroy();
  drawn.delete(canvas);
}

export function fmt(value, digits = 3) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs >= 1e5 || abs < 1e-3)) return value.toExponential(2);
  return Number(value.toPrecision(digits)).toString();
}

export function pct(share, digits = 1) {
  return share === null || share === undefined ? "–" : `${(share * 100).toFixed(digits)}%`;
}

export function duration(seconds) {
  if (!Number.isFinite(seconds)) return "–";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const minutes = seconds / 60;
  if (minutes < 60) return `${minutes.toFixed(1)} min`;
  const hours = minutes / 60;
  if (hours < 48) return `${hours.toFixed(1)} h`;
  return `${(hours / 24).toFixed(1)} d`;
}

/** A y-scale that stays readable when a diverged map reports values in the billions. */
function valueScale(values, title) {
  const finite = values.filter((v) => Number.isFinite(v) && v > 0);
  const spread = finite.length ? Math.max(...finite) / Math.min(...finite) : 1;
  return spread > 1000
    ? { type: "logarithmic", title: { display: true, text: `${title} (log)` } }
    : { type: "linear", beginAtZero: false, title: { display: true, text: title } };
}

function epochAxis(maxEpochs) {
  return {
    type: "linear",
    min: 0,
    max: maxEpochs,
    title: { display: true, text: "epoch" },
    ticks: { precision: 0 },
  };
}

/** Marks drawn over a run's charts: the stop, the epochs it spared, and the latest forecast of
 * the final as a dot with its interval at max_epochs. */
function runMarks({ stopEpoch, maxEpochs, forecast }) {
  return {
    id: "runMarks",
    beforeDatasetsDraw(chart) {
      if (stopEpoch === null) return;
      const { ctx, chartArea: area, scales } = chart;
      const left = scales.x.getPixelForValue(stopEpoch);
      const right = scales.x.getPixelForValue(maxEpochs);
      ctx.save();
      ctx.fillStyle = "rgba(209, 73, 91, 0.07)";
      ctx.fillRect(left, area.top, right - left, area.bottom - area.top);
      ctx.fillStyle = COLORS.stop;
      ctx.font = "12px " + Chart.defaults.font.family;
      ctx.textAlign = "center";
      if (right - left > 70) ctx.fillText("not trained", (left + right) / 2, area.top + 14);
      ctx.restore();
    },
    afterDatasetsDraw(chart) {
      const { ctx, chartArea: area, scales } = chart;
      ctx.save();
      if (stopEpoch !== null) {
        const x = scales.x.getPixelForValue(stopEpoch);
        ctx.strokeStyle = COLORS.stop;
        ctx.lineWidth = 2;
        ctx.setLineDash([6, 4]);
        ctx.beginPath();
        ctx.moveTo(x, area.top);
        ctx.lineTo(x, area.bottom);
        ctx.stroke();
        ctx.setLineDash([]);
        ctx.fillStyle = COLORS.stop;
        ctx.font = "bold 12px " + Chart.defaults.font.family;
        const roomLeft = x - area.left > 100;
        ctx.textAlign = roomLeft ? "right" : "left";
        ctx.fillText(`stopped at ${stopEpoch}`, roomLeft ? x - 4 : x + 4, area.bottom - 6);
      }
      if (!chart.data.datasets[0].data.some((p) => p.y !== null)) {
        ctx.fillStyle = "#5d6778";
        ctx.font = "13px " + Chart.defaults.font.family;
        ctx.textAlign = "center";
        ctx.fillText(
          "no finite values: the map diverged",
          (area.left + area.right) / 2,
          (area.top + area.bottom) / 2,
        );
      }
      if (forecast && Number.isFinite(forecast.low) && Number.isFinite(forecast.high)) {
        // The latest forecast of the final, as an error bar at max_epochs.
        const x = scales.x.getPixelForValue(maxEpochs) - 6;
        const y0 = scales.y.getPixelForValue(forecast.low);
        const y1 = scales.y.getPixelForValue(forecast.high);
        ctx.strokeStyle = COLORS.forecast;
        ctx.lineWidth = 2;
        ctx.beginPath();
        ctx.moveTo(x, y0);
        ctx.lineTo(x, y1);
        ctx.moveTo(x - 5, y0);
        ctx.lineTo(x + 5, y0);
        ctx.moveTo(x - 5, y1);
        ctx.lineTo(x + 5, y1);
        ctx.stroke();
        if (Number.isFinite(forecast.mid)) {
          ctx.fillStyle = COLORS.forecast;
          ctx.beginPath();
          ctx.arc(x, scales.y.getPixelForValue(forecast.mid), 4, 0, 2 * Math.PI);
          ctx.fill();
        }
      }
      ctx.restore();
    },
  };
}

function points(checkpoints, value) {
  return checkpoints.map((c) => ({ x: c.epoch, y: finiteOrNull(value(c)) }));
}

function finiteOrNull(v) {
  return v === null || v === undefined || !Number.isFinite(v) ? null : v;
}

function stopEpochOf(run) {
  const stop = run.checkpoints.find((c) => c.decision.action === "stop");
  return run.status === "stopped" ? (stop ? stop.epoch : run.last_epoch) : null;
}

function lastForecast(run) {
  for (let i = run.checkpoints.length - 1; i >= 0; i--) {
    const d = run.checkpoints[i].decision;
    if (d.predicted_final) return d;
  }
  return null;
}

function decisionPoints(run, score, action) {
  return run.checkpoints
    .filter((c) => c.decision.action === action)
    .map((c) => ({ x: c.epoch, y: finiteOrNull(score(c)), decision: c.decision }));
}

function decisionTooltip(ctx) {
  const d = ctx.raw.decision;
  return d ? `${d.action} (${d.policy}) at epoch ${d.epoch}` : undefined;
}

/** The run's score over epochs, the forecasts of its final score with their 80% interval,
 * the threshold it was compared with, and every decision (stops as large red crosses). */
export function scoreChart(canvas, run, weights) {
  const score = (c) =>
    c.mqe === null || c.topographic_error === null || c.dead_neuron_ratio === null
      ? null
      : weights.mqe * c.mqe +
        weights.topographic_error * c.topographic_error +
        weights.dead_neuron_ratio * c.dead_neuron_ratio;
  const cps = run.checkpoints;
  const low = points(cps, (c) => c.decision.score_interval?.[0]);
  const high = points(cps, (c) => c.decision.score_interval?.[1]);
  const forecast = points(cps, (c) => c.decision.predicted_score);
  const threshold = points(cps, (c) => c.decision.threshold);
  const observed = points(cps, score);
  const latest = lastForecast(run);
  const all = [...observed, ...forecast, ...low, ...high, ...threshold].map((p) => p.y);
  return draw(canvas, {
    type: "line",
    data: {
      datasets: [
        {
          label: "observed score",
          data: observed,
          borderColor: COLORS.ink,
          backgroundColor: COLORS.ink,
          borderWidth: 2,
          ...LINE,
        },
        {
          label: "_interval low",
          data: low,
          borderWidth: 0,
          pointRadius: 0,
          fill: false,
        },
        {
          label: "80% interval of the final",
          data: high,
          borderWidth: 0,
          pointRadius: 0,
          pointStyle: "rect",
          backgroundColor: COLORS.band,
          fill: "-1",
        },
        {
          label: "forecast of the final score",
          data: forecast,
          borderColor: COLORS.forecast,
          backgroundColor: COLORS.forecast,
          borderDash: [5, 4],
          borderWidth: 2,
          ...LINE,
        },
        {
          label: "threshold",
          data: threshold,
          borderColor: COLORS.threshold,
          backgroundColor: COLORS.threshold,
          borderWidth: 2.5,
          borderDash: [7, 4],
          stepped: "before",
          ...LINE,
        },
        {
          label: "continue",
          data: decisionPoints(run, score, "continue"),
          showLine: false,
          pointStyle: "circle",
          pointRadius: 3.5,
          borderColor: COLORS.continue,
          backgroundColor: COLORS.continue,
        },
        {
          label: "stop",
          data: decisionPoints(run, score, "stop"),
          showLine: false,
          clip: false,
          pointStyle: "crossRot",
          pointRadius: 10,
          pointHoverRadius: 12,
          borderWidth: 3,
          borderColor: COLORS.stop,
          backgroundColor: COLORS.stop,
        },
      ],
    },
    options: {
      interaction: { mode: "nearest", intersect: false },
      layout: { padding: { right: 12, top: 6 } },
      scales: { x: epochAxis(run.max_epochs), y: valueScale(all, "score") },
      plugins: {
        legend: RUN_LEGEND,
        tooltip: { callbacks: { footer: (items) => decisionTooltip(items[0]) } },
      },
    },
    plugins: [
      runMarks({
        stopEpoch: stopEpochOf(run),
        maxEpochs: run.max_epochs,
        forecast: latest?.score_interval
          ? {
              low: latest.score_interval[0],
              mid: latest.predicted_score,
              high: latest.score_interval[1],
            }
          : null,
      }),
    ],
  });
}

/** One metric over epochs, with the forecast of its final made at each checkpoint and the
 * latest forecast as a star at max_epochs. */
export function metricChart(canvas, run, metric, title) {
  const cps = run.checkpoints;
  const observed = points(cps, (c) => c[metric]);
  const forecast = points(cps, (c) => c.decision.predicted_final?.[metric]);
  const latest = lastForecast(run);
  const star = latest
    ? [{ x: run.max_epochs, y: finiteOrNull(latest.predicted_final[metric]) }]
    : [];
  const all = [...observed, ...forecast, ...star].map((p) => p.y);
  const color = COLORS[metric];
  return draw(canvas, {
    type: "line",
    data: {
      datasets: [
        {
          label: title,
          data: observed,
          borderColor: color,
          backgroundColor: color,
          borderWidth: 2,
          ...LINE,
        },
        {
          label: "forecast of the final",
          data: forecast,
          borderColor: COLORS.forecast,
          backgroundColor: COLORS.forecast,
          borderDash: [5, 4],
          borderWidth: 1.5,
          ...LINE,
        },
        {
          label: "latest forecast",
          data: star,
          showLine: false,
          clip: false,
          pointStyle: "star",
          pointRadius: 9,
          borderWidth: 2,
          borderColor: COLORS.forecast,
          backgroundColor: COLORS.forecast,
        },
        {
          label: "stop",
          data: decisionPoints(run, (c) => c[metric], "stop"),
          showLine: false,
          clip: false,
          pointStyle: "crossRot",
          pointRadius: 8,
          borderWidth: 3,
          borderColor: COLORS.stop,
          backgroundColor: COLORS.stop,
        },
      ],
    },
    options: {
      interaction: { mode: "nearest", intersect: false },
      layout: { padding: { right: 12, top: 6 } },
      scales: { x: epochAxis(run.max_epochs), y: valueScale(all, title) },
      plugins: { legend: RUN_LEGEND },
    },
    plugins: [runMarks({ stopEpoch: stopEpochOf(run), maxEpochs: run.max_epochs, forecast: null })],
  });
}

/** Per study, stacked: epochs trained, epochs saved by stops, epochs not (yet) trained. */
export function epochsChart(canvas, studies) {
  const pending = studies.map((s) => Math.max(s.epochs_planned - s.epochs_run - s.epochs_saved, 0));
  return draw(canvas, {
    type: "bar",
    data: {
      labels: studies.map((s) => s.study_id),
      datasets: [
        {
          label: "trained",
          data: studies.map((s) => s.epochs_run),
          backgroundColor: COLORS.running,
        },
        {
          label: "saved by stops",
          data: studies.map((s) => s.epochs_saved),
          backgroundColor: COLORS.saved,
        },
        { label: "running or failed, not trained", data: pending, backgroundColor: COLORS.pending },
      ],
    },
    options: {
      indexAxis: "y",
      scales: {
        x: { stacked: true, title: { display: true, text: "epochs" } },
        y: { stacked: true },
      },
      plugins: { legend: { position: "bottom" } },
    },
  });
}

/** Decisions by the policy that made them, continue and stop stacked. */
export function decisionsChart(canvas, counts) {
  const policies = [...new Set(counts.map((d) => d.policy))].sort();
  const of = (policy, action) =>
    counts
      .filter((d) => d.policy === policy && d.action === action)
      .reduce((sum, d) => sum + d.count, 0);
  return draw(canvas, {
    type: "bar",
    data: {
      labels: policies,
      datasets: [
        {
          label: "continue",
          data: policies.map((p) => of(p, "continue")),
          backgroundColor: COLORS.continue,
        },
        { label: "stop", data: policies.map((p) => of(p, "stop")), backgroundColor: COLORS.stop },
      ],
    },
    options: {
      scales: {
        x: { stacked: true, title: { display: true, text: "policy that decided" } },
        y: { stacked: true, title: { display: true, text: "decisions" }, ticks: { precision: 0 } },
      },
      plugins: { legend: { position: "bottom" } },
    },
  });
}

/** The backtest of one model version beside the baselines, every figure in percent. */
export function backtestChart(canvas, backtest) {
  const policies = Object.keys(backtest);
  const figure = (key) => policies.map((p) => 100 * (backtest[p][key] ?? NaN));
  const series = [
    ["epochs saved", "epochs_saved", "#e9a23b"],
    ["best 10% kept", "recall_best10", "#2e8b57"],
    ["best 25% kept", "recall_best25", "#8ac926"],
    ["decision accuracy", "accuracy", "#1982c4"],
  ];
  return draw(canvas, {
    type: "bar",
    data: {
      labels: policies,
      datasets: series.map(([label, key, color]) => ({
        label,
        data: figure(key),
        backgroundColor: color,
      })),
    },
    options: {
      scales: { y: { min: 0, max: 100, title: { display: true, text: "%" } } },
      plugins: {
        legend: { position: "bottom" },
        tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${c.parsed.y.toFixed(1)}%` } },
      },
    },
  });
}

/** Forecast error of the final score by progress, and how often the 80% interval held. */
export function errorsChart(canvas, prediction) {
  const byProgress = prediction.by_progress ?? {};
  const labels = Object.keys(byProgress);
  const mae = labels.map((k) => byProgress[k].score_mae ?? null);
  const coverage = labels.map((k) =>
    byProgress[k].coverage_80 === undefined ? null : 100 * byProgress[k].coverage_80,
  );
  return draw(canvas, {
    data: {
      labels: labels.map((k) => `at ${k}`),
      datasets: [
        {
          type: "bar",
          label: "score MAE",
          data: mae,
          backgroundColor: "rgba(106, 76, 147, 0.75)",
          yAxisID: "y",
        },
        {
          type: "line",
          label: "in 80% interval (%)",
          data: coverage,
          borderColor: COLORS.forecast,
          backgroundColor: COLORS.forecast,
          pointRadius: 4,
          yAxisID: "coverage",
        },
        {
          type: "line",
          label: "80% target",
          data: labels.map(() => 80),
          borderColor: "#8a8f98",
          borderDash: [4, 4],
          borderWidth: 1,
          pointRadius: 0,
          yAxisID: "coverage",
        },
      ],
    },
    options: {
      scales: {
        y: { beginAtZero: true, title: { display: true, text: "score MAE" } },
        coverage: {
          position: "right",
          min: 0,
          max: 100,
          grid: { drawOnChartArea: false },
          title: { display: true, text: "coverage %" },
        },
      },
      plugins: { legend: { position: "bottom" } },
    },
  });
}

/** The promotion gate's utility of every version (oldest first) beside the median rule's. */
export function gateChart(canvas, models, active) {
  const ordered = [...models].reverse();
  const gate = (m, key) => m.metrics?.gate?.[key] ?? null;
  return draw(canvas, {
    type: "bar",
    data: {
      labels: ordered.map((m) =>
        m.version === active ? `★ ${short(m.version)}` : short(m.version),
      ),
      datasets: [
        {
          label: "model",
          data: ordered.map((m) => gate(m, "oracle_utility")),
          backgroundColor: ordered.map((m) =>
            m.status === "rejected" ? COLORS.failed : COLORS.forecast,
          ),
        },
        {
          label: "median rule",
          data: ordered.map((m) => gate(m, "median_utility")),
          backgroundColor: "#e9a23b",
        },
      ],
    },
    options: {
      scales: { y: { title: { display: true, text: "utility (higher is better)" } } },
      plugins: {
        legend: { position: "bottom" },
        tooltip: { callbacks: { title: (items) => ordered[items[0].dataIndex].version } },
      },
    },
  });
}

export function short(version) {
  return version.length > 22 ? `${version.slice(0, 10)}…${version.slice(-10)}` : version;
}
