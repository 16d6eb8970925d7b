// The dashboard page: loads the API's documents and renders studies, runs, one run's curves
// and the model versions. Every value from the API reaches the page as text, never as HTML.

import {
  AuthError,
  adoptTokenFromAddress,
  forgetToken,
  getJSON,
  hasToken,
  mapLimited,
  setToken,
} from "./api.js";
import * as charts from "./charts.js";

const PAGE_SIZE = 20;
const REFRESH_MS = 30_000;
const STATUSES = ["running", "completed", "stopped", "failed"];
const DEFAULT_WEIGHTS = { mqe: 1, topographic_error: 1, dead_neuron_ratio: 0.5 };

const state = {
  studies: new Map(), // study_id -> StudyPublic (policy, description)
  summary: [],
  models: { models: [], active: null },
  study: "",
  status: "",
  cursors: [null], // cursors[i] loads page i; null is the newest page
  page: 0,
  nextCursor: null,
  run: null, // the run shown in detail
  model: null, // the version whose evaluation is shown
};

const $ = (id) => document.getElementById(id);

/** Build an element: el("td", {class: "x"}, "text", child). Strings become text nodes. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "style") Object.assign(node.style, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function pill(text, kind) {
  return el("span", { class: `pill ${kind ?? text}` }, text);
}

function weightsOf(studyId) {
  return state.studies.get(studyId)?.policy?.weights ?? DEFAULT_WEIGHTS;
}

function scoreOf(metrics, weights) {
  if (!metrics) return null;
  const { mqe, topographic_error: te, dead_neuron_ratio: dead } = metrics;
  if (![mqe, te, dead].every(Number.isFinite)) return null;
  return weights.mqe * mqe + weights.topographic_error * te + weights.dead_neuron_ratio * dead;
}

function showProblem(error) {
  const box = $("problem");
  box.textContent = error ? `Could not load: ${error.message}` : "";
  box.hidden = !error;
}

// --- the service line and the totals -------------------------------------------------------

async function renderService() {
  const box = $("service");
  try {
    const response = await fetch("/readyz", { cache: "no-store" });
    const ready = await response.json();
    box.replaceChildren(
      "database ",
      pill(
        ready.database === "ok" ? ready.backend : "unavailable",
        ready.database === "ok" ? "ok" : "warn",
      ),
      " · deciding with ",
      pill(
        ready.model_version
          ? `model ${charts.short(ready.model_version)}`
          : "median rule (no model)",
        ready.model_version ? "ok" : "warn",
      ),
    );
  } catch (error) {
    box.replaceChildren(pill("service unreachable", "warn"));
  }
}

function renderTotals(studies) {
  const sum = (f) => studies.reduce((acc, s) => acc + f(s), 0);
  const runs = (status) => sum((s) => s.runs[status]);
  const ended = sum((s) => s.epochs_planned_ended);
  const saved = sum((s) => s.epochs_saved);
  const tile = (label, value, sub) =>
    el(
      "div",
      { class: "tile" },
      el("div", { class: "label" }, label),
      el("div", { class: "value" }, value),
      el("div", { class: "sub" }, sub),
    );
  $("totals").replaceChildren(
    tile(
      "Runs",
      String(runs("total")),
      STATUSES.map((status) => `${runs(status)} ${status}`).join(" · "),
    ),
    tile(
      "Epochs saved by stops",
      saved.toLocaleString("en"),
      ended
        ? `${charts.pct(saved / ended)} of the epochs ended runs had planned`
        : "no run has ended yet",
    ),
    tile(
      "Training time saved (estimate)",
      charts.duration(sum((s) => s.wall_s_saved)),
      `${charts.duration(sum((s) => s.wall_s_run))} reported by workers`,
    ),
    tile(
      "Studies",
      String(studies.length),
      `${sum((s) => s.epochs_run).toLocaleString("en")} epochs trained`,
    ),
  );
}

// --- studies -------------------------------------------------------------------------------

function statusBar(runs) {
  const total = runs.total || 1;
  return [
    el(
      "div",
      {
        class: "statusbar",
        role: "img",
        "aria-label": STATUSES.map((s) => `${runs[s]} ${s}`).join(", "),
      },
      STATUSES.map((s) =>
        el("span", {
          class: `s-${s}`,
          style: { width: `${(100 * runs[s]) / total}%` },
          title: `${runs[s]} ${s}`,
        }),
      ),
    ),
    el(
      "div",
      { class: "legend" },
      STATUSES.map((s) => el("span", {}, el("i", { class: `s-${s}` }), `${runs[s]} ${s}`)),
    ),
  ];
}

function renderStudies() {
  const cards = state.summary.map((s) => {
    const study = state.studies.get(s.study_id);
    return el(
      "button",
      {
        type: "button",
        class: `card${state.study === s.study_id ? " selected" : ""}`,
        "data-study": s.study_id,
        onclick: () => selectStudy(state.study === s.study_id ? "" : s.study_id),
      },
      el("h3", {}, s.study_id),
      study?.description ? el("p", { class: "desc" }, study.description) : null,
      statusBar(s.runs),
      el(
        "dl",
        {},
        el("dt", {}, "epochs saved"),
        el("dd", {}, `${s.epochs_saved.toLocaleString("en")} (${charts.pct(s.saved_share)})`),
        el("dt", {}, "time saved"),
        el("dd", {}, s.timed_stopped_runs ? `≈ ${charts.duration(s.wall_s_saved)}` : "–"),
        el("dt", {}, "epochs trained"),
        el(
          "dd",
          {},
          `${s.epochs_run.toLocaleString("en")} of ${s.epochs_planned.toLocaleString("en")} planned`,
        ),
      ),
    );
  });
  $("studies").replaceChildren(
    ...(cards.length
      ? cards
      : [el("p", { class: "muted" }, "No studies yet: workers create them with their first run.")]),
  );
  charts.epochsChart($("chart-epochs"), state.summary);
  const shown = state.study
    ? state.summary.filter((s) => s.study_id === state.study)
    : state.summary;
  $("decisions-caption").textContent = state.study
    ? `Decisions by policy in ${state.study}`
    : "Decisions by policy, all studies";
  charts.decisionsChart(
    $("chart-decisions"),
    shown.flatMap((s) => s.decisions),
  );
  const select = $("filter-study");
  select.replaceChildren(
    el("option", { value: "" }, "all"),
    ...state.summary.map((s) => el("option", { value: s.study_id }, s.study_id)),
  );
  select.value = state.study;
}

function selectStudy(studyId) {
  state.study = studyId;
  resetPaging();
  renderStudies();
  loadRuns().catch(handle);
}

// --- runs ----------------------------------------------------------------------------------

function resetPaging() {
  state.cursors = [null];
  state.page = 0;
}

function progressCell(run) {
  const share = (run.last_epoch ?? 0) / run.max_epochs;
  return el(
    "div",
    { class: "progress" },
    el(
      "div",
      { class: "track" },
      el("div", {
        class: `done s-${run.status}`,
        style: { width: `${Math.min(100, 100 * share)}%` },
      }),
    ),
    el("span", { class: "txt" }, `${run.last_epoch ?? 0} / ${run.max_epochs}`),
  );
}

function decisionCell(decision) {
  if (!decision) return el("span", { class: "muted" }, "none yet");
  return el(
    "span",
    {},
    pill(decision.action),
    " ",
    el("span", { class: "small muted" }, `${decision.policy} @ ${decision.epoch}`),
  );
}

function predictedCell(decision) {
  if (!decision || decision.predicted_score === null || decision.predicted_score === undefined) {
    return el("span", { class: "muted" }, "–");
  }
  const interval = decision.score_interval
    ? ` [${charts.fmt(decision.score_interval[0])}, ${charts.fmt(decision.score_interval[1])}]`
    : "";
  const threshold = Number.isFinite(decision.threshold)
    ? el("span", { class: "small muted" }, ` vs ${charts.fmt(decision.threshold)}`)
    : null;
  return el(
    "span",
    {},
    charts.fmt(decision.predicted_score),
    el("span", { class: "small muted" }, interval),
    threshold,
  );
}

async function loadRuns() {
  const page = await getJSON("/v1/runs", {
    study_id: state.study,
    status: state.status,
    limit: PAGE_SIZE,
    cursor: state.cursors[state.page],
  });
  state.nextCursor = page.next_cursor;
  const details = await mapLimited(page.runs, 6, (run) =>
    getJSON(`/v1/runs/${encodeURIComponent(run.run_id)}`),
  );
  const rows = details.map((run) => {
    const last = run.checkpoints.at(-1)?.decision ?? null;
    const final = run.status === "running" ? null : scoreOf(run.final, weightsOf(run.study_id));
    return el(
      "tr",
      {
        "data-run": run.run_id,
        class: state.run?.run_id === run.run_id ? "selected" : null,
        tabindex: "0",
        onclick: () => showRun(run.run_id).catch(handle),
        onkeydown: (e) => {
          if (e.key === "Enter") showRun(run.run_id).catch(handle);
        },
      },
      el("td", { class: "id" }, run.run_id),
      el("td", {}, run.study_id),
      el("td", {}, pill(run.status, `s-${run.status}`)),
      el("td", {}, progressCell(run)),
      el("td", {}, decisionCell(last)),
      el("td", {}, predictedCell(last)),
      el("td", {}, final === null ? el("span", { class: "muted" }, "–") : charts.fmt(final)),
    );
  });
  $("runs-body").replaceChildren(
    ...(rows.length
      ? rows
      : [el("tr", {}, el("td", { class: "empty", colspan: "7" }, "No runs match."))]),
  );
  $("prev").disabled = state.page === 0;
  $("next").disabled = !state.nextCursor;
  $("page-label").textContent = `page ${state.page + 1}`;
}

async function showRun(runId) {
  const run = await getJSON(`/v1/runs/${encodeURIComponent(runId)}`);
  state.run = run;
  for (const row of document.querySelectorAll("#runs-body tr")) {
    row.classList.toggle("selected", row.dataset.run === runId);
  }
  const section = $("run-detail");
  section.hidden = false;
  $("h-run").textContent = `Run ${run.run_id}`;
  const config = run.config
    ? Object.entries(run.config)
        .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
        .join(" ")
    : "–";
  $("run-facts").replaceChildren(
    el("span", {}, pill(run.status, `s-${run.status}`)),
    el("span", {}, el("b", {}, "study "), run.study_id),
    el("span", {}, el("b", {}, "epochs "), `${run.last_epoch ?? 0} of ${run.max_epochs}`),
    el("span", {}, el("b", {}, "checkpoints "), String(run.n_checkpoints)),
    run.dataset ? el("span", {}, el("b", {}, "dataset "), run.dataset) : null,
    el(
      "span",
      { class: "small muted", title: config },
      config.length > 160 ? `${config.slice(0, 160)}…` : config,
    ),
  );
  const last = run.checkpoints.at(-1)?.decision;
  const reason = $("run-reason");
  const model = last?.model_version ? `, model ${charts.short(last.model_version)}` : "";
  reason.textContent = last
    ? `Last decision at epoch ${last.epoch}: ${last.action} (${last.policy}${model}) — ${last.reason}`
    : "No checkpoint yet.";
  reason.className = `reason ${last?.action ?? ""}`;
  charts.scoreChart($("chart-score"), run, weightsOf(run.study_id));
  charts.metricChart($("chart-mqe"), run, "mqe", "MQE");
  charts.metricChart($("chart-te"), run, "topographic_error", "topographic error");
  charts.metricChart($("chart-dead"), run, "dead_neuron_ratio", "dead neuron ratio");
  if (window.location.hash !== `#run=${runId}`)
    window.history.replaceState(null, "", `#run=${encodeURIComponent(runId)}`);
  section.scrollIntoView({ behavior: "smooth", block: "start" });
}

// --- models --------------------------------------------------------------------------------

function renderModels() {
  const { models, active } = state.models;
  if (!models.length) {
    $("models").replaceChildren(
      el(
        "p",
        { class: "muted" },
        "No model versions yet: decisions use the fallback policies (warm-up, median rule).",
      ),
    );
    $("model-charts").hidden = true;
    return;
  }
  if (!state.model || !models.some((m) => m.version === state.model)) {
    state.model = active ?? models[0].version;
  }
  $("models").replaceChildren(
    ...models.map((m) => {
      const gate = m.metrics?.gate;
      const oracle = m.metrics?.backtest?.oracle;
      return el(
        "button",
        {
          type: "button",
          class: `card${m.version === state.model ? " selected" : ""}`,
          "data-version": m.version,
          onclick: () => {
            state.model = m.version;
            renderModels();
          },
        },
        el("h3", { title: m.version }, charts.short(m.version)),
        el(
          "div",
          {},
          m.active ? pill("active") : null,
          " ",
          pill(m.status),
          " ",
          el("span", { class: "small muted" }, m.architecture),
        ),
        el(
          "dl",
          {},
          el("dt", {}, "created"),
          el("dd", {}, new Date(m.created_at).toLocaleString("en-GB")),
          el("dt", {}, "epochs saved"),
          el("dd", {}, oracle ? charts.pct(oracle.epochs_saved) : "–"),
          el("dt", {}, "best 10% kept"),
          el("dd", {}, oracle ? charts.pct(oracle.recall_best10) : "–"),
          el("dt", {}, "gate"),
          el(
            "dd",
            {},
            gate
              ? `${charts.fmt(gate.oracle_utility)} vs median ${charts.fmt(gate.median_utility)}`
              : "–",
          ),
          m.reason ? el("dt", {}, "note") : null,
          m.reason ? el("dd", {}, m.reason) : null,
        ),
      );
    }),
  );
  const chosen = models.find((m) => m.version === state.model);
  $("model-charts").hidden = false;
  $("backtest-caption").textContent =
    `Decision backtest of ${charts.short(chosen.version)} on held-out runs`;
  charts.backtestChart($("chart-backtest"), chosen.metrics?.backtest ?? {});
  charts.errorsChart($("chart-errors"), chosen.metrics?.prediction ?? {});
  charts.gateChart($("chart-gate"), models, active);
}

// --- loading -------------------------------------------------------------------------------

function handle(error) {
  if (error instanceof AuthError) {
    $("content").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = hasToken() ? `The token was refused: ${error.message}` : "";
    $("sign-out").hidden = !hasToken();
    return;
  }
  showProblem(error);
}

async function loadAll() {
  renderService();
  const [summary, studies, models] = await Promise.all([
    getJSON("/v1/dashboard/summary"),
    getJSON("/v1/studies"),
    getJSON("/v1/models"),
  ]);
  $("login").hidden = true;
  $("content").hidden = false;
  $("sign-out").hidden = !hasToken();
  showProblem(null);
  state.summary = summary.studies;
  state.studies = new Map(studies.studies.map((s) => [s.study_id, s]));
  state.models = models;
  renderTotals(state.summary);
  renderStudies();
  renderModels();
  await loadRuns();
  $("updated").textContent =
    `updated ${new Date(summary.generated_at).toLocaleTimeString("en-GB")}`;
}

async function refresh() {
  await loadAll();
  if (state.run && !$("run-detail").hidden) await showRunQuietly(state.run.run_id);
}

async function showRunQuietly(runId) {
  const y = window.scrollY;
  await showRun(runId);
  window.scrollTo({ top: y });
}

function wire() {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("token").value);
    $("token").value = "";
    loadAll().catch(handle);
  });
  $("sign-out").addEventListener("click", () => {
    forgetToken();
    window.location.reload();
  });
  $("refresh").addEventListener("click", () => refresh().catch(handle));
  $("filter-study").addEventListener("change", (e) => selectStudy(e.target.value));
  $("filter-status").addEventListener("change", (e) => {
    state.status = e.target.value;
    resetPaging();
    loadRuns().catch(handle);
  });
  $("next").addEventListener("click", () => {
    if (!state.nextCursor) return;
    state.cursors[state.page + 1] = state.nextCursor;
    state.page += 1;
    loadRuns().catch(handle);
  });
  $("prev").addEventListener("click", () => {
    if (state.page === 0) return;
    state.page -= 1;
    loadRuns().catch(handle);
  });
  window.setInterval(() => {
    if (!document.hidden && !$("content").hidden) refresh().catch(handle);
  }, REFRESH_MS);
}

async function start() {
  adoptTokenFromAddress();
  wire();
  try {
    await loadAll();
    const linked = window.location.hash.match(/^#run=(.+)$/);
    if (linked) await showRun(decodeURIComponent(linked[1]));
  } catch (error) {
    handle(error);
  }
}

start();
